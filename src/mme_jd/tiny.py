"""The embedded tiny default: a LLaVA-architecture VLM built entirely offline.

CLIP vision tower + Llama text model of a few layers, 32 px images in 8 px patches (16 image
tokens), and a word-level tokenizer built in code from a word list (by default the synthetic
benchmark's vocabulary and the prompt's words). `tiny_model()` wraps it into an `MMEJDModel`.

`pretrained_tiny_base()` / `pretrained_tiny_model()` give the same base pretrained on unimodal
yes/no questions of the synthetic world ("is text positive ?", "is image happy ?") on a
cue-free pool. The default one ships inside the package (`SHIPPED_DIR`: pretraining is not
bit-identical across thread counts, so a per-machine build gave other figures); other settings
are pretrained once and cached on disk (`$MME_JD_CACHE` or `~/.cache/mme_jd`); a random tiny base
cannot learn the synthetic incongruity task, the pretrained one reads both modalities.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
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


# ---------------------------------------------------------------------------- pretraining
#
# A randomly initialised tiny base cannot learn the synthetic incongruity task (label = text
# sentiment != image sentiment): it has never learnt to read either modality. As an MLLM is
# pretrained before it is fine-tuned, the tiny base is pretrained on UNIMODAL questions of the
# same world ("is text positive ?", "is image happy ?", answered "yes"/"no") on a cue-free
# pool, so it knows both sentiments but none of the benchmark's cue correlations.

#: (name, question, answer column) of the pretraining tasks; the answer is "yes" when the
#: column is 1 (positive text / happy image) and "no" when it is 0.
PRETRAIN_TASKS: tuple[tuple[str, str, str], ...] = (
    ("text", "is text positive ?", "text_sentiment"),
    ("image", "is image happy ?", "image_sentiment"),
)
PRETRAIN_TEMPLATE = "{image} {text} question : {question} answer :"
PRETRAIN_ANSWERS = ("no", "yes")
#: Bump when the pretraining recipe changes: it is part of the cache key.
PRETRAIN_VERSION = 1
DEFAULT_PRETRAIN_LR = 2e-3
DEFAULT_PRETRAIN_SEED = 12345
_REPORT_NAME = "pretraining_report.json"


def _pretraining_rows(num_rows: int, seed: int, image_size: int):
    """Cue-free synthetic rows without label noise (the sentiment columns are the answers)."""
    from .data.synthetic import make_synthetic_split

    return make_synthetic_split("train_cue_free", num_rows, label_noise=0.0, image_size=image_size, seed=seed)


def _encode_rows(processor, texts, images, questions, chunk: int = 2048) -> dict:
    """Encode every row ONCE per question: {"input_ids": [Q, N, L], "attention_mask": [Q, N, L],
    "pixel_values": [N, C, H, W]} (right-padded to the longest prompt of all rows)."""
    import torch
    import torch.nn.functional as F

    ids_per_question, masks_per_question, pixels = [], [], []
    for q, question in enumerate(questions):
        ids, masks = [], []
        for start in range(0, len(texts), chunk):
            prompts = [
                PRETRAIN_TEMPLATE.format(image="<image>", text=text, question=question).strip()
                for text in texts[start : start + chunk]
            ]
            encoded = processor(text=prompts, images=list(images[start : start + chunk]), return_tensors="pt",
                                padding=True)
            ids.append(encoded["input_ids"])
            masks.append(encoded["attention_mask"])
            if q == 0:
                pixels.append(encoded["pixel_values"])
        ids_per_question.append(ids)
        masks_per_question.append(masks)
    length = max(t.shape[1] for ids in ids_per_question for t in ids)
    pad = processor.tokenizer.pad_token_id
    if processor.tokenizer.padding_side != "right":
        raise ValueError("the tiny tokenizer is expected to pad on the right.")

    def stack(parts, value):
        return torch.cat([F.pad(t, (0, length - t.shape[1]), value=value) for t in parts])

    return {
        "input_ids": torch.stack([stack(ids, pad) for ids in ids_per_question]),
        "attention_mask": torch.stack([stack(masks, 0) for masks in masks_per_question]),
        "pixel_values": torch.cat(pixels),
    }


def _answer_logits(base, input_ids, attention_mask, pixel_values, answer_ids):
    """Next-token logits of the answer tokens at the last prompt position: [B, len(answer_ids)]."""
    import torch

    from .modeling.modeling_mme_jd import answer_positions

    hidden = base.model(
        input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values, use_cache=False,
        return_dict=True,
    ).last_hidden_state
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    answer_hidden = hidden[rows, answer_positions(attention_mask)]
    head = base.get_output_embeddings()
    logits = answer_hidden @ head.weight[answer_ids].T
    if getattr(head, "bias", None) is not None:
        logits = logits + head.bias[answer_ids]
    return logits.float()


def _batch(encoded: dict, task: "Any", rows: "Any") -> tuple:
    """Input tensors of (task, row) pairs, trimmed to the batch's longest prompt."""
    ids = encoded["input_ids"][task, rows]
    mask = encoded["attention_mask"][task, rows]
    length = int(mask.sum(dim=1).max())
    return ids[:, :length], mask[:, :length], encoded["pixel_values"][rows]


