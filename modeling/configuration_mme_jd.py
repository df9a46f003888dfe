"""Configuration of MME-JD: a base vision-language model, three LoRA experts and a router.

Hub remote code: this file imports only the standard library, torch/transformers and its
sibling files, so `AutoConfig.from_pretrained(folder, trust_remote_code=True)` works on a
machine without the `mme_jd` package.

Every choice of the method that a trained model reads (see METHOD.md of the project) is a
field of `MMEJDConfig`, named after the words of the method: `text_counterfactual`,
`image_counterfactual`, `lambda_text`, ... The knobs of training alone live elsewhere, by when
they are read: `MMEJDLossSettings` holds what the forward's training losses read (a model
attribute, never saved); `mme_jd.training.MMEJDTrainingConfig` holds every training knob and
sets the loss settings for each stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .layouts_mme_jd import GRID, MERGED_ROWS, ImageLayout
from .routing_mme_jd import (BOTH_COMBINATIONS, DEBIAS_EXPERTS, ROUTED_STRATEGY_NAMES, Strategy, single_routed_expert,
                             usable_strategies)
from .routing_mme_jd import STRATEGY_NAMES as ROUTER_STRATEGIES  # the routing module's names, re-exported

#: The version of this code (the `mme-jd` package's version; `mme_jd.__version__` is this
#: constant). A saved folder records it as `mme_jd_version`, to tell on load whether the code
#: that runs is the code that saved it.
MME_JD_VERSION = "0.1.0"

EXPERT_NAMES: tuple[str, ...] = ("general", "image_debias", "text_debias")
#: The bias-only expert (METHOD §8): a fourth LoRA adapter added for a training run only, trained
#: on cue-only inputs with the true labels, the bias the `BIAS_ONLY_OBJECTIVES` train a debias
#: expert against. Never saved: a checkpoint holds the three `EXPERT_NAMES` and the router.
BIAS_ONLY_EXPERT = "bias_only"

MODES = ("general", "mid", "mctd", "mme_jd")
CORRECTIONS = ("none", "linear")
HEADS = ("verbalizer", "linear")
TEXT_COUNTERFACTUALS = ("lexical", "saliency", "given", "swap", "cue_only", "cue_removed")
IMAGE_COUNTERFACTUALS = ("attention", "gradient", "given", "cue_only")
CUE_KINDS = ("text", "image")
IMAGE_FILLS = ("mean", "zero")
OTHER_MODALITY = ("null", "keep")
CF_TARGETS = ("complement", "uniform")
EXPERT_EXECUTIONS = ("routed", "all")
DEBIAS_OBJECTIVES = ("reversed", "poe", "poe_bias_only", "learned_mixin", "augment")
#: Objectives whose counterfactual keeps the label: it must be a complete input less the cue
#: (`cue_removed`), never a cue-only view (that would teach the cue).
LABEL_KEEPING_OBJECTIVES = ("augment",)
#: The debias objectives whose bias is the bias-only expert (they need the `bias_only` stage).
BIAS_ONLY_OBJECTIVES = ("poe_bias_only", "learned_mixin")
ROUTER_POOLINGS = ("last", "mean")
#: What a row without an image (MMSD's tweets offline) gives the base: the flat grey stand-in
#: image and its image tokens ("stand_in", what folders saved without the field mean), or no
#: image tokens at all ("text_only", what `mme_jd.from_base` gives new models).
IMAGE_LESS_ROWS = ("stand_in", "text_only")
#: The base's compute precision (`MMEJDConfig.autocast_dtype`): None keeps the weights' own.
AUTOCAST_DTYPES = (None, "bfloat16", "float16")


@dataclass(frozen=True)
class BaseFamily:
    """What differs between base-model families (the only model-specific code): one row of
    `BASE_FAMILIES`.

    image_placeholder: what the prompt's `{image}` becomes for this family's processor.
    layout: how `pixel_values` hold the image tokens (layouts_mme_jd.py): `GRID` (one image
        per sample, its tokens a square grid over H × W) or `MERGED_ROWS` (Qwen2-VL's rows of
        merged patches with `image_grid_thw`). It computes the token grid, masks image tokens'
        pixels, pools pixel scores per token and finds each sample's pixel rows.
    language_model: the name of the base's language-model sub-module (where LoRA goes).

    A new family is one row in `BASE_FAMILIES`; a new way of laying out pixels is one more
    `ImageLayout` subclass in layouts_mme_jd.py. Nothing is saved: a config finds its family by
    the base config's `model_type` on every load.
    """

    image_placeholder: str
    layout: ImageLayout = GRID
    language_model: str = "language_model"


# Families tested end to end (tests/test_families.py: LLaVA, Qwen2-VL, Idefics3). Any other
# image-text-to-text model falls back to DEFAULT_FAMILY with the processor's own `image_token`.
BASE_FAMILIES: dict[str, BaseFamily] = {
    "llava": BaseFamily("<image>"),
    "qwen2_vl": BaseFamily("<|vision_start|><|image_pad|><|vision_end|>", MERGED_ROWS),
    "qwen2_5_vl": BaseFamily("<|vision_start|><|image_pad|><|vision_end|>", MERGED_ROWS),
    "idefics3": BaseFamily("<image>", language_model="text_model"),
    "smolvlm": BaseFamily("<image>", language_model="text_model"),
    "paligemma": BaseFamily("<image>"),
    "gemma3": BaseFamily("<start_of_image>"),
}
DEFAULT_FAMILY = BaseFamily("<image>")


def base_family(model_type: str | None) -> BaseFamily:
    """The family of a base by its `model_type` (DEFAULT_FAMILY when unknown)."""
    return BASE_FAMILIES.get(model_type or "", DEFAULT_FAMILY)


def check_choice(name: str, value: Any, allowed: tuple, owner: str = "MMEJDConfig") -> None:
    """Raise a `ValueError` naming `owner.name` and the allowed values unless `value` is one."""
    if value not in allowed:
        raise ValueError(f"{owner}.{name}={value!r} is not allowed; choose one of {list(allowed)}.")


def check_range(name: str, value: float, low: float, high: float, owner: str = "MMEJDConfig") -> None:
    """Raise a `ValueError` naming `owner.name` unless `value` is a number in [low, high]."""
    if not isinstance(value, (int, float)) or not (low <= value <= high):
        raise ValueError(f"{owner}.{name}={value!r} must be a number in [{low}, {high}].")


@dataclass
class MMEJDLossSettings:
    """What `MMEJDModel.forward` reads to compute a training loss, and nothing else reads.

    Held by the model as `model.loss_settings`, never saved with it: these knobs shape the
    weights a run trains, not what the trained model computes, so a config.json has no place
    for them. `mme_jd.training` sets them for each expert stage from its
    `MMEJDTrainingConfig` (`MMEJDTrainingConfig.loss_settings(stage)`) and gives the model back
    its own afterwards; a direct `model(**batch, labels=...)` call reads the model's own, by
    default these defaults (those the knobs had as `MMEJDConfig` fields).

    text_counterfactual_weight, image_counterfactual_weight: w_t, w_v of the reversed-target
        loss over the counterfactuals given to the forward (MCTD):
        CE(x, y) + w_t·CE(x_t*, ȳ) + w_v·CE(x_v*, ȳ). A debias expert trains at 1 on its own
        counterfactual; the `mctd` recipe sets its own (`MMEJDTrainingConfig.mctd_*_weight`).
    cf_target: reversed target for more than two classes: "complement" (uniform over
        the classes other than y) or "uniform" (uniform over all classes).
    image_debias_objective / text_debias_objective: how a debias expert learns from its
        counterfactual x* (its cue-only view). The bias terms are training-only: at inference
        the expert runs alone.
        - "reversed": CE(x, y) + w·CE(x*, ȳ) (MCTD's reversed target).
        - "poe": product of experts CE(log_softmax(f_e(x)) + log_softmax(f_g(x*)), y) with the
          general expert f_g frozen on x*, so the expert learns what the cue leaves unexplained.
        - "poe_bias_only": the same product with the bias-only expert f_b (`BIAS_ONLY_EXPERT`,
          trained on x* with the true labels, then frozen) in place of the general expert.
        - "learned_mixin": Clark et al. (2019)'s learned-mixin +H against f_b:
          CE(log_softmax(f_e(x)) + g(x)·log_softmax(f_b(x*)), y) + w_H·H(softmax(g(x)·log_softmax(f_b(x*))))
          with g(x) = softplus(w·h(x) + b) a gate on the expert's pooled hidden state h(x),
          trained with the expert and not saved; w_H is `mixin_entropy_weight`.
        - "augment" (told, text only): CE(x, y) + w·CE(x*, y) with x* the input less the
          declared cue (`cue_removed`): counterfactual augmentation with the TRUE label, so the
          expert learns the label where the cue is missing and may still read it where present.
          Rows without the cue (x* = x) get no second term.
        The arithmetic of "poe", "poe_bias_only" and "learned_mixin" is
        `modeling_mme_jd.bias_ensemble_loss`.
    mixin_entropy_weight: w_H of "learned_mixin", the entropy penalty that keeps the gate from
        shrinking the bias to nothing (g → 0 is plain CE: the expert takes the cue back).
        Clark et al. chose it on held-out data per task (their VQA-CP code's default: 0.36);
        0.1 here is not tuned. With an exact bias and a large w_H the gate grows past 1 and
        the expert learns the cue with the opposite sign (tests/test_bias_objectives.py).
    router_class_weights: class weights of the router's cross-entropy when the forward gets
        `router_labels` (None: uniform); the router stage sets them from its labels'
        frequencies.
    """

    text_counterfactual_weight: float = 1.0
    image_counterfactual_weight: float = 1.0
    cf_target: str = "complement"
    image_debias_objective: str = "reversed"
    text_debias_objective: str = "reversed"
    mixin_entropy_weight: float = 0.1
    router_class_weights: list[float] | None = None

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for name in ("text_counterfactual_weight", "image_counterfactual_weight", "mixin_entropy_weight"):
            check_range(name, getattr(self, name), 0.0, 100.0, owner)
        check_choice("cf_target", self.cf_target, CF_TARGETS, owner)
        check_choice("image_debias_objective", self.image_debias_objective, DEBIAS_OBJECTIVES, owner)
        check_choice("text_debias_objective", self.text_debias_objective, DEBIAS_OBJECTIVES, owner)
        if self.router_class_weights is not None and len(self.router_class_weights) != len(ROUTER_STRATEGIES):
            raise ValueError(
                f"{owner}.router_class_weights needs {len(ROUTER_STRATEGIES)} weights "
                f"(one per {list(ROUTER_STRATEGIES)}), got {self.router_class_weights!r}."
            )


#: Fields `MMEJDConfig` held until the configs were split by when they are read, and where
#: each went. A config.json saved before holds them: loading drops them (`MMEJDConfig.__post_init__`).
#: A training knob's saved value, default or not, shaped the weights that run trained and
#: changes nothing a trained model computes, so dropping it changes no output.
REMOVED_FIELDS: dict[str, str] = {
    "expert_names": "the constant EXPERT_NAMES",
    "router_strategies": "the constant ROUTER_STRATEGIES",
    "mctd_text_weight": "MMEJDTrainingConfig.mctd_text_weight",
    "mctd_image_weight": "MMEJDTrainingConfig.mctd_image_weight",
    "cf_target": "MMEJDTrainingConfig.cf_target",
    "image_debias_objective": "MMEJDTrainingConfig.image_debias_objective",
    "text_debias_objective": "MMEJDTrainingConfig.text_debias_objective",
    "router_cost_tolerance": "MMEJDTrainingConfig.router_cost_tolerance",
    "router_max_routed_share": "MMEJDTrainingConfig.router_max_routed_share",
    "router_class_weights": "MMEJDLossSettings.router_class_weights (set by the router stage)",
}


class MMEJDConfig(PreTrainedConfig):
    r"""Configuration of [`MMEJDModel`].

    Base model
        base_config: the config of the base vision-language model: any config that
            `AutoModelForImageTextToText` accepts (LLaVA, Qwen2-VL, Idefics3, PaliGemma, ...),
            as a config object or a dict with `model_type`.

    Labels and prompt (METHOD §2)
        id2label / label2id: the class names (inherited fields).
        label_words: one verbalizer word per class; the class logit is the language-model
            logit of the word's first token at the answer position.
        label_token_ids: those first tokens' ids, filled in from the processor by
            `mme_jd.from_base` (or given by hand).
        prompt_template: the prompt; `{image}` becomes the family's image placeholder,
            `{text}` the input text, `{question}` the field `question`. The answer position
            is the last token of the prompt.
        question: the task question put into the prompt.
        image_less_rows: what a row without an image becomes (`IMAGE_LESS_ROWS`): "text_only"
            (its prompt keeps no image tokens and the vision tower does not run for it; 39
            tokens instead of 55 on MiniLM-LLaVA's MMSD rows), or "stand_in" (a flat grey image
            and its image tokens; the class default, so that folders saved before the field
            existed load as they were trained). `mme_jd.from_base` sets "text_only". Needs a
            base whose layout holds one image per sample (GRID: LLaVA, PaliGemma, Gemma 3, ...).
        head: "verbalizer" (default; zero-shot capable) or "linear" (a linear layer per
            expert over the final hidden state at the answer position).
        autocast_dtype: None (default: the base runs in its weights' dtype) or "bfloat16" /
            "float16": the base's pass (vision tower and language model, LoRA included) runs
            under `torch.autocast` in that dtype, in training and at inference; the weights,
            the optimizer's updates, the heads, the router and every logit stay float32.
            Mixed precision for GPUs and CPUs with AVX512-BF16 or AMX (on those, a MiniLM-LLaVA
            training pass took 0.86-0.88x float32's CPU time and an inference pass 0.55-0.60x:
            `bench/autocast_speed.py`); elsewhere bfloat16 is emulated and not expected to pay
            (`mme_jd.native_autocast_dtype`). A model's router threshold and λs are chosen
            under the precision it was trained with: load it with the same, or pass
            `autocast_dtype=` to `from_pretrained`.

    Experts (LoRA adapters on one frozen base, named by EXPERT_NAMES; METHOD §4)
        lora_rank, lora_alpha, lora_dropout: LoRA hyper-parameters of every expert.
        lora_target_modules: names of linear layers to adapt; only those inside the
            `lora_scope` sub-module (the language model) are adapted.
        lora_scope: the name of the base sub-module the experts adapt (None: the family's
            language model, "language_model" for most, "text_model" for Idefics3/SmolVLM).

    Router (strategies: ROUTER_STRATEGIES)
        router_hidden_size: hidden width of the router MLP on the general expert's pooled
            final hidden state.
        router_pooling: "last" (the answer position) or "mean" (mean over non-pad tokens).
        router_threshold: a sample leaves `none` when 1 - P(none) >= router_threshold; it
            then takes the most probable debias strategy.
        routed_strategy: what a sample that leaves `none` gets: None (the router's most probable
            debias strategy) or a fixed "image", "text" or "both" (chosen on validation when one
            debias strategy dominates; the router then decides only *whether* to debias).
            The router stage tunes the threshold and the routed strategy on validation
            (`MMEJDTrainingConfig`: `router_threshold_objective`, `router_cost_tolerance`,
            `router_max_routed_share`).
        skipped_experts: debias experts the training run did not train because validation
            showed nothing left for them to remove (`MMEJDTrainingConfig.expert_skip_reliance`):
            they hold the general expert's weights (their logits are the general expert's, not
            computed again), and routing never sends a sample to a strategy that needs them (`routing_mme_jd.usable_strategies`). None: all trained.

    Debiasing
        mode: "general" (the general expert), "mid" (counterfactual subtraction at
            inference), "mctd" (a model trained on counterfactuals; runs like general),
            "mme_jd" (routed mixture of experts).
        lambda_text, lambda_image: MID's weights λ_t, λ_v:
            f_mid(x) = f(x) - λ_t·f(x_t*) - λ_v·f(x_v*).
        correction: "none" or "linear" (MID's subtraction on top of the routed expert).
        expert_execution: "routed" (only routed samples run a debias expert) or "all" (every
            expert on every sample, as the paper does).
        reuse_image_features: the debias experts' passes reuse the vision tower's and
            projector's output from the general pass instead of recomputing it (exact: LoRA only
            adapts the language model). Turned off automatically when `lora_scope` reaches
            outside the language model.
        both_combination: how strategy `both` mixes the image and text experts: "mean" of
            logits or "product" (sum of log-probabilities, a product of experts).
        expert_temperatures: per-expert temperature dividing its logits before mixing
            (calibration), e.g. {"general": 1.0, "image_debias": 1.3, "text_debias": 0.9}.

    Counterfactuals (METHOD §3)
        text_counterfactual: "lexical", "saliency", "given", "swap", "cue_only" (keep the
            declared text cues' words and function words, mask the rest: x_t* exact when the
            shortcut is known) or "cue_removed" (delete the declared text cues' words).
        image_counterfactual: "attention", "gradient", "given" or "cue_only" (keep the
            declared image cues' regions, fill the rest).
        cues: the declared cues the `cue_only` / `cue_removed` builders use, as JSON-able
            specs (made by `mme_jd.cues.Cue.to_spec`): `{"name", "kind": "text", "pattern":
            regex}` or `{"name", "kind": "image", "function": "corner watermark" | "dominant
            hue" | "border" | another name, "params": {...}}`; an image cue's kept region is
            the function's (corners, border ring; none for "dominant hue", whose statistic the
            mean fill keeps) or `params["keep_boxes"]` (fractional [x0, y0, x1, y1] boxes).
        text_mask_ratio: share of text words masked by the `saliency` builder.
        image_mask_ratio: share of image tokens (patches) masked by `attention`/`gradient`.
        image_fill: what masked patches become: "mean" (the image's channel mean) or "zero".
        mask_word: the word that replaces masked text words.
        other_modality: what the other half of a counterfactual holds: "null" (empty text /
            mean image) or "keep".
        swap_other_modality: the same for a `swap` text counterfactual, which is not a
            cue-only input but a complete one whose label flips; "keep" (default) holds the
            image, without which a label that needs both modalities (sarcasm as incongruity)
            is undefined and cannot be reversed.
        attention_layers: how many of the last layers' attention maps the `attention`
            builder averages.

    Provenance
        mme_jd_version: the version of the MME-JD code that saved the folder (written by
            `MMEJDModel.save_pretrained`; None before a first save or for folders saved
            before it was recorded).
    """

    model_type = "mme_jd"
    sub_configs_defaults = {"base_config": SubConfigSpec(config_class=AutoConfig, model_type="llava")}

    base_config: dict | PreTrainedConfig | None = None
    # labels and prompt
    label_words: list[str] | None = None
    label_token_ids: list[int] | None = None
    prompt_template: str = "{image} {text} question : {question} answer :"
    question: str = "is it sarcastic ?"
    image_less_rows: str = "stand_in"
    head: str = "verbalizer"
    autocast_dtype: str | None = None
    # experts
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                                 "query", "key", "value", "dense"]
    )
    lora_scope: str | None = None
    # router
    router_hidden_size: int = 64
    router_pooling: str = "last"
    router_threshold: float = 0.5
    routed_strategy: str | None = None
    skipped_experts: list[str] | None = None
    # debiasing
    mode: str = "mme_jd"
    lambda_text: float = 0.5
    lambda_image: float = 0.5
    correction: str = "none"
    expert_execution: str = "routed"
    reuse_image_features: bool = True
    both_combination: str = "mean"
    expert_temperatures: dict[str, float] | None = None
    # counterfactuals
    text_counterfactual: str = "lexical"
    image_counterfactual: str = "attention"
    text_mask_ratio: float = 0.3
    image_mask_ratio: float = 0.25
    image_fill: str = "mean"
    mask_word: str = "[MASK]"
    other_modality: str = "null"
    swap_other_modality: str = "keep"
    attention_layers: int = 2
    cues: list[dict] | None = None
    # provenance
    mme_jd_version: str | None = None

    def __post_init__(self, **kwargs):
        for name in REMOVED_FIELDS:  # a config.json saved before they moved (see REMOVED_FIELDS)
            kwargs.pop(name, None)
        super().__post_init__(**kwargs)
        if self.id2label and not self.label2id:
            self.label2id = {name: int(index) for index, name in self.id2label.items()}
        self.validate_fields()

    # ------------------------------------------------------------------ validation
    def validate_fields(self) -> None:
        """Raise a `ValueError` naming the field and the allowed values for any bad value."""
        check_choice("mode", self.mode, MODES)
        check_choice("correction", self.correction, CORRECTIONS)
        check_choice("head", self.head, HEADS)
        check_choice("text_counterfactual", self.text_counterfactual, TEXT_COUNTERFACTUALS)
        check_choice("image_counterfactual", self.image_counterfactual, IMAGE_COUNTERFACTUALS)
        check_choice("image_fill", self.image_fill, IMAGE_FILLS)
        check_choice("other_modality", self.other_modality, OTHER_MODALITY)
        check_choice("swap_other_modality", self.swap_other_modality, OTHER_MODALITY)
        check_choice("expert_execution", self.expert_execution, EXPERT_EXECUTIONS)
        check_choice("both_combination", self.both_combination, BOTH_COMBINATIONS)
        check_choice("router_pooling", self.router_pooling, ROUTER_POOLINGS)
        check_choice("image_less_rows", self.image_less_rows, IMAGE_LESS_ROWS)
        check_choice("autocast_dtype", self.autocast_dtype, AUTOCAST_DTYPES)
        if self.image_less_rows == "text_only" and self.base_config is not None and self.family.layout is not GRID:
            raise ValueError(
                f"MMEJDConfig.image_less_rows='text_only' needs a base with one image per sample; "
                f"{self.family.layout.name} ({getattr(self.base_config, 'model_type', None)}) batches image patches "
                "for the whole batch: use image_less_rows='stand_in'."
            )
        check_choice("routed_strategy", self.routed_strategy, (None, *ROUTED_STRATEGY_NAMES))
        if self.skipped_experts:
            unknown = set(self.skipped_experts) - set(DEBIAS_EXPERTS)
            if unknown:
                raise ValueError(f"MMEJDConfig.skipped_experts has {sorted(unknown)}; only debias experts "
                                 f"{list(DEBIAS_EXPERTS)} can be skipped.")
            if self.routed_strategy is not None and Strategy.of(self.routed_strategy) not in usable_strategies(
                    self.skipped_experts):
                raise ValueError(f"MMEJDConfig.routed_strategy={self.routed_strategy!r} needs an expert in "
                                 f"skipped_experts={self.skipped_experts}; choose another routed_strategy or None.")
        check_range("router_threshold", self.router_threshold, 0.0, 1.0)
        check_range("text_mask_ratio", self.text_mask_ratio, 0.0, 1.0)
        check_range("image_mask_ratio", self.image_mask_ratio, 0.0, 1.0)
        check_range("lora_dropout", self.lora_dropout, 0.0, 1.0)
        for name in ("lambda_text", "lambda_image"):
            check_range(name, getattr(self, name), 0.0, 100.0)
        for name in ("lora_rank", "lora_alpha", "router_hidden_size", "attention_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"MMEJDConfig.{name}={value!r} must be a positive integer.")
        if "{text}" not in self.prompt_template:
            raise ValueError(
                f"MMEJDConfig.prompt_template={self.prompt_template!r} must contain '{{text}}' "
                "(and usually '{image}' and '{question}')."
            )
        num_labels = len(self.id2label) if self.id2label else self.num_labels
        if self.label_words is not None and len(self.label_words) != num_labels:
            raise ValueError(
                f"MMEJDConfig.label_words has {len(self.label_words)} words but there are {num_labels} labels "
                f"({self.id2label}); give one word per label."
            )
        if self.label_token_ids is not None:
            if len(self.label_token_ids) != num_labels:
                raise ValueError(
                    f"MMEJDConfig.label_token_ids has {len(self.label_token_ids)} ids for {num_labels} labels."
                )
            if len(set(self.label_token_ids)) != len(self.label_token_ids):
                raise ValueError(
                    f"MMEJDConfig.label_token_ids={self.label_token_ids} repeats a token: the label words "
                    f"{self.label_words} must start with different tokens; choose other label_words."
                )
        self._validate_cues()
        if self.expert_temperatures is not None:
            unknown = set(self.expert_temperatures) - set(EXPERT_NAMES)
            if unknown:
                raise ValueError(
                    f"MMEJDConfig.expert_temperatures has unknown experts {sorted(unknown)}; "
                    f"allowed: {list(EXPERT_NAMES)}."
                )
            for name, value in self.expert_temperatures.items():
                if not isinstance(value, (int, float)) or value <= 0:
                    raise ValueError(f"MMEJDConfig.expert_temperatures[{name!r}]={value!r} must be > 0.")

    def _validate_cues(self) -> None:
        """Each declared cue spec: a name, a kind, and a compiling regex (text) or a function
        name (image); names unique."""
        import re

        if self.cues is None:
            return
        if not isinstance(self.cues, (list, tuple)):
            raise ValueError(f"MMEJDConfig.cues must be a list of cue specs (dicts), got {type(self.cues).__name__}.")
        names = []
        for index, spec in enumerate(self.cues):
            where = f"MMEJDConfig.cues[{index}]"
            if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
                raise ValueError(f"{where}={spec!r} must be a dict with a non-empty 'name'; build specs with "
                                 "mme_jd.cues.Cue(...).to_spec().")
            check_choice(f"cues[{index}].kind", spec.get("kind"), CUE_KINDS)
            if spec["kind"] == "text":
                try:
                    re.compile(spec.get("pattern") or "")
                except (re.error, TypeError) as error:
                    raise ValueError(f"{where} ({spec['name']}): pattern {spec.get('pattern')!r} is not a valid "
                                     f"regular expression ({error}).") from None
                if not spec.get("pattern"):
                    raise ValueError(f"{where} ({spec['name']}): a text cue needs a non-empty 'pattern'.")
            elif not isinstance(spec.get("function"), str):
                raise ValueError(f"{where} ({spec['name']}): an image cue needs a 'function' name.")
            names.append(spec["name"])
        if len(set(names)) != len(names):
            raise ValueError(f"MMEJDConfig.cues repeats a name: {names}; give each cue its own name.")

    # ------------------------------------------------------------------ helpers
    @property
    def family(self) -> BaseFamily:
        """The base model's family (its row of `BASE_FAMILIES`, by `base_config.model_type`)."""
        return base_family(getattr(self.base_config, "model_type", None))

    @property
    def text_config(self):
        """The base model's language-model config (hidden size, vocab, pad id)."""
        base = self.base_config
        return base.get_text_config() if hasattr(base, "get_text_config") else base

    @property
    def image_token_id(self) -> int | None:
        base = self.base_config
        for name in ("image_token_id", "image_token_index"):
            value = getattr(base, name, None)
            if value is not None:
                return int(value)
        return None

    @property
    def single_routed_expert(self) -> str | None:
        """`single_routed_expert` of this config's routed strategy and threshold."""
        return single_routed_expert(self.routed_strategy, self.router_threshold)

    def expert_temperature(self, expert: str) -> float:
        """The calibration temperature of one expert (1.0 unless `expert_temperatures` sets it)."""
        return float((self.expert_temperatures or {}).get(expert, 1.0))


__all__ = ["MMEJDConfig", "MMEJDLossSettings", "BASE_FAMILIES", "BIAS_ONLY_EXPERT", "BIAS_ONLY_OBJECTIVES",
           "EXPERT_NAMES", "MME_JD_VERSION", "REMOVED_FIELDS", "ROUTER_STRATEGIES", "base_family", "check_choice",
           "check_range", "single_routed_expert"]
