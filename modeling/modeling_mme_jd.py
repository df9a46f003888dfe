"""MME-JD: a frozen base vision-language model, three LoRA experts and a router.

Hub remote code: imports only torch, transformers, peft, the standard library and its sibling
files.

    input (text, image) ──► general expert ──► class logits f_g(x) ─────────────┐
                              │ pooled final hidden state                         │
                              ▼                                                   ▼
                            router ─► strategy ∈ {none, image, text, both} ─► final logits
                                       image → image_debias(x)   text → text_debias(x)
                                       both  → mean(image_debias(x), text_debias(x))

Training-only parts, never saved (`is_training_only_parameter`): the bias-only expert, a fourth
adapter trained on cue-only inputs with the true labels (`add_bias_only_expert`), and the
learned-mixin gates (`add_mixin_gate`); the debias objectives that use them are
`bias_ensemble_loss` (METHOD §8).

The router is `MMEJDRouter`; which strategy a sample gets and how its final logits are combined
is `routing_mme_jd` (`route`, `combine`). The experts are LoRA adapters ("general",
"image_debias", "text_debias") of one `PeftModel` around the base; `with model.expert(name):`
runs one of them. Class logits come from the verbalizer: the language-model logits of each
label word's first token at the answer position (the last prompt token), computed from the
final hidden state and only the label rows of the output embedding, never the full vocabulary.

Modes (config.mode, or `mode=` per call):
    general  f_g(x)                                   (1 pass)
    mctd     f_g(x), weights trained on counterfactuals (1 pass)
    mid      f_g(x) - λ_t·f_g(x_t*) - λ_v·f_g(x_v*)    (3 rows per sample, one batched pass)
    mme_jd   routed: every sample runs general once; only samples the router sends away run
             their debias expert(s), batched per adapter (1 + share routed away)
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import json
import os
import re
import secrets
import shutil
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import AutoModelForImageTextToText, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.utils import ModelOutput, logging

from .configuration_mme_jd import (BIAS_ONLY_EXPERT, BIAS_ONLY_OBJECTIVES, EXPERT_NAMES, LABEL_KEEPING_OBJECTIVES,
                                   MME_JD_VERSION, MMEJDConfig, MMEJDLossSettings)
from .counterfactual_mme_jd import reversed_targets
from .layouts_mme_jd import ImageLayout
from .pipeline_mme_jd import custom_pipelines_entry  # also makes save_pretrained copy the pipeline file
from .routing_mme_jd import DEBIAS_EXPERTS, STRATEGY_EXPERTS, Strategy, combine, needs_expert, route

# Tensors aligned with the token sequence: padded when batches of different length are joined.
_SEQUENCE_KEYS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")

logger = logging.get_logger(__name__)


@dataclass
class MMEJDOutput(ModelOutput):
    """Every logit MME-JD computed, not only the final one.

    loss: the training loss when labels (or router_labels) are given.
    logits: final class logits [B, num_labels].
    general_logits / image_debias_logits / text_debias_logits: each expert's class logits;
        rows an expert did not run (routed inference) are NaN.
    router_logits: [B, 4] over ("none", "image", "text", "both").
    strategy: [B] index of the chosen strategy.
    text_counterfactual_logits / image_counterfactual_logits: f(x_t*), f(x_v*) when computed.
    pooled_hidden_state: the general expert's pooled final hidden state (the router's input).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    general_logits: torch.FloatTensor | None = None
    image_debias_logits: torch.FloatTensor | None = None
    text_debias_logits: torch.FloatTensor | None = None
    router_logits: torch.FloatTensor | None = None
    strategy: torch.LongTensor | None = None
    text_counterfactual_logits: torch.FloatTensor | None = None
    image_counterfactual_logits: torch.FloatTensor | None = None
    pooled_hidden_state: torch.FloatTensor | None = None