def _probe_accuracy(base, encoded: dict, targets, answer_ids, batch_size: int = 256) -> dict[str, float]:
    """Accuracy of the yes/no answer of each pretraining task on encoded rows."""
    import torch

    was_training = base.training
    base.eval()
    accuracies = {}
    count = targets.shape[1]
    with torch.no_grad():
        for task, (name, _, _) in enumerate(PRETRAIN_TASKS):
            correct = 0
            for start in range(0, count, batch_size):
                rows = torch.arange(start, min(count, start + batch_size))
                logits = _answer_logits(base, *_batch(encoded, task, rows), answer_ids)
                correct += int((logits.argmax(dim=1) == targets[task, rows]).sum())
            accuracies[name] = correct / count
    base.train(was_training)
    return accuracies


def zero_shot_sarcasm_accuracy(base, processor, num_rows: int = 2000, seed: int = 0, batch_size: int = 256) -> float:
    """Accuracy of `base` on the synthetic benchmark's `test_balanced` split (its default seed
    0), read zero-shot through `MMEJDModel`'s default prompt ("is it sarcastic ?", label words
    no/yes). The base is copied: the caller's model gets no LoRA layers."""
    import copy

    import torch

    from .base import from_base
    from .data.synthetic import make_synthetic_split
    from .modeling.counterfactual_mme_jd import call_processor

    image_size = int(base.config.vision_config.image_size)
    rows = make_synthetic_split("test_balanced", num_rows, image_size=image_size, seed=seed)
    model = from_base(copy.deepcopy(base), processor).eval()
    texts, images, labels = list(rows["text"]), list(rows["image"]), torch.tensor(list(rows["label"]))
    correct = 0
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            inputs = call_processor(processor, model.config, texts[start : start + batch_size],
                                    images[start : start + batch_size])
            logits = model(**inputs, mode="general").logits
            correct += int((logits.argmax(dim=1) == labels[start : start + batch_size]).sum())
    return correct / max(1, len(texts))


