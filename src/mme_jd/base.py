"""Wrap any image-text-to-text base model and its processor into an `MMEJDModel`."""

from __future__ import annotations

import os
from typing import Any

import torch

from .modeling.configuration_mme_jd import REMOVED_FIELDS, MMEJDConfig, base_family
from .modeling.layouts_mme_jd import GRID
from .modeling.modeling_mme_jd import MMEJDModel

SARCASM_LABELS = ("not_sarcastic", "sarcastic")


def label_token_ids(tokenizer: Any, label_words: list[str]) -> list[int]:
    """The first token of each label word as it follows the prompt (with a leading space where
    the tokenizer marks word starts). Raises when two words share their first token."""
    ids = []
    for word in label_words:
        for candidate in (" " + word, word):
            tokens = tokenizer(candidate, add_special_tokens=False)["input_ids"]
            tokens = [t for t in tokens if tokenizer.decode([t]).strip()]
            if tokens:
                ids.append(int(tokens[0]))
                break
        else:
            raise ValueError(f"label word {word!r} gives no token with this tokenizer; choose another word.")
        if tokenizer.unk_token_id is not None and ids[-1] == tokenizer.unk_token_id:
            raise ValueError(f"label word {word!r} is unknown to the tokenizer (it maps to the unknown token).")
    if len(set(ids)) != len(ids):
        raise ValueError(
            f"label words {label_words} start with the same token ({ids}); choose words whose first tokens differ."
        )
    return ids


def native_autocast_dtype(device: str = "cpu") -> str | None:
    """The `MMEJDConfig.autocast_dtype` that runs faster than float32 on `device`: "bfloat16"
    on a CUDA GPU that supports it or on a CPU with AVX512-BF16 or AMX instructions, else None
    (on a CPU without them bfloat16 is emulated and slower than float32)."""
    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else None
    # torch.cpu's private probes (torch 2.x); a torch without them claims nothing
    probes = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    if device == "cpu" and any(probe is not None and probe() for probe in probes):
        return "bfloat16"
    return None


def from_base(
    base: Any,
    processor: Any = None,
    label_words: list[str] | tuple[str, ...] = ("no", "yes"),
    labels: list[str] | tuple[str, ...] = SARCASM_LABELS,
    question: str = "is it sarcastic ?",
    trust_remote_code: bool = False,
    dtype: Any = None,
    **config_overrides: Any,
) -> MMEJDModel:
    """Build an `MMEJDModel` around a base VLM and its processor.

    Args:
        base: a `...ForConditionalGeneration` model, or a local folder / hub id to load one
            with `AutoModelForImageTextToText.from_pretrained`.
        processor: the base's processor, or a folder / hub id (default: the same as `base`).
        label_words: one verbalizer word per class ("no"/"yes" for sarcasm).
        labels: the class names, in label-id order.
        question: the task question of the prompt.
        trust_remote_code: when `base` or `processor` is a folder / hub id, let it run Python
            code of its own (a base architecture outside transformers). Off by default.
        dtype: the precision of the whole model, base, LoRA experts, heads and router alike
            (`torch.bfloat16`, `torch.float16` where the base supports it, or its name); None
            keeps the base's. Train it with `TrainingArguments(bf16=True)` / `fp16=True`.
        **config_overrides: any `MMEJDConfig` field (lora_rank, mode, prompt_template, ...).
            `image_less_rows` defaults to "text_only" (a row without an image gets no image
            tokens) where the base's layout allows it, else "stand_in".

    The processor is attached to the model (`model.processor`) and saved beside the weights.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    moved = sorted(set(config_overrides) & set(REMOVED_FIELDS))
    if moved:  # MMEJDConfig would drop them silently, as it does for a config.json saved before they moved
        raise ValueError("not MMEJDConfig fields any more: " + "; ".join(
            f"{name} (now {REMOVED_FIELDS[name]})" for name in moved) + ". Training knobs go to train() in an "
            "MMEJDTrainingConfig.")
    if isinstance(base, (str, os.PathLike)):
        source = os.fspath(base)
        base = AutoModelForImageTextToText.from_pretrained(source, trust_remote_code=trust_remote_code,
                                                           dtype=dtype)
        processor = processor if processor is not None else source
    if processor is None:
        raise ValueError("from_base needs the base model's processor (an object, folder or hub id).")
    if isinstance(processor, (str, os.PathLike)):
        processor = AutoProcessor.from_pretrained(os.fspath(processor), trust_remote_code=trust_remote_code)
    if len(label_words) != len(labels):
        raise ValueError(f"got {len(label_words)} label_words for {len(labels)} labels; give one word per label.")
    tokenizer = getattr(processor, "tokenizer", processor)
    if "image_less_rows" not in config_overrides:
        grid = base_family(getattr(base.config, "model_type", None)).layout is GRID
        config_overrides["image_less_rows"] = "text_only" if grid else "stand_in"
    config = MMEJDConfig(
        base_config=base.config,
        id2label=dict(enumerate(labels)),
        label_words=list(label_words),
        label_token_ids=label_token_ids(tokenizer, list(label_words)),
        question=question,
        **config_overrides,
    )
    if config.text_config.pad_token_id is None and tokenizer.pad_token_id is not None:
        config.text_config.pad_token_id = tokenizer.pad_token_id
    model = MMEJDModel(config, base_model=base)
    if dtype is not None:  # the experts and the router are built in float32: one precision for all
        model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    model.processor = processor
    return model