def answer_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last attended token of each row (works for left and right padding)."""
    length = attention_mask.shape[1]
    return length - 1 - attention_mask.flip(1).long().argmax(dim=1)


def concat_inputs(parts: list[dict], pad_token_id: int = 0) -> dict:
    """Join batches of model inputs row-wise into one batch (one forward pass for all).

    Sequence tensors are right-padded to the longest part; other tensors (pixel_values,
    image_grid_thw, ...) are concatenated along dim 0.
    """
    if len(parts) == 1:
        return dict(parts[0])
    length = max(part["input_ids"].shape[1] for part in parts)
    joined = {}
    for key in parts[0]:
        values = [part[key] for part in parts]
        if not torch.is_tensor(values[0]):
            joined[key] = values[0]
            continue
        if key in _SEQUENCE_KEYS:
            fill = pad_token_id if key == "input_ids" else 0
            values = [F.pad(v, (0, length - v.shape[1]), value=fill) for v in values]
        joined[key] = torch.cat(values, dim=0)
    return joined


def without_trailing_padding(inputs: dict) -> dict:
    """`inputs` less the trailing columns that no row attends to (a right-padded batch padded
    beyond its longest row, e.g. a counterfactual padded to its originals' width). Leading
    columns stay: dropping them would move every row's absolute positions."""
    mask = inputs["attention_mask"]
    attended = torch.nonzero(mask.any(0)).flatten()
    width = int(attended[-1]) + 1 if len(attended) else mask.shape[1]
    if width == mask.shape[1]:
        return inputs
    return {key: value[:, :width] if key in _SEQUENCE_KEYS and torch.is_tensor(value) else value
            for key, value in inputs.items()}


def select_rows(inputs: dict, rows: torch.Tensor, layout: ImageLayout) -> dict:
    """The sub-batch of `inputs` at the sample indices `rows`; pixel_values by the family's
    `layout` (`config.family.layout`: Qwen2-VL's pixel rows are not one per sample)."""
    batch = inputs["input_ids"].shape[0]
    rows = rows.to(inputs["input_ids"].device)
    selected = {}
    for key, value in inputs.items():
        if key == "pixel_values":
            selected[key] = layout.select_pixels(inputs, rows)
        elif torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == batch:
            selected[key] = value[rows.to(value.device)]
        else:
            selected[key] = value
    return selected


class _ImageFeatureCapture:
    """Within the block, `inner.get_image_features` also appends its output to `store`; the
    class's method is back afterwards. `inner=None` captures nothing."""

    def __init__(self, inner: nn.Module | None, store: list):
        self.inner, self.store = inner, store

    def __enter__(self) -> list:
        if self.inner is not None:
            original = self.inner.get_image_features

            def capturing(*args, **kwargs):
                output = original(*args, **kwargs)
                self.store.append(output)
                return output

            self.inner.get_image_features = capturing
        return self.store

    def __exit__(self, *exc) -> None:
        if self.inner is not None:
            del self.inner.get_image_features  # the class's method again


def _keep_decoder_fields(module: nn.Module, args, outputs):
    """Forward hook: the language model's output reduced to the fields a decoder returns."""
    if not isinstance(outputs, ModelOutput):
        return outputs
    return BaseModelOutputWithPast(**{k: v for k, v in outputs.items() if k in _DECODER_OUTPUT_FIELDS})


_DECODER_OUTPUT_FIELDS = frozenset(f.name for f in dataclasses.fields(BaseModelOutputWithPast))


def _return_decoder_outputs(base: nn.Module, language_model_name: str) -> None:
    """Make the base's language model return exactly what a decoder returns.

    A VLM passes its language model's output on with `**outputs` into its own output class,
    which knows only a decoder's fields. An encoder used as the language model (BERT in
    MiniLM-LLaVA) adds `pooler_output`, which some transformers releases reject (5.24:
    `LlavaModelOutputWithPast.__init__() got an unexpected keyword argument 'pooler_output'`).
    A decoder's output passes through with the same fields; the hook is added at every
    construction, so it holds for loaded checkpoints too."""
    inner = getattr(base, "model", base)
    language_model = getattr(inner, language_model_name, None)
    if isinstance(language_model, nn.Module) and not getattr(language_model, "_mme_jd_decoder_outputs", False):
        language_model.register_forward_hook(_keep_decoder_fields)
        language_model._mme_jd_decoder_outputs = True


def is_expert_parameter(name: str, expert: str) -> bool:
    """Whether the tensor `name` (of `MMEJDModel.named_parameters()` or its state dict, or of
    `model.vlm`'s) belongs to `expert`: its LoRA matrices (`...lora_A.<expert>.weight`) or its
    linear head (`heads.<expert>.`). The one rule for an expert's parameters."""
    return (".lora_" in name and f".{expert}." in name) or name.startswith(f"heads.{expert}.")


def is_training_only_parameter(name: str) -> bool:
    """Whether the tensor `name` belongs to a part that exists for a training run only and is
    never saved: the bias-only expert (`BIAS_ONLY_EXPERT`) and the learned-mixin gates
    (`mixin_gates.<expert>.`). The one rule `save_pretrained` leaves tensors out by."""
    return is_expert_parameter(name, BIAS_ONLY_EXPERT) or name.startswith("mixin_gates.")


def bias_ensemble_loss(
    logits: torch.Tensor,
    bias_logits: torch.Tensor,
    labels: torch.Tensor,
    gate: torch.Tensor | None = None,
    entropy_weight: float = 0.0,
) -> torch.Tensor:
    """The loss of an expert trained in an ensemble with a fixed bias model (Clark et al., 2019;
    METHOD §8), so that it learns what the bias leaves unexplained:

        product of experts (gate None):
            CE(log_softmax(f_e(x)) + log_softmax(f_b(x*)), y)
        learned-mixin +H (gate g(x) >= 0, one per row):
            CE(log_softmax(f_e(x)) + g(x)·log_softmax(f_b(x*)), y)
            + entropy_weight · mean H(softmax(g(x)·log_softmax(f_b(x*))))

    logits: f_e(x) [B, C] of the expert trained; bias_logits: f_b(x*) [B, C] of the bias (logits
    or log-probabilities: only their log-softmax is used), never trained here (detached);
    labels: [B] class ids. The entropy term keeps the gate from shrinking the bias to nothing.
    """
    bias = F.log_softmax(bias_logits.detach().float(), dim=-1)
    if gate is not None:
        bias = gate.float().reshape(-1, 1) * bias
    loss = F.cross_entropy(F.log_softmax(logits.float(), dim=-1) + bias, labels)
    if gate is not None and entropy_weight > 0:
        scaled = F.log_softmax(bias, dim=-1)
        loss = loss + entropy_weight * -(scaled.exp() * scaled).sum(dim=-1).mean()
    return loss


class MixinGate(nn.Module):
    """The learned-mixin gate g(x) = softplus(w·h(x) + b) >= 0: how much of the bias a sample's
    ensemble takes, from the trained expert's pooled final hidden state h(x) [B, H] → [B].
    Training-only (`is_training_only_parameter`): it lives for its expert's stage."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.softplus(self.linear(pooled.to(self.linear.weight.dtype))).squeeze(-1)


class MMEJDRouter(nn.Module):
    """The router: a small MLP from the general expert's pooled final hidden state to one logit
    per routing strategy (`routing_mme_jd.Strategy`).

        pooled [B, H] ─► hidden: Linear(H, R) ─► GELU ─► out: Linear(R, 4) ─► router logits [B, 4]
                                                                 (none, image, text, both)

    H: the base's text hidden size; R: `config.router_hidden_size`. Checkpoints saved before the
    layers had names (a positional `nn.Sequential`: keys `router.0.*`, `router.2.*`) still load:
    `MMEJDModel.from_pretrained` renames their keys (`old_checkpoint_keys`), and so does
    `load_state_dict` (a pre-hook).
    """

    #: The layers' positions in the old `nn.Sequential(Linear, GELU, Linear)` → their names.
    POSITIONAL_NAMES: dict[str, str] = {"0": "hidden", "2": "out"}

    def __init__(self, hidden_size: int, router_hidden_size: int, num_strategies: int = len(Strategy)):
        super().__init__()
        self.hidden = nn.Linear(hidden_size, router_hidden_size)
        self.activation = nn.GELU()
        self.out = nn.Linear(router_hidden_size, num_strategies)
        self.register_load_state_dict_pre_hook(_rename_positional_keys)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.out(self.activation(self.hidden(pooled.to(self.hidden.weight.dtype))))

    def reset_parameters(self) -> None:
        """Fresh random weights (as `nn.Linear` draws them)."""
        self.hidden.reset_parameters()
        self.out.reset_parameters()

    def keep_with_general(self, margin: float = 4.0) -> None:
        """Make the router prefer `none` for every input (an untrained router changes nothing):
        the output bias is `margin` for `none` and 0 for the debias strategies."""
        with torch.no_grad():
            self.out.bias.zero_()
            self.out.bias[Strategy.NONE] = margin

    @classmethod
    def old_checkpoint_keys(cls, prefix: str = "router") -> dict[str, str]:
        """A `key_mapping` for transformers' `from_pretrained`: regexes over checkpoint keys,
        the old positional names under `prefix` → today's."""
        return {rf"^{re.escape(prefix)}\.{position}\.": f"{prefix}.{name}."
                for position, name in cls.POSITIONAL_NAMES.items()}


def _rename_positional_keys(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """`load_state_dict` pre-hook of `MMEJDRouter`: rename the old positional keys under
    `prefix` (`<prefix>0.weight`, ...) to today's (`<prefix>hidden.weight`, ...), in place."""
    for position, name in MMEJDRouter.POSITIONAL_NAMES.items():
        old = f"{prefix}{position}."
        for key in [k for k in state_dict if k.startswith(old)]:
            state_dict[f"{prefix}{name}.{key[len(old):]}"] = state_dict.pop(key)


def _soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy against soft targets, averaged over the valid rows (all rows by default)."""
    per_row = -(targets * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1)
    if valid is None:
        return per_row.mean()
    valid = valid.to(per_row.device, per_row.dtype)
    return (per_row * valid).sum() / valid.sum().clamp(min=1.0)


class MMEJDPreTrainedModel(PreTrainedModel):
    config_class = MMEJDConfig
    base_model_prefix = "mme_jd"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    # forward takes **base_inputs but computes a plain mean loss: the Trainer must scale it for
    # gradient accumulation itself
    accepts_loss_kwargs = False


class MMEJDModel(MMEJDPreTrainedModel):
    """Base VLM + three LoRA experts + router (see the module docstring for the computation)."""

    def __init__(self, config: MMEJDConfig, base_model: PreTrainedModel | None = None):
        base_attention = getattr(base_model.config, "_attn_implementation", None) if base_model is not None else None
        super().__init__(config)
        if config.label_token_ids is None and config.head == "verbalizer":
            raise ValueError(
                "MMEJDConfig.label_token_ids is missing: the verbalizer needs the first token id of each label "
                "word. Build the model with mme_jd.from_base(base, processor, label_words=...), which fills it in."
            )
        if base_model is None:
            base = AutoModelForImageTextToText.from_config(
                config.base_config, attn_implementation=config._attn_implementation
            )
        else:
            base = base_model
            # our PreTrainedModel.__init__ resets the shared sub-config's attention setting: restore it
            base.set_attn_implementation(base_attention or config._attn_implementation or "sdpa")
        _return_decoder_outputs(base, config.family.language_model)
        lora = LoraConfig(
            r=config.lora_rank,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=self._lora_target_regex(base),
            bias="none",
        )
        self.vlm: PeftModel = get_peft_model(base, lora, adapter_name=EXPERT_NAMES[0])
        for name in EXPERT_NAMES[1:]:
            self.vlm.add_adapter(name, lora)
        hidden = config.text_config.hidden_size
        self.router = MMEJDRouter(hidden, config.router_hidden_size)
        if config.head == "linear":
            self.heads = nn.ModuleDict({name: nn.Linear(hidden, config.num_labels) for name in EXPERT_NAMES})
        # learned-mixin gates, one per debias expert trained with that objective: training-only,
        # empty outside its stage (`add_mixin_gate`, `remove_training_only_parts`)
        self.mixin_gates = nn.ModuleDict()
        # what the training losses read (MMEJDLossSettings): set per stage by mme_jd.training, not saved
        self.loss_settings = MMEJDLossSettings()
        self.processor = None  # attached by mme_jd.from_base / the pipeline; saved beside the weights
        self.post_init()
        # transformers 5 re-initialises every Linear in post_init, LoRA's B included: reset it so a
        # fresh expert is an exact no-op (B = 0 ⇒ ΔW = B·A = 0).
        self.reset_experts()
        self.router.keep_with_general()  # an untrained router keeps every sample with the general expert
        self.freeze_all()

    # ------------------------------------------------------------------ structure
    def _lora_target_regex(self, base: nn.Module) -> str:
        """A regex over module names: the configured linear layers inside the `lora_scope` module."""
        names = [n for n, m in base.named_modules() if isinstance(m, nn.Linear)]
        wanted = set(self.config.lora_target_modules)
        scope = self.config.lora_scope or self.config.family.language_model
        matches = [n for n in names if f".{scope}." in f".{n}" and n.rsplit(".", 1)[-1] in wanted]
        if not matches:
            raise ValueError(
                f"MMEJDConfig.lora_target_modules={self.config.lora_target_modules} matches no linear layer inside "
                f"'{scope}' of {type(base).__name__}; set lora_target_modules to names such as "
                f"{sorted({n.rsplit('.', 1)[-1] for n in names if scope in n})[:8]}."
            )
        suffix = "|".join(sorted(wanted))
        return rf"(.*\.)?{scope}\..*\.({suffix})"

    @property
    def base_model_with_experts(self) -> PreTrainedModel:
        """The base VLM (`...ForConditionalGeneration`) with the LoRA layers injected."""
        return self.vlm.get_base_model()

    def reset_experts(self, names: tuple[str, ...] = EXPERT_NAMES) -> None:
        """Zero LoRA's B matrices of the named experts: each becomes an exact no-op."""
        with torch.no_grad():
            for module_name, param in self.vlm.named_parameters():
                if ".lora_B." in module_name and any(is_expert_parameter(module_name, n) for n in names):
                    param.zero_()

    def freeze_all(self) -> None:
        for param in self.parameters():
            param.requires_grad_(False)

    def expert_parameters(self, expert: str) -> Iterator[tuple[str, nn.Parameter]]:
        """(name, parameter) of one expert's trainable tensors: its LoRA matrices and, with
        `head="linear"`, its head (`is_expert_parameter`); names as in `named_parameters()`.
        The bias-only expert's too, while it is added."""
        self._check_expert(expert)
        return ((name, param) for name, param in self.named_parameters() if is_expert_parameter(name, expert))

    def set_trainable(self, stage: str) -> list[nn.Parameter]:
        """Freeze everything but what a training stage trains; returns those parameters.

        stage: an expert name ("general", "image_debias", "text_debias"; "bias_only" while it
        is added) or "router". An expert with a learned-mixin gate trains it too.
        """
        self.freeze_all()
        if stage == "router":
            params = list(self.router.parameters())
        elif stage in EXPERT_NAMES or (stage == BIAS_ONLY_EXPERT and self.has_bias_only_expert):
            params = [param for _, param in self.expert_parameters(stage)]
            if stage in self.mixin_gates:
                params += list(self.mixin_gates[stage].parameters())
        else:
            raise ValueError(f"unknown training stage {stage!r}; choose one of {[*EXPERT_NAMES, 'router']}.")
        for param in params:
            param.requires_grad_(True)
        return params

    def _check_expert(self, name: str) -> None:
        """Raise a `ValueError` unless `name` is an expert (or the bias-only expert, added)."""
        if name in EXPERT_NAMES or (name == BIAS_ONLY_EXPERT and self.has_bias_only_expert):
            return
        if name == BIAS_ONLY_EXPERT:
            raise ValueError("the bias-only expert is not added: call model.add_bias_only_expert() first "
                             "(mme_jd.training adds it for the bias_only stage of the objectives that need it).")
        raise ValueError(f"unknown expert {name!r}; choose one of {list(EXPERT_NAMES)}.")

    # ------------------------------------------------------------------ training-only parts
    @property
    def has_bias_only_expert(self) -> bool:
        """Whether the training-only bias-only expert is added (`add_bias_only_expert`)."""
        return BIAS_ONLY_EXPERT in self.vlm.peft_config

    def add_bias_only_expert(self) -> None:
        """Add the bias-only expert (METHOD §8): a fourth LoRA adapter `BIAS_ONLY_EXPERT` with the
        experts' LoRA settings (and its own head with `head="linear"`), an exact no-op until
        trained, frozen. It is training-only: `save_pretrained` never writes it
        (`is_training_only_parameter`) and `remove_training_only_parts` deletes it."""
        if self.has_bias_only_expert:
            return
        flags = [(param, param.requires_grad) for param in self.parameters()]
        # peft marks adapters trainable as it injects them: the model's flags are put back
        self.vlm.add_adapter(BIAS_ONLY_EXPERT, self.vlm.peft_config[EXPERT_NAMES[0]], autocast_adapter_dtype=False)
        if self.config.head == "linear":
            self.heads[BIAS_ONLY_EXPERT] = nn.Linear(self.config.text_config.hidden_size, self.config.num_labels)
        reference = dict(self.expert_parameters(EXPERT_NAMES[0]))
        for name, param in self.expert_parameters(BIAS_ONLY_EXPERT):  # the experts' dtype and device
            like = reference[name.replace(f".{BIAS_ONLY_EXPERT}.", f".{EXPERT_NAMES[0]}.")]
            param.data = param.data.to(device=like.device, dtype=like.dtype)
            param.requires_grad_(False)
        for param, flag in flags:
            param.requires_grad_(flag)
        self.reset_experts((BIAS_ONLY_EXPERT,))
        self._training_only_changed()

    def add_mixin_gate(self, expert: str) -> MixinGate:
        """Add (or return) the learned-mixin gate of debias expert `expert` (`MixinGate`, in the
        router's dtype and device, frozen until `set_trainable(expert)`). Training-only."""
        if expert not in EXPERT_NAMES[1:]:
            raise ValueError(f"a learned-mixin gate belongs to a debias expert, one of {list(EXPERT_NAMES[1:])}; "
                             f"got {expert!r}.")
        if expert not in self.mixin_gates:
            like = self.router.out.weight
            gate = MixinGate(self.config.text_config.hidden_size).to(device=like.device, dtype=like.dtype)
            gate.requires_grad_(False)
            self.mixin_gates[expert] = gate
            self._training_only_changed()
        return self.mixin_gates[expert]

    def remove_bias_only_expert(self) -> None:
        """Delete the bias-only expert (nothing when it is not added)."""
        if not self.has_bias_only_expert:
            return
        if self.active_expert == BIAS_ONLY_EXPERT:
            self._activate(EXPERT_NAMES[0])
        flags = [(param, param.requires_grad) for param in self._lora_parameters()]
        self.vlm.delete_adapter(BIAS_ONLY_EXPERT)
        for param, flag in flags:
            param.requires_grad_(flag)
        if self.config.head == "linear":
            del self.heads[BIAS_ONLY_EXPERT]
        self._training_only_changed()

    def remove_mixin_gates(self) -> None:
        """Delete the learned-mixin gates."""
        self.mixin_gates.clear()
        self._training_only_changed()

    def remove_training_only_parts(self) -> None:
        """Delete the bias-only expert and the learned-mixin gates (what a training run adds
        and never saves); the model is then exactly its three experts and the router."""
        self.remove_bias_only_expert()
        self.remove_mixin_gates()

    def training_only_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors of the training-only parts (`is_training_only_parameter`), keyed as in
        `state_dict()`: what a training run keeps beside its checkpoints to resume."""
        return {name: tensor for name, tensor in self.state_dict().items() if is_training_only_parameter(name)}

    def _training_only_changed(self) -> None:
        # the LoRA matrices changed; transformers' save_pretrained (the Trainer's checkpoints
        # too) leaves the keys in `_keys_to_ignore_on_save` out, and the Trainer's resume expects
        # exactly those to be missing
        self._lora_parameter_cache = None
        kept = {key for key in (self._keys_to_ignore_on_save or ()) if not is_training_only_parameter(key)}
        self._keys_to_ignore_on_save = kept | set(self.training_only_state_dict())

    @property
    def active_expert(self) -> str:
        """The expert (LoRA adapter) that a forward of the base runs now."""
        return self.vlm.active_adapters[0]

    @contextlib.contextmanager
    def expert(self, name: str) -> Iterator[MMEJDModel]:
        """`with model.expert(name):` runs the base with expert `name`'s LoRA adapter; the
        expert active before is back on exit. Which parameters are trainable does not change.

        Built on peft's public per-layer switch (`LoraLayer.set_adapter`, on the LoRA layers
        only: peft's model-wide `set_adapter` walks every module). peft's switch also marks
        the activated adapter trainable and the others frozen; the flags are put back."""
        self._check_expert(name)
        previous = self.active_expert
        self._activate(name)
        try:
            yield self
        finally:
            self._activate(previous)

    def _activate(self, name: str) -> None:
        if self.active_expert == name:
            return
        flags = [(param, param.requires_grad) for param in self._lora_parameters()]
        for layer in self._lora_layers():
            layer.set_adapter(name)
        for param, flag in flags:
            param.requires_grad_(flag)
        # what peft's `PeftModel.set_adapter` records besides the layers' switch
        self.vlm.active_adapter = self.vlm.base_model.active_adapter = name

    def _lora_layers(self) -> list[nn.Module]:
        """The LoRA layers of the experts (found once; they never change after construction)."""
        if getattr(self, "_lora_layer_cache", None) is None:
            from peft.tuners.tuners_utils import BaseTunerLayer

            self._lora_layer_cache = [m for m in self.vlm.modules() if isinstance(m, BaseTunerLayer)]
        return self._lora_layer_cache

    def _lora_parameters(self) -> list[nn.Parameter]:
        """Every adapter's LoRA matrices, the bias-only expert's included while it is added
        (found once per change)."""
        if getattr(self, "_lora_parameter_cache", None) is None:
            self._lora_parameter_cache = [param for name, param in self.vlm.named_parameters() if ".lora_" in name]
        return self._lora_parameter_cache

    # ------------------------------------------------------------------ computation
    def _encode(self, inputs: dict, output_attentions: bool = False, image_features=None):
        """Final hidden states of the active expert. Returns (hidden [B,L,H], attentions).

        image_features: the vision tower's and projector's output for these rows (captured by
        `_ImageFeatureCapture`); given, the pixels are not encoded again."""
        inner = self.base_model_with_experts.model
        if image_features is not None:
            inputs = {k: v for k, v in inputs.items() if k != "pixel_values"}
            inputs["mm_encoder_outputs"] = {"image": image_features}
        else:
            inputs = self._pixels_of_image_rows(inputs)
        dtype = self.config.autocast_dtype
        # None leaves any autocast of the caller's as it is (a disabled autocast would turn it off)
        with (torch.autocast(inputs["input_ids"].device.type, dtype=getattr(torch, dtype)) if dtype is not None
              else contextlib.nullcontext()):
            outputs = inner(**inputs, output_attentions=output_attentions, use_cache=False, return_dict=True)
        attentions = getattr(outputs, "attentions", None)
        if dtype is not None:  # mixed precision stops at the base: heads, router and losses read float32
            attentions = None if attentions is None else tuple(a.float() for a in attentions)
            return outputs.last_hidden_state.float(), attentions
        return outputs.last_hidden_state, attentions

    def _pixels_of_image_rows(self, inputs: dict) -> dict:
        """`inputs` whose pixel_values hold only the samples that have image tokens: a text-only
        sample (`MMEJDConfig.image_less_rows="text_only"`) keeps a stand-in entry so that batches
        split and join by sample, and the vision tower does not encode it. No pixel_values at all
        when no sample has an image."""
        if self.config.image_less_rows != "text_only" or inputs.get("pixel_values") is None:
            return inputs
        has_image = (inputs["input_ids"] == self.config.image_token_id).any(dim=1)
        if bool(has_image.all()):
            return inputs
        rows = has_image.nonzero().flatten()
        batch = len(has_image)
        selected = {}
        for key, value in inputs.items():
            # the per-image tensors: pixel_values (by the layout) and its companions
            # (pixel_attention_mask, image_sizes), one entry per sample
            per_image = key == "pixel_values" or (key.startswith(("pixel_", "image_")) and torch.is_tensor(value)
                                                  and value.dim() > 0 and value.shape[0] == batch)
            if not per_image:
                selected[key] = value
            elif len(rows):
                selected[key] = (self.config.family.layout.select_pixels(inputs, rows) if key == "pixel_values"
                                 else value[rows.to(value.device)])
        return selected

    @property
    def _can_reuse_image_features(self) -> bool:
        # exact only while LoRA adapts nothing but the language model: the vision tower and the
        # projector are then the same for every expert
        scope = self.config.lora_scope
        return self.config.reuse_image_features and scope in (None, self.config.family.language_model)

    @staticmethod
    def _select_image_features(captured: list, rows: torch.Tensor, batch: int):
        """The captured image features of `rows`, in the form the base accepts back through
        `mm_encoder_outputs`; None when they cannot be split per sample (several images per
        row, image splitting), and the expert pass then encodes the pixels again."""
        if len(captured) != 1:
            return None
        output = captured[0]
        features = getattr(output, "pooler_output", None)
        if features is None or len(features) != batch:
            return None
        if isinstance(features, (list, tuple)):
            selected = [features[i] for i in rows.tolist()]
        elif torch.is_tensor(features):
            selected = features[rows.to(features.device)]
        else:
            return None
        return type(output)(pooler_output=selected)

    def _pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The mean hidden state over non-pad tokens (`router_pooling="mean"`; "last" is the
        answer position's state, which `expert_forward` has already)."""
        weights = attention_mask.to(hidden.dtype)[..., None]
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)

    def _class_logits(self, name: str, answer_hidden: torch.Tensor) -> torch.Tensor:
        if self.config.head == "linear":
            return self.heads[name](answer_hidden).float()
        lm_head = self.base_model_with_experts.get_output_embeddings()
        ids = torch.tensor(self.config.label_token_ids, device=answer_hidden.device)
        logits = answer_hidden @ lm_head.weight[ids].T
        if getattr(lm_head, "bias", None) is not None:
            logits = logits + lm_head.bias[ids]
        softcap = getattr(self.config.text_config, "final_logit_softcapping", None)
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return logits.float()

    def expert_forward(self, name: str, inputs: dict, output_attentions: bool = False, image_features=None):
        """Run one expert. Returns (class logits [B,C], pooled hidden [B,H], attentions).

        The expert stays active afterwards (unlike `with model.expert(name):`): with gradient
        checkpointing, the backward pass recomputes this forward with the active adapter.
        image_features: precomputed vision features of these rows (skips the vision tower)."""
        self._check_expert(name)
        self._activate(name)
        hidden, attentions = self._encode(inputs, output_attentions=output_attentions, image_features=image_features)
        mask = inputs["attention_mask"]
        answer_hidden = hidden[torch.arange(hidden.shape[0], device=hidden.device), answer_positions(mask)]
        pooled = answer_hidden if self.config.router_pooling == "last" else self._pool(hidden, mask)
        return self._class_logits(name, answer_hidden), pooled, attentions

    def route(self, router_logits: torch.Tensor, threshold: float | None = None) -> torch.Tensor:
        """Strategy id per sample (`routing_mme_jd.route`) at this config's threshold (or the one
        given) and routed strategy."""
        threshold = self.config.router_threshold if threshold is None else threshold
        return route(router_logits, threshold, self.config.routed_strategy, self.config.skipped_experts)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        text_counterfactual: dict | None = None,
        image_counterfactual: dict | None = None,
        counterfactual_targets: torch.Tensor | None = None,
        text_counterfactual_valid: torch.Tensor | None = None,
        router_labels: torch.LongTensor | None = None,
        mode: str | None = None,
        expert: str | None = None,
        return_experts: bool = False,
        metadata: dict | None = None,
        **base_inputs,
    ) -> MMEJDOutput:
        """Class logits of MME-JD.

        The training losses (MCTD's reversed targets, the debias experts' objective, the
        router's class weights) read `self.loss_settings` (`MMEJDLossSettings`), which
        `mme_jd.training` sets for each stage; nothing else of the forward does.

        Args:
            input_ids, attention_mask, pixel_values, **base_inputs: the processor's outputs
                (image_grid_thw, pixel_attention_mask, token_type_ids, ... pass through).
            labels: [B] class ids; gives `loss`.
            text_counterfactual / image_counterfactual: processor outputs of x_t* and x_v*
                (see `counterfactual_mme_jd.build_triple`); needed by mode "mid", by
                `correction="linear"`, and for the MCTD loss.
            counterfactual_targets: [B, C] soft targets of the counterfactuals (default: the
                reversed labels of METHOD §4, `loss_settings.cf_target`); the text expert's
                "augment" objective gives its text counterfactual the label instead.
            text_counterfactual_valid: [B] bool; rows whose text counterfactual changed no
                word get no reversed-target loss.
            router_labels: [B] strategy ids; gives the router's cross-entropy, weighted by
                `loss_settings.router_class_weights`.
            mode: overrides config.mode for this call.
            expert: run this one expert on every row (training of one expert, ablations);
                with counterfactuals and labels the loss is the MCTD loss, or in training the
                debias expert's objective (`loss_settings`). "bias_only" (while added) with
                labels: its loss on the counterfactuals, the cue-only views, with the true labels.
            return_experts: run every expert on every sample and return all their logits.
            metadata: the collator's per-row truth (groups, masks); ignored here.
        """
        if input_ids is None or attention_mask is None:
            raise ValueError("MMEJDModel needs input_ids and attention_mask (the processor's outputs).")
        base_inputs.pop("num_items_in_batch", None)  # the Trainer's, for token-averaged losses
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, **base_inputs}
        if pixel_values is not None:
            inputs["pixel_values"] = pixel_values
        mode = mode or self.config.mode
        if expert is not None or mode in ("general", "mctd"):
            return self._single_expert(expert or "general", inputs, labels, text_counterfactual,
                                       image_counterfactual, counterfactual_targets, text_counterfactual_valid)
        if mode == "mid":
            if text_counterfactual is None or image_counterfactual is None:
                raise ValueError(
                    "mode='mid' needs text_counterfactual and image_counterfactual inputs; build them with "
                    "mme_jd.modeling.counterfactual_mme_jd.build_triple or use pipeline('multimodal-debias')."
                )
            out = self._single_expert("general", inputs, None, text_counterfactual, image_counterfactual, None)
            out.logits = (
                out.general_logits
                - self.config.lambda_text * out.text_counterfactual_logits
                - self.config.lambda_image * out.image_counterfactual_logits
            )
            out.loss = F.cross_entropy(out.logits, labels) if labels is not None else None
            return out
        if mode == "mme_jd":
            return self._mixture(inputs, labels, text_counterfactual, image_counterfactual, router_labels,
                                 return_experts)
        raise ValueError(f"unknown mode {mode!r}; choose one of general, mid, mctd, mme_jd.")

    def _run_with_counterfactuals(self, name: str, inputs: dict, text_cf: dict | None, image_cf: dict | None):
        """One expert over originals and the given counterfactuals. With gradients (training),
        one batched pass over them joined; without (inference), one pass per part, each cut to
        its own longest row (`without_trailing_padding`): a cue-only input is often a fraction
        of the original's length (MMSD's text-only image counterfactual: 17 tokens of ~45), and
        joined it would run padded to the original's."""
        batch = inputs["input_ids"].shape[0]
        if not torch.is_grad_enabled():
            original, pooled, _ = self.expert_forward(name, without_trailing_padding(inputs))
            text_logits, image_logits = (None if cf is None else self.expert_forward(
                name, without_trailing_padding(cf))[0] for cf in (text_cf, image_cf))
            return original, pooled, text_logits, image_logits
        parts = [inputs] + [cf for cf in (text_cf, image_cf) if cf is not None]
        pad = self.config.text_config.pad_token_id or 0
        logits, pooled, _ = self.expert_forward(name, concat_inputs(parts, pad))
        chunks = list(logits.split(batch))
        original = chunks.pop(0)
        text_logits = chunks.pop(0) if text_cf is not None else None
        image_logits = chunks.pop(0) if image_cf is not None else None
        return original, pooled[:batch], text_logits, image_logits

    def _bias_ensemble(self, name, inputs, labels, counterfactual, objective: str) -> MMEJDOutput:
        """Train debias expert `name` against a frozen bias on its cue-only counterfactual x*
        (`bias_ensemble_loss`): the general expert ("poe") or the bias-only expert
        ("poe_bias_only"; "learned_mixin" with the expert's gate on its pooled hidden state)."""
        bias_expert = BIAS_ONLY_EXPERT if objective in BIAS_ONLY_OBJECTIVES else EXPERT_NAMES[0]
        if bias_expert == BIAS_ONLY_EXPERT and not self.has_bias_only_expert:
            raise ValueError(f"the {objective!r} objective of {name} needs the trained bias-only expert: run "
                             "mme_jd.training's bias_only stage first (train() does), or model.add_bias_only_expert() "
                             "and train it on the cue-only inputs.")
        if objective == "learned_mixin" and name not in self.mixin_gates:
            raise ValueError(f"the learned_mixin objective of {name} needs its gate: model.add_mixin_gate({name!r}) "
                             "(mme_jd.training's stage adds it).")
        with torch.no_grad():  # the bias first: the expert's pass must be the last (gradient checkpointing)
            bias_logits = self.expert_forward(bias_expert, counterfactual)[0]
        logits, pooled, _ = self.expert_forward(name, inputs)
        gate = self.mixin_gates[name](pooled) if objective == "learned_mixin" else None
        loss = bias_ensemble_loss(logits, bias_logits, labels, gate, self.loss_settings.mixin_entropy_weight)
        out = MMEJDOutput(loss=loss, logits=logits, pooled_hidden_state=pooled)
        setattr(out, f"{name}_logits", logits)
        setattr(out, "image_counterfactual_logits" if name == "image_debias" else "text_counterfactual_logits",
                bias_logits)
        return out

    def _bias_only(self, inputs, labels, text_cf, image_cf) -> MMEJDOutput:
        """The bias-only expert's loss: CE(f_b(x*), y) with the TRUE labels over the cue-only
        views given (text and/or image counterfactual, one batched pass); the originals are
        not run. `logits` are those of the first view."""
        views = [cf for cf in (text_cf, image_cf) if cf is not None]
        if not views:
            raise ValueError("the bias-only expert learns from cue-only inputs: pass text_counterfactual and/or "
                             "image_counterfactual (CounterfactualTripleCollator(..., parts=...) builds them).")
        pad = self.config.text_config.pad_token_id or 0
        logits, pooled, _ = self.expert_forward(BIAS_ONLY_EXPERT, concat_inputs(views, pad))
        loss = F.cross_entropy(logits, labels.repeat(len(views)))
        batch = labels.shape[0]
        parts = [part for part, cf in (("text", text_cf), ("image", image_cf)) if cf is not None]
        chunks = dict(zip(parts, logits.split(batch)))
        return MMEJDOutput(loss=loss, logits=chunks[parts[0]], pooled_hidden_state=pooled[:batch],
                           text_counterfactual_logits=chunks.get("text"),
                           image_counterfactual_logits=chunks.get("image"))

    def _single_expert(self, name, inputs, labels, text_cf, image_cf, cf_targets, text_valid=None) -> MMEJDOutput:
        if labels is not None and name == BIAS_ONLY_EXPERT:
            return self._bias_only(inputs, labels, text_cf, image_cf)
        if labels is not None and self.training:
            objective = {"image_debias": (self.loss_settings.image_debias_objective, image_cf),
                         "text_debias": (self.loss_settings.text_debias_objective, text_cf)}.get(name)
            if objective is not None and objective[0] not in ("reversed", *LABEL_KEEPING_OBJECTIVES) \
                    and objective[1] is not None:
                return self._bias_ensemble(name, inputs, labels, objective[1], objective[0])
        logits, pooled, text_logits, image_logits = self._run_with_counterfactuals(name, inputs, text_cf, image_cf)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits, labels)
            if text_logits is not None or image_logits is not None:
                settings = self.loss_settings
                if cf_targets is None:
                    cf_targets = reversed_targets(labels, self.config.num_labels, settings.cf_target)
                if text_logits is not None and settings.text_counterfactual_weight > 0:
                    text_targets = cf_targets
                    if name == "text_debias" and settings.text_debias_objective in LABEL_KEEPING_OBJECTIVES:
                        # "augment": the input less the cue keeps its label
                        text_targets = F.one_hot(labels, self.config.num_labels).to(text_logits.dtype)
                    loss = loss + settings.text_counterfactual_weight * _soft_cross_entropy(
                        text_logits, text_targets, text_valid
                    )
                if image_logits is not None and settings.image_counterfactual_weight > 0:
                    loss = loss + settings.image_counterfactual_weight * _soft_cross_entropy(image_logits, cf_targets)
        out = MMEJDOutput(loss=loss, logits=logits, pooled_hidden_state=pooled,
                          text_counterfactual_logits=text_logits, image_counterfactual_logits=image_logits)
        setattr(out, f"{name}_logits", logits)
        return out

    @property
    def single_routed_expert(self) -> str | None:
        """The debias expert every sample is routed to whatever the router says (threshold 0
        with a fixed image or text routed strategy), else None."""
        return self.config.single_routed_expert

    def _single_expert_mixture(self, name: str, inputs: dict, labels) -> MMEJDOutput:
        """The routed mixture when it sends every sample to one expert: that expert's pass alone
        (the general pass and the router would not change a logit). The general and router
        logits are NaN: they were not computed."""
        logits, pooled, _ = self.expert_forward(name, inputs)
        final = logits / self.config.expert_temperature(name)
        missing = torch.full_like(logits, float("nan"))
        value = next(strategy for strategy, experts in STRATEGY_EXPERTS.items() if experts == (name,))
        strategy = torch.full((logits.shape[0],), value, dtype=torch.long, device=logits.device)
        loss = F.cross_entropy(final, labels) if labels is not None else None
        return MMEJDOutput(
            loss=loss, logits=final, general_logits=missing,
            image_debias_logits=logits if name == "image_debias" else missing,
            text_debias_logits=logits if name == "text_debias" else missing,
            router_logits=torch.full((logits.shape[0], len(Strategy)), float("nan"), device=logits.device),
            strategy=strategy, pooled_hidden_state=pooled,
        )

    def _mixture(self, inputs, labels, text_cf, image_cf, router_labels, return_experts) -> MMEJDOutput:
        config = self.config
        use_cf = config.correction == "linear"
        if use_cf and (text_cf is None or image_cf is None):
            raise ValueError("correction='linear' needs text_counterfactual and image_counterfactual inputs.")
        only = self.single_routed_expert
        if only is not None and not (return_experts or config.expert_execution == "all" or use_cf
                                     or router_labels is not None):
            return self._single_expert_mixture(only, inputs, labels)
        captured: list = []
        reuse = self._can_reuse_image_features and "pixel_values" in inputs and not use_cf
        with _ImageFeatureCapture(self.base_model_with_experts.model if reuse else None, captured):
            general, pooled, text_logits, image_logits = self._run_with_counterfactuals(
                "general", inputs, text_cf if use_cf else None, image_cf if use_cf else None
            )
        router_logits = self.router(pooled.detach())
        strategy = self.route(router_logits)
        batch = general.shape[0]
        run_all = return_experts or config.expert_execution == "all"
        skipped = set(config.skipped_experts or ())
        expert_logits = {}
        for name in DEBIAS_EXPERTS:  # one batched pass per expert over the rows routed to it
            rows = torch.arange(batch, device=general.device)
            if not run_all:
                rows = rows[needs_expert(strategy, name)]
            full = torch.full_like(general, float("nan"))
            if len(rows) and name in skipped:  # it holds the general expert's weights: the same logits
                full[rows] = general[rows]
            elif len(rows):
                features = self._select_image_features(captured, rows, batch) if reuse else None
                subset = select_rows(inputs, rows, config.family.layout)
                full[rows] = self.expert_forward(name, subset, image_features=features)[0]
            expert_logits[name] = full
        final = combine(strategy, {"general": general, **expert_logits}, config.both_combination,
                        {name: config.expert_temperature(name) for name in EXPERT_NAMES})
        if use_cf:
            final = final - config.lambda_text * text_logits - config.lambda_image * image_logits
        loss = None
        if labels is not None:
            loss = F.cross_entropy(final, labels)
        if router_labels is not None:
            weights = None
            if self.loss_settings.router_class_weights is not None:
                weights = torch.tensor(self.loss_settings.router_class_weights, device=router_logits.device)
            router_loss = F.cross_entropy(router_logits.float(), router_labels, weight=weights)
            loss = router_loss if loss is None else loss + router_loss
        return MMEJDOutput(
            loss=loss, logits=final, general_logits=general, image_debias_logits=expert_logits["image_debias"],
            text_debias_logits=expert_logits["text_debias"], router_logits=router_logits, strategy=strategy,
            text_counterfactual_logits=text_logits, image_counterfactual_logits=image_logits,
            pooled_hidden_state=pooled,
        )

    # ------------------------------------------------------------------ saliency
    def _attention_maps(self, inputs: dict):
        """The general expert's logits and attention maps. Attention maps need the eager
        implementation: switch to it for this pass only."""
        base = self.base_model_with_experts
        previous = base.config._attn_implementation
        switch = previous not in (None, "eager")
        if switch:
            base.set_attn_implementation("eager")
        try:
            with torch.no_grad():
                logits, _, attentions = self.expert_forward("general", inputs, output_attentions=True)
        finally:
            if switch:
                base.set_attn_implementation(previous)
        if not attentions or attentions[-1] is None:
            raise ValueError("the base model returned no attention maps; use image_counterfactual='gradient'.")
        maps = torch.stack([a.float() for a in attentions[-self.config.attention_layers :]]).mean(dim=(0, 2))
        return logits, maps

    def image_saliency(self, inputs: dict, strategy: str | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per-image-token saliency of the general expert, and its class logits (same pass).

        attention: attention of the answer position over the image tokens, mean over heads of
            the last `attention_layers` layers.
        gradient: |gradient × input| of the predicted class logit w.r.t. pixel_values, summed
            over each image token's patch.
        Returns (one score vector per sample over its image tokens, general logits [B, C]).
        """
        strategy = strategy or self.config.image_counterfactual
        image_token = self.config.image_token_id
        positions = answer_positions(inputs["attention_mask"])
        rows = torch.arange(inputs["input_ids"].shape[0], device=positions.device)
        if strategy == "attention":
            logits, maps = self._attention_maps(inputs)
            answer_rows = maps[rows, positions]  # [B, L]
            is_image = inputs["input_ids"] == image_token
            return [answer_rows[i][is_image[i]] for i in range(len(rows))], logits
        if strategy == "gradient":
            pixels = inputs["pixel_values"].detach().clone().float().requires_grad_(True)
            with torch.enable_grad():
                logits, _, _ = self.expert_forward(
                    "general", {**inputs, "pixel_values": pixels.to(inputs["pixel_values"].dtype)}
                )
                logits.gather(1, logits.argmax(1, keepdim=True)).sum().backward()
            contribution = (pixels.grad * pixels).abs().detach()
            scores = self.config.family.layout.pool_per_token(self.config, inputs, contribution)
            return scores, logits.detach()
        raise ValueError(f"image_saliency strategy {strategy!r} is not computed by the model; use attention or gradient.")

    def text_token_saliency(self, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention of the answer position over every token (mean over heads of the last
        `attention_layers` layers) and the general logits. Map tokens to words with
        `mme_jd`'s collator or pipeline, which hold the tokenizer."""
        positions = answer_positions(inputs["attention_mask"])
        rows = torch.arange(inputs["input_ids"].shape[0], device=positions.device)
        logits, maps = self._attention_maps(inputs)
        return maps[rows, positions] * inputs["attention_mask"], logits

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """transformers' `from_pretrained`, refusing a checkpoint that would load half-broken.

        transformers loads a checkpoint that lacks tensors (or holds ones the model does not
        have) with the missing ones randomly initialised and only reports it; for MME-JD that
        is a router or an expert silently replaced by noise. Raises a `ValueError` naming:
        missing or unexpected tensors, tensors holding NaN or infinite values, and a weights
        file that cannot be read (truncated).

        A checkpoint saved before the router's layers had names loads too: its keys are renamed
        (`MMEJDRouter.old_checkpoint_keys`, through transformers' `key_mapping`)."""
        output_loading_info = kwargs.pop("output_loading_info", False)
        source = os.fspath(pretrained_model_name_or_path)
        kwargs["key_mapping"] = {**MMEJDRouter.old_checkpoint_keys(), **(kwargs.get("key_mapping") or {})}
        try:
            model, loading_info = super().from_pretrained(
                pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs
            )
        except Exception as error:
            # safetensors' own error class, matched by name: this file imports only torch,
            # transformers, peft and the standard library
            if type(error).__name__ != "SafetensorError":
                raise
            raise ValueError(
                f"cannot read the weights of {source!r} ({', '.join(_weight_files(source)) or 'its weights file'}: "
                f"{error}): the file is damaged, e.g. cut short by an interrupted download or copy; download or "
                "copy it again."
            ) from None
        check_loaded_checkpoint(model, loading_info, source)
        warn_about_the_code_that_runs(model, source)
        return (model, loading_info) if output_loading_info else model

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, save_directory, *args, processor=None, **kwargs):
        """Save weights (safetensors), config with `auto_map` and `custom_pipelines` (the
        `multimodal-debias` pipeline), the modeling and pipeline files and the processor.

        The folder is replaced as one unit (`save_folder_atomically`): a save killed at any
        moment leaves it wholly old or wholly new. Other entries of the folder (a training
        report, Trainer checkpoints, notes) are kept; weight shards of an earlier save that
        this one does not write are dropped, as transformers' own save drops them."""
        processor = processor if processor is not None else self.processor
        # keep this model's own key layout: transformers would otherwise store the base's keys in
        # its legacy layout, which the Trainer's checkpoint reload (load_state_dict) cannot match
        kwargs.setdefault("save_original_format", False)
        pipelines = getattr(self.config, "custom_pipelines", None) or {}
        self.config.custom_pipelines = {**pipelines, **custom_pipelines_entry()}
        self.config.mme_jd_version = MME_JD_VERSION  # which code saved the folder (see warn_about_the_code_that_runs)
        target = os.path.abspath(os.fspath(save_directory))
        if kwargs.get("push_to_hub"):
            super().save_pretrained(target, *args, **kwargs)
            if processor is not None:
                processor.save_pretrained(target)
                strip_loading_environment(target)
            return

        def write(staging: str) -> None:
            super(MMEJDModel, self).save_pretrained(staging, *args, **kwargs)
            if processor is not None:
                processor.save_pretrained(staging)
                strip_loading_environment(staging)

        save_folder_atomically(target, write)