def pretrain_tiny_base(
    settings: TinySettings | None = None,
    steps: int = 2500,
    pool_size: int = 20000,
    batch_size: int = 64,
    lr: float = DEFAULT_PRETRAIN_LR,
    seed: int = DEFAULT_PRETRAIN_SEED,
    progress: bool = True,
    warmup_steps: int | None = None,
    weight_decay: float = 0.01,
    probe_rows: int = 1000,
    zero_shot_rows: int = 2000,
) -> tuple[Any, Any, dict]:
    """Pretrain a fresh tiny base (`build_tiny_base(settings=settings)`) on unimodal yes/no
    questions of the synthetic world, without the benchmark's cue correlations.

    Pool: `pool_size` rows of the `train_cue_free` generator (label_noise 0, seed `seed`; the
    benchmark's default seed is 0, so the pool shares no stream with it), each row asked both
    questions of `PRETRAIN_TASKS` ("is text positive ?" from `text_sentiment`, "is image
    happy ?" from `image_sentiment`) in the prompt `PRETRAIN_TEMPLATE`. The pool is encoded
    once. Loss: cross-entropy of the next-token logits of "no"/"yes" at the last prompt
    position. Full fine-tuning of the whole base (vision tower, projector, language model):
    AdamW, `warmup_steps` linear warm-up (default 4% of `steps`, at least 1) then cosine decay
    to 0, gradient norm clipped at 1. Each batch draws `batch_size` (row, question) pairs
    without replacement within an epoch over the 2·pool_size pairs.

    Returns (base in eval mode, processor, report). The report holds the hyper-parameters,
    `steps`, `seconds` (training loop), `seconds_total` (with pool encoding and probes),
    `initial_loss` / `final_loss` (mean of the first / last 50 steps), `loss_curve` (mean per
    100 steps), `probe_accuracy` and `probe_accuracy_before` ({"text", "image"} on
    `probe_rows` held-out cue-free rows of seed `seed + 1`) and `zero_shot_sarcasm_accuracy`
    (`zero_shot_sarcasm_accuracy` on `zero_shot_rows` rows of `test_balanced`; skipped when 0).
    """
    import math
    import time

    import torch
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    settings = settings or TinySettings()
    if steps < 1 or pool_size < 1 or batch_size < 1:
        raise ValueError(f"steps, pool_size and batch_size must be positive; got {steps}, {pool_size}, {batch_size}.")
    started = time.perf_counter()
    base, processor = build_tiny_base(settings=settings)
    tokenizer = processor.tokenizer
    answer_ids = torch.tensor([tokenizer.convert_tokens_to_ids(word) for word in PRETRAIN_ANSWERS])
    questions = [question for _, question, _ in PRETRAIN_TASKS]

    def encode(num_rows: int, rows_seed: int):
        rows = _pretraining_rows(num_rows, rows_seed, settings.image_size)
        encoded = _encode_rows(processor, list(rows["text"]), list(rows["image"]), questions)
        targets = torch.tensor([list(rows[column]) for _, _, column in PRETRAIN_TASKS], dtype=torch.long)
        if int(targets.max()) > 1:
            raise ValueError("pretraining expects 2-class sentiment columns (0 negative, 1 positive).")
        return encoded, targets

    pool, pool_targets = encode(pool_size, seed)
    probe, probe_targets = encode(probe_rows, seed + 1) if probe_rows else (None, None)
    encoding_seconds = time.perf_counter() - started
    before = _probe_accuracy(base, probe, probe_targets, answer_ids) if probe is not None else {}

    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(base.parameters(), lr=lr, weight_decay=weight_decay)
    warmup = max(1, round(0.04 * steps)) if warmup_steps is None else warmup_steps
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, steps)
    pairs = len(PRETRAIN_TASKS) * pool_size
    order = torch.randperm(pairs, generator=generator)
    cursor = 0
    losses: list[float] = []
    base.train()
    train_started = time.perf_counter()
    bar = tqdm(total=steps, desc="pretraining tiny base", disable=not progress, mininterval=1.0)
    for step in range(steps):
        if cursor + batch_size > pairs:
            order, cursor = torch.randperm(pairs, generator=generator), 0
        chosen = order[cursor : cursor + batch_size]
        cursor += batch_size
        task, rows = chosen // pool_size, chosen % pool_size
        ids, mask, pixels = _batch(pool, task, rows)
        logits = _answer_logits(base, ids, mask, pixels, answer_ids)
        loss = torch.nn.functional.cross_entropy(logits, pool_targets[task, rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(base.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"pretraining loss became {losses[-1]} at step {step}; lower lr ({lr}).")
        bar.update(1)
        if step % 50 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
    bar.close()
    seconds = time.perf_counter() - train_started
    base.eval()
    after = _probe_accuracy(base, probe, probe_targets, answer_ids) if probe is not None else {}
    window = min(50, len(losses))
    report: dict[str, Any] = {
        "version": PRETRAIN_VERSION,
        "settings": asdict(settings),
        "tasks": {name: question for name, question, _ in PRETRAIN_TASKS},
        "prompt_template": PRETRAIN_TEMPLATE,
        "steps": steps,
        "pool_size": pool_size,
        "batch_size": batch_size,
        "lr": lr,
        "warmup_steps": warmup,
        "weight_decay": weight_decay,
        "seed": seed,
        "torch_threads": torch.get_num_threads(),
        "seconds": round(seconds, 2),
        "seconds_encoding": round(encoding_seconds, 2),
        "initial_loss": sum(losses[:window]) / window,
        "final_loss": sum(losses[-window:]) / window,
        "loss_curve": [sum(losses[i : i + 100]) / len(losses[i : i + 100]) for i in range(0, len(losses), 100)],
        "probe_rows": probe_rows,
        "probe_accuracy_before": before,
        "probe_accuracy": after,
    }
    if zero_shot_rows:
        report["zero_shot_rows"] = zero_shot_rows
        report["zero_shot_sarcasm_accuracy"] = zero_shot_sarcasm_accuracy(base, processor, zero_shot_rows)
    report["seconds_total"] = round(time.perf_counter() - started, 2)
    return base, processor, report


def _pretraining_key(settings: TinySettings, steps: int, pool_size: int, batch_size: int, lr: float, seed: int) -> str:
    import hashlib

    words = hashlib.sha256(" ".join(default_vocabulary()).encode()).hexdigest()[:12]
    return settings_key(settings, kind="tiny-pretrained", version=PRETRAIN_VERSION, steps=steps,
                        pool_size=pool_size, batch_size=batch_size, lr=float(lr), pretrain_seed=seed,
                        vocabulary=words)


def default_cache_dir() -> str:
    """`$MME_JD_CACHE`, else `$XDG_CACHE_HOME/mme_jd`, else `~/.cache/mme_jd`."""

    if os.environ.get("MME_JD_CACHE"):
        return os.path.expanduser(os.environ["MME_JD_CACHE"])
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "mme_jd")


def pretrained_cache_path(
    settings: TinySettings | None = None,
    cache_dir: str | None = None,
    steps: int = 2500,
    pool_size: int = 20000,
    batch_size: int = 64,
    lr: float = DEFAULT_PRETRAIN_LR,
    seed: int = DEFAULT_PRETRAIN_SEED,
) -> str:
    """The cache folder of a pretrained tiny base: `<cache_dir>/tiny-pretrained-<key>`, the key
    hashing the settings, the pretraining hyper-parameters, the recipe version and the
    tokenizer's vocabulary."""

    key = _pretraining_key(settings or TinySettings(), steps, pool_size, batch_size, lr, seed)
    return os.path.join(os.fspath(cache_dir) if cache_dir is not None else default_cache_dir(),
                        f"tiny-pretrained-{key}")


def _is_complete(folder: str) -> bool:

    return all(os.path.isfile(os.path.join(folder, name)) for name in ("config.json", _REPORT_NAME))


def _publish(staging: str, folder: str, replace: bool = False) -> bool:
    """Move a complete staging folder to `folder` with one `os.rename`. Returns False (and
    removes the staging folder) when another process published `folder` first; with
    `replace` an existing folder is moved aside first and removed after."""
    import uuid

    if replace and os.path.exists(folder):
        aside = f"{folder}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(folder, aside)
        except OSError:
            aside = None
        if aside:
            shutil.rmtree(aside, ignore_errors=True)
    try:
        os.rename(staging, folder)
        return True
    except OSError:
        if not _is_complete(folder):
            shutil.rmtree(staging, ignore_errors=True)
            raise
        shutil.rmtree(staging, ignore_errors=True)  # another process won the race: use theirs
        return False


def _processor_for(settings: TinySettings):
    """The processor `build_tiny_base` makes for `settings` (without keeping its model)."""
    _, processor = build_tiny_base(settings=settings)
    return processor


def _processors_agree(loaded, built, settings: TinySettings) -> bool:
    """Whether two processors give identical inputs on a few synthetic rows."""
    import torch

    if loaded.tokenizer.get_vocab() != built.tokenizer.get_vocab():
        return False
    rows = _pretraining_rows(4, 0, settings.image_size)
    prompts = [PRETRAIN_TEMPLATE.format(image="<image>", text=t, question="is it sarcastic ?") for t in rows["text"]]
    images = list(rows["image"])
    a = loaded(text=prompts, images=images, return_tensors="pt", padding=True)
    b = built(text=prompts, images=images, return_tensors="pt", padding=True)
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def load_pretrained_tiny_base(folder: str, settings: TinySettings | None = None):
    """Load a saved tiny base and its processor. The processor is checked against the one
    built in code from `settings` (identical token ids and pixel values on sample rows); if
    it does not round-trip, the code-built one is used (its vocabulary is the same, as the
    cache key holds it)."""
    import logging

    from transformers import AutoModelForImageTextToText, LlavaProcessor

    settings = settings or TinySettings()
    base = AutoModelForImageTextToText.from_pretrained(folder, attn_implementation="eager").eval()
    built = _processor_for(settings)
    try:
        processor = LlavaProcessor.from_pretrained(folder)
        agree = _processors_agree(processor, built, settings)
    except Exception as error:  # a processor that cannot be loaded back is rebuilt in code
        logging.getLogger("mme_jd").warning("cannot load the tiny processor from %s (%s); rebuilding it.", folder, error)
        agree = False
    if not agree:
        if built.tokenizer.get_vocab() != _saved_vocabulary(folder, built):
            raise ValueError(f"the tokenizer saved in {folder} differs from the tiny vocabulary; rebuild the cache.")
        processor = built
    return base, processor


def _saved_vocabulary(folder: str, fallback) -> dict:
    import json

    path = os.path.join(folder, "tokenizer.json")
    if not os.path.isfile(path):
        return fallback.tokenizer.get_vocab()
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)["model"]["vocab"]


