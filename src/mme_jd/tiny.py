"""The embedded tiny default: a LLaVA-architecture VLM built entirely offline.

CLIP vision tower + Llama text model of a few layers, 32 px images in 8 px patches (16 image
tokens), and a word-level tokenizer built in code from a word list (by default the synthetic
benchmark's vocabulary and the prompt's words). `tiny_model()` wraps it into an `MMEJDModel`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[MASK]", "<image>")
PROMPT_WORDS = ("question", "answer", ":", "?", "is", "it", "sarcastic", "text", "image", "positive",
                "happy", "sentiment", "what", "the", "yes", "no", "negative", "neutral")


@dataclass(frozen=True)
class TinySettings:
    """Sizes of the tiny base. The defaults are the prototype's (291k parameters)."""

    image_size: int = 32
    patch_size: int = 8
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    vision_hidden_size: int = 64
    seed: int = 0


def default_vocabulary(num_classes: int = 2) -> list[str]:
    """Words of the tiny tokenizer: the synthetic benchmark's words and the prompts' words."""
    from .data.synthetic import vocabulary

    words = set(vocabulary(num_classes)) | set(PROMPT_WORDS)
    if num_classes != 2:
        words |= set(vocabulary(2))
    else:
        try:
            words |= set(vocabulary(3))
        except Exception:  # the 3-class variant is optional for the vocabulary
            pass
    return sorted(words - set(SPECIAL_TOKENS))


def build_tokenizer(words: list[str]):
    """A word-level fast tokenizer (whitespace split) over `words` plus the special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    for word in words:
        vocab.setdefault(word, len(vocab))
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", mask_token="[MASK]",
        extra_special_tokens={"image_token": "<image>"},
    )


def build_tiny_base(words: list[str] | None = None, settings: TinySettings | None = None):
    """A randomly initialised tiny LLaVA and its processor. Returns (base_model, processor)."""
    import torch
    from transformers import (AutoModelForImageTextToText, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaProcessor)
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    settings = settings or TinySettings()
    words = default_vocabulary() if words is None else sorted(set(words) | set(PROMPT_WORDS))
    tokenizer = build_tokenizer(words)
    size = {"height": settings.image_size, "width": settings.image_size}
    image_processor = CLIPImageProcessorPil(size=size, crop_size=size, do_center_crop=False)
    tokens_per_image = (settings.image_size // settings.patch_size) ** 2
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=settings.patch_size,
        vision_feature_select_strategy="default", num_additional_image_tokens=1, image_token="<image>",
    )
    vision = CLIPVisionConfig(
        hidden_size=settings.vision_hidden_size, intermediate_size=2 * settings.vision_hidden_size,
        num_hidden_layers=settings.num_layers, num_attention_heads=settings.num_heads,
        image_size=settings.image_size, patch_size=settings.patch_size,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=settings.hidden_size, intermediate_size=settings.intermediate_size,
        num_hidden_layers=settings.num_layers, num_attention_heads=settings.num_heads,
        num_key_value_heads=settings.num_heads, max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1, vision_feature_select_strategy="default", image_seq_length=tokens_per_image,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(settings.seed)
    base = AutoModelForImageTextToText.from_config(config, attn_implementation="eager")
    return base, processor


def tiny_model(
    words: list[str] | None = None, settings: TinySettings | None = None, **config_overrides: Any
):
    """The embedded default MME-JD model on a random tiny LLaVA (sarcasm labels, "no"/"yes")."""
    from .base import from_base

    base, processor = build_tiny_base(words, settings)
    return from_base(base, processor, **config_overrides)


def settings_key(settings: TinySettings, **extra: Any) -> str:
    """A short stable key of settings, for cache folder names."""
    import hashlib
    import json

    payload = json.dumps({**asdict(settings), **extra}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]