# ---------------------------------------------------------------------- checking a loaded checkpoint


def _part_of(tensor_name: str) -> str:
    """The part of MME-JD a tensor belongs to: the router, an expert's head or LoRA, the base."""
    if tensor_name.startswith("router."):
        return "the router"
    if is_training_only_parameter(tensor_name):
        return "a training-only part (bias-only expert, learned-mixin gate)"
    for expert in EXPERT_NAMES:
        if tensor_name.startswith(f"heads.{expert}."):
            return f"the {expert} head"
        if is_expert_parameter(tensor_name, expert):
            return f"the {expert} expert"
    return "the base model"


def _named(names, limit: int = 2) -> str:
    """How many of `names` belong to each part of the model, and the first few of them."""
    names = sorted(names)
    parts: dict[str, int] = {}
    for name in names:
        parts[_part_of(name)] = parts.get(_part_of(name), 0) + 1
    counts = ", ".join(f"{count} of {part}" for part, count in parts.items())
    shown = ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")
    return f"{counts}: {shown}"


def _weight_files(source: str) -> list[str]:
    """The weight files of a local folder (empty for a hub id)."""
    if not os.path.isdir(source):
        return []
    return sorted(entry for entry in os.listdir(source) if _WEIGHT_FILE.fullmatch(entry))