#: Pretrained tiny bases shipped inside the package (`tiny-pretrained-<key>` folders, read-only):
#: the default one is here, so `make demo` and the bench start from the same weights on every
#: machine without minutes of pretraining. `ship_pretrained_tiny_base` writes one.
SHIPPED_DIR = Path(__file__).resolve().parent / "pretrained"


def shipped_pretrained_path(settings: TinySettings | None = None, steps: int = 2500, pool_size: int = 20000,
                            batch_size: int = 64, lr: float = DEFAULT_PRETRAIN_LR,
                            seed: int = DEFAULT_PRETRAIN_SEED) -> Path | None:
    """The shipped folder of a pretrained tiny base with these settings, or None."""
    key = _pretraining_key(settings or TinySettings(), steps, pool_size, batch_size, lr, seed)
    folder = SHIPPED_DIR / f"tiny-pretrained-{key}"
    return folder if _is_complete(str(folder)) else None


def ship_pretrained_tiny_base(settings: TinySettings | None = None, **hyper: Any) -> Path:
    """Copy the cached pretrained tiny base (pretraining it first if needed) into the package
    (`SHIPPED_DIR`), with the sha256 of its weights file in `SHA256SUMS`. Maintainers run it
    (`python -m mme_jd.tiny --ship`) when the pretraining recipe or the vocabulary changes."""
    from .provenance import file_sha256

    pretrained_tiny_base(settings, progress=True, use_shipped=False, **hyper)
    source = Path(pretrained_cache_path(settings, None, **hyper))
    target = SHIPPED_DIR / source.name
    staging = SHIPPED_DIR / f".{source.name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    (staging / "SHA256SUMS").write_text(f"{file_sha256(staging / 'model.safetensors')}  model.safetensors\n")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    return target