def check_loaded_checkpoint(model: nn.Module, loading_info: dict, source: str) -> None:
    """Raise a `ValueError` when the checkpoint `model` was loaded from lacked tensors, held
    tensors the model does not have (`loading_info` of transformers' `from_pretrained`), or
    when a loaded tensor holds NaN or infinite values."""
    missing = set(loading_info.get("missing_keys") or ())
    unexpected = set(loading_info.get("unexpected_keys") or ())
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"tensors the model needs are missing and would be randomly initialised "
                            f"({_named(missing)})")
        if unexpected:
            problems.append(f"it holds unexpected tensors the model does not have ({_named(unexpected)})")
        raise ValueError(
            f"refusing the MME-JD checkpoint {source!r}: {'; '.join(problems)}. The weights file is damaged or was "
            "saved by a different model: save, download or copy it again, or retrain."
        )
    non_finite = [
        name for name, param in model.named_parameters()
        if param.is_floating_point() and param.device.type != "meta" and not bool(torch.isfinite(param).all())
    ]
    if non_finite:
        raise ValueError(
            f"refusing the MME-JD checkpoint {source!r}: tensors hold NaN or infinity ({_named(non_finite)}), "
            "damaged or from a diverged run: use an earlier checkpoint or retrain."
        )


def warn_about_the_code_that_runs(model: nn.Module, source: str) -> None:
    """Warn when the code that runs a loaded folder is not the code that saved it.

    With the `mme_jd` package imported, transformers builds a folder's model from the package's
    registered classes, even when `trust_remote_code` is set; without it, from the folder's own
    files. So a folder saved by another version runs with this version's code (warned here),
    and a folder that lacks its code files loads only where the package is imported (warned
    here too: it would not load from the Hub)."""
    from_package = not type(model).__module__.startswith("transformers_modules")
    which = ("the installed mme_jd package (with mme_jd imported, transformers uses its registered classes, even "
             "with trust_remote_code=True)" if from_package else "the folder's own files")
    saved = getattr(model.config, "mme_jd_version", None)
    if saved != MME_JD_VERSION:
        warnings.warn(
            f"{source!r} was saved by mme-jd {saved or 'an earlier version (none recorded)'}; it runs with the "
            f"code of mme-jd {MME_JD_VERSION}, from {which}. Check its outputs, or re-save it with this version. To "
            "run a folder's own code, load it with trust_remote_code=True in a process that does not import mme_jd.",
            UserWarning, stacklevel=3,
        )
    if from_package and os.path.isdir(source):
        code_folder = os.path.dirname(os.path.abspath(__file__))
        code_files = sorted(f for f in os.listdir(code_folder) if f.endswith("_mme_jd.py"))
        missing = [f for f in code_files if not os.path.isfile(os.path.join(source, f))]
        if missing:
            warnings.warn(
                f"{source!r} lacks {', '.join(missing)}: it loads here only because the mme_jd package is imported; "
                "without it (from the Hub, with trust_remote_code=True) it cannot load. Re-save it with "
                "model.save_pretrained(folder) to write them.",
                UserWarning, stacklevel=3,
            )


# ---------------------------------------------------------------------- saving a folder as one unit

#: Name tags of what a save writes beside the target folder: the new folder while it is written
#: (then the old one until it is removed), and the old folder where no atomic exchange exists.
SAVE_STAGING_TAG = ".mme-jd-save-"
SAVE_OLD_TAG = ".mme-jd-old-"
#: Keys that transformers writes into saved tokenizer/processor configs about the machine the
#: processor was loaded on; they mean nothing to whoever loads the folder next.
LOADING_ENVIRONMENT_KEYS = ("is_local", "local_files_only")
#: Weight files of an earlier save: not carried into the new folder (the new save writes its own).
_WEIGHT_FILE = re.compile(r"(model|pytorch_model)(-\d{5}-of-\d{5})?\.(safetensors|bin)(\.index\.json)?")


def save_folder_atomically(target: str, write: Callable[[str], None]) -> None:
    """Replace the folder `target` as one unit: `write(folder)` fills a new folder beside it,
    the entries of `target` that `write` did not produce are carried over as hard links (no
    copy of the data), and one atomic exchange of two directory entries (Linux `renameat2`)
    puts the new folder in place. A process killed at any moment leaves `target` wholly old
    or wholly new; what it left beside the folder is removed by the next save.

    Where no atomic exchange exists (other systems), the old folder is renamed aside and the
    new one into place; a kill between the two renames leaves the old folder beside the target
    and the next save puts it back first. Where the folder is a mount point or its parent is
    not writable, files are moved into the folder one by one (atomic per file only).

    One save per folder at a time: a save removes the leftovers of any other.
    """
    target = os.path.realpath(target)  # a symbolic link to the folder stays a link to it
    if os.path.exists(target) and not os.path.isdir(target):
        raise ValueError(f"cannot save a model into {target!r}: it is a file, not a folder.")
    parent, name = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    _recover_killed_save(target)
    exists = os.path.isdir(target)
    if exists and not _can_stage_beside(target):
        _save_file_by_file(target, write)
        return
    staging = os.path.join(parent, f".{name}{SAVE_STAGING_TAG}{os.getpid()}-{secrets.token_hex(4)}")
    os.mkdir(staging)
    try:
        write(staging)
        if not exists:
            os.rename(staging, target)
            return
        shutil.copymode(target, staging)
        _carry_over_entries(target, staging)
        if not _exchange_entries(staging, target):
            old = os.path.join(parent, f".{name}{SAVE_OLD_TAG}{os.getpid()}-{secrets.token_hex(4)}")
            os.rename(target, old)  # a kill here: the next save renames `old` back first
            os.rename(staging, target)
            staging = old
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # the new folder on failure, else the old one