def verify_shipped(folder: Path) -> None:
    """Raise ValueError when a shipped weights file does not match its recorded sha256."""
    from .provenance import file_sha256

    sums = folder / "SHA256SUMS"
    if not sums.is_file():
        return
    for line in sums.read_text().splitlines():
        digest, name = line.split()
        if file_sha256(folder / name) != digest:
            raise ValueError(f"the shipped file {folder / name} does not match its sha256 in {sums}; "
                             "reinstall mme-jd.")


def pretrained_tiny_base(
    settings: TinySettings | None = None,
    cache_dir: str | None = None,
    steps: int = 2500,
    pool_size: int = 20000,
    batch_size: int = 64,
    lr: float = DEFAULT_PRETRAIN_LR,
    seed: int = DEFAULT_PRETRAIN_SEED,
    rebuild: bool = False,
    progress: bool = True,
    use_shipped: bool = True,
    **pretrain_kwargs: Any,
):
    """The pretrained tiny base and its processor, from the cache or pretrained once.

    The cache folder is `pretrained_cache_path(...)` (`$MME_JD_CACHE` or `~/.cache/mme_jd`,
    `tiny-pretrained-<key>`); it holds the base (`save_pretrained`), the processor and
    `pretraining_report.json`. It is written into a temporary folder beside it and moved in
    with one `os.rename`; when another process wins the race, its folder is used. `rebuild`
    pretrains again and replaces the folder. `pretrain_kwargs` go to `pretrain_tiny_base`
    (they do not enter the cache key: probe_rows, zero_shot_rows, ...). Returns (base in eval
    mode, processor), always loaded from the folder.

    With `use_shipped` (the default) and no `rebuild`, a base shipped with the package for the
    same settings (`shipped_pretrained_path`) is loaded instead: the default one is shipped.
    """
    import json
    import uuid

    settings = settings or TinySettings()
    shipped = shipped_pretrained_path(settings, steps, pool_size, batch_size, lr, seed) if use_shipped else None
    if shipped is not None and not rebuild:
        verify_shipped(shipped)
        return load_pretrained_tiny_base(str(shipped), settings)
    folder = pretrained_cache_path(settings, cache_dir, steps, pool_size, batch_size, lr, seed)
    if rebuild or not _is_complete(folder):
        base, processor, report = pretrain_tiny_base(settings, steps=steps, pool_size=pool_size,
                                                     batch_size=batch_size, lr=lr, seed=seed, progress=progress,
                                                     **pretrain_kwargs)
        parent = os.path.dirname(folder)
        os.makedirs(parent, exist_ok=True)
        staging = os.path.join(parent, f".{os.path.basename(folder)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            base.save_pretrained(staging)
            processor.save_pretrained(staging)
            with open(os.path.join(staging, _REPORT_NAME), "w", encoding="utf-8") as handle:
                json.dump(report, handle, indent=2, sort_keys=True)
            _publish(staging, folder, replace=rebuild)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return load_pretrained_tiny_base(folder, settings)


def pretrained_tiny_report(settings: TinySettings | None = None, cache_dir: str | None = None, **hyper: Any) -> dict | None:
    """The pretraining report saved beside a cached (or, without `cache_dir`, shipped) base;
    None when there is none."""
    import json

    shipped = shipped_pretrained_path(settings, **hyper) if cache_dir is None else None
    folder = str(shipped) if shipped is not None else pretrained_cache_path(settings, cache_dir, **hyper)
    path = os.path.join(folder, _REPORT_NAME)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def is_pretrained_tiny_cached(settings: TinySettings | None = None, cache_dir: str | None = None, **hyper: Any) -> bool:
    """Whether `pretrained_tiny_base(settings, cache_dir, **hyper)` would load without training
    (from the cache, or from the package when the base is shipped)."""
    return shipped_pretrained_path(settings, **hyper) is not None or _is_complete(
        pretrained_cache_path(settings, cache_dir, **hyper))


def pretrained_tiny_model(
    settings: TinySettings | None = None,
    cache_dir: str | None = None,
    pretraining: dict[str, Any] | None = None,
    **config_overrides: Any,
):
    """An `MMEJDModel` on the pretrained tiny base (`pretrained_tiny_base`, cached), with the
    sarcasm labels and label words "no"/"yes" by default. `pretraining` holds keyword
    arguments of `pretrained_tiny_base` (steps, pool_size, lr, seed, rebuild, ...);
    `config_overrides` go to `from_base` (label_words, labels, question, any config field)."""
    from .base import from_base

    base, processor = pretrained_tiny_base(settings, cache_dir, **(pretraining or {}))
    return from_base(base, processor, **config_overrides)


def main(argv: list[str] | None = None) -> int:
    """`python -m mme_jd.tiny --ship`: pretrain the default tiny base (or take it from the
    cache) and ship it inside the package; `--rebuild` pretrains even when it is cached."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mme_jd.tiny", description=main.__doc__)
    parser.add_argument("--ship", action="store_true", help="copy the pretrained default base into the package")
    parser.add_argument("--rebuild", action="store_true", help="pretrain again even when the cache has it")
    parser.add_argument("--threads", type=int, default=1, help="torch threads while pretraining (default: 1)")
    cli = parser.parse_args(argv)
    import torch

    torch.set_num_threads(cli.threads)
    if cli.rebuild:
        pretrained_tiny_base(rebuild=True, use_shipped=False)
    if cli.ship:
        print(f"shipped {ship_pretrained_tiny_base()}")
    else:
        base, _ = pretrained_tiny_base(use_shipped=False)
        from .provenance import base_weights_sha256

        print(f"cached {pretrained_cache_path()}; weights sha256 {base_weights_sha256(base)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