def _recover_killed_save(target: str) -> None:
    """Undo what a killed save left: put an old folder renamed aside back when the target is
    missing, and remove staging and old folders beside the target and the staging folders of
    the earlier per-file save inside it."""
    parent, name = os.path.split(target)
    prefixes = (f".{name}{SAVE_STAGING_TAG}", f".{name}{SAVE_OLD_TAG}")
    beside = [entry for entry in os.listdir(parent) if entry.startswith(prefixes)]
    if not os.path.exists(target):
        aside = [os.path.join(parent, entry) for entry in beside if entry.startswith(prefixes[1])]
        if aside:  # the newest old folder is the last complete save
            os.rename(max(aside, key=os.path.getmtime), target)
    for entry in beside:
        shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
    if os.path.isdir(target):
        for entry in os.listdir(target):
            if entry.startswith(SAVE_STAGING_TAG):
                shutil.rmtree(os.path.join(target, entry), ignore_errors=True)


def _can_stage_beside(target: str) -> bool:
    """Whether a new folder can be written beside `target` and exchanged with it: the parent is
    writable and on the same file system (`target` is no mount point)."""
    parent = os.path.dirname(target)
    return os.access(parent, os.W_OK | os.X_OK) and os.stat(parent).st_dev == os.stat(target).st_dev


def _carry_over_entries(source: str, destination: str) -> None:
    """Hard-link every entry of `source` that `destination` lacks into it (folders recursively,
    symbolic links as links), except weight files of an earlier save. A file that cannot be
    linked (a file system without hard links) is copied."""
    for entry in os.listdir(source):
        written_anew = os.path.lexists(os.path.join(destination, entry)) or _WEIGHT_FILE.fullmatch(entry)
        if written_anew or entry.startswith(SAVE_STAGING_TAG):
            continue
        origin, copy = os.path.join(source, entry), os.path.join(destination, entry)
        if os.path.islink(origin):
            os.symlink(os.readlink(origin), copy)
        elif os.path.isdir(origin):
            shutil.copytree(origin, copy, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(origin, copy)


def _link_or_copy(origin: str, copy: str) -> None:
    try:
        os.link(origin, copy)
    except OSError:
        shutil.copy2(origin, copy)


def _exchange_entries(first: str, second: str) -> bool:
    """Swap two directory entries atomically (Linux `renameat2(RENAME_EXCHANGE)`). False where
    the system or its file system cannot; other failures raise."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a C library without renameat2
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_current_directory, rename_exchange = -100, 2
    if renameat2(at_current_directory, os.fsencode(first), at_current_directory, os.fsencode(second),
                 rename_exchange) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(error, os.strerror(error), first, None, second)


def _save_file_by_file(target: str, write: Callable[[str], None]) -> None:
    """The fallback save: write into a staging folder inside `target`, then move each file into
    place with `os.replace` (atomic per file, not per folder)."""
    logger.warning("saving %s file by file: its parent folder is not writable or it is a mount point, so a save "
                   "killed midway can leave new files next to old ones", target)
    staging = os.path.join(target, f"{SAVE_STAGING_TAG}{os.getpid()}-{secrets.token_hex(4)}")
    try:
        write(staging)
        for root, _, files in os.walk(staging):
            destination = os.path.join(target, os.path.relpath(root, staging))
            os.makedirs(destination, exist_ok=True)
            for file_name in files:
                os.replace(os.path.join(root, file_name), os.path.join(destination, file_name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def strip_loading_environment(folder: str) -> None:
    """Remove `LOADING_ENVIRONMENT_KEYS` from the JSON configs a processor saved in `folder`
    (at any depth of each file's objects)."""

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in LOADING_ENVIRONMENT_KEYS}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    for entry in os.listdir(folder):
        path = os.path.join(folder, entry)
        if not entry.endswith(".json") or entry == "config.json" or not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8") as handle:
            try:
                content = json.load(handle)
            except ValueError:
                continue  # not ours to judge
        stripped = strip(content)
        if stripped != content:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(json.dumps(stripped, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


MMEJDConfig.register_for_auto_class()
MMEJDModel.register_for_auto_class("AutoModel")

__all__ = ["MMEJDModel", "MMEJDOutput", "MMEJDPreTrainedModel", "MMEJDRouter", "MixinGate", "answer_positions",
           "bias_ensemble_loss", "concat_inputs", "is_expert_parameter", "is_training_only_parameter", "select_rows",
           "without_trailing_padding"]
