"""`multimodal-debias`: the MME-JD inference pipeline (image + text → label, with its strategy).

Hub remote code: imports only torch, transformers, the standard library and its sibling files,
so a saved model folder runs it without the `mme_jd` package:

    >>> # with the package installed (importing mme_jd registers the task)
    >>> pipe = transformers.pipeline("multimodal-debias", model="my-mme-jd")
    >>> # anywhere, from the folder's own code (config.json → custom_pipelines)
    >>> pipe = transformers.pipeline(model="my-mme-jd", trust_remote_code=True)
    >>> pipe({"image": "cat.png", "text": "what a lovely day"})
    {'label': 'sarcastic', 'score': 0.71, 'strategy': 'text', 'scores': {'sarcastic': 0.71, 'not_sarcastic': 0.29}}

A saved folder records the pipeline in `config.json` under `custom_pipelines` with the key
`REMOTE_PIPELINE_TASK` ("multimodal-debias-remote"), not "multimodal-debias": transformers
refuses a task named in `custom_pipelines` unless `trust_remote_code=True`, so a key equal to
the registered task would break `pipeline("multimodal-debias", model=folder)` for users of the
installed package. `pipeline(model=folder, trust_remote_code=True)` picks the key by itself.

Inputs
    a dict {"image": ..., "text": ...}, a list of such dicts, or `images=` / `text=` (one
    value each, or two lists of the same length). A dict may carry a "label" (a label name or
    id, checked against the model's labels and echoed as "true_label"); other keys are
    ignored. Images: a path, PIL image, numpy/torch array, bytes, file object or
    `datasets.Image` dict; text: a non-empty string (see `inputs_mme_jd` for every rule).
    An image of None is a text-only input, for a model with
    `config.image_less_rows == "text_only"` (`from_base`'s default on one-image layouts): it gets
    no image tokens, as such rows had in training, and its image counterfactual is the input
    itself (no patch to mask). A "stand_in" model refuses it: it was trained on a grey image.

Call parameters (also accepted by the constructor / `pipeline(...)` as defaults)
    mode: "general", "mid", "mctd" or "mme_jd" (default: `config.mode`).
    batch_size: inputs per forward pass (default 8). Results do not depend on it.
    top_k: keep the `top_k` most probable classes in "scores" (default: all), highest first.
    return_experts: add "experts" (every expert's class probabilities; mode "mme_jd" adds
        the router's "router_scores").
    explain: add "counterfactuals": the general expert's probabilities on the text and the
        image counterfactual, the masked words (positions over `text.split()`) and the masked
        image patches (indices over the row-major grid of image tokens, with the grid).
    errors: "raise" (default) or "report" (see "Bad input" below).

Output per input
    label, score (its probability), strategy, scores ({label: probability}); probabilities are
    the softmax of the model's final logits. `strategy` is the router's choice ("none",
    "image", "text", "both": `ROUTER_STRATEGIES`) in mode "mme_jd"; the modes without a
    router report their own name ("general", "mid", "mctd"), so a strategy is never mistaken
    for a routing decision.

Counterfactuals (mode "mid", `explain=True`, or `config.correction="linear"`)
    built by the same code as training: the text counterfactual by the config's
    `text_counterfactual` builder ("lexical"; "saliency" ranks words by the general expert's
    attention and falls back to "lexical" for a row whose tokens it cannot map to words;
    "swap" and "given" need training-time resources, a lexicon or dataset truth, so they
    fall back to "lexical"); image masks from `model.image_saliency(original,
    config.image_counterfactual)` → `top_token_masks(scores, config.image_mask_ratio)` →
    `apply_image_counterfactual` ("given" needs dataset boxes: falls back to "attention").
    Originals and counterfactuals come from ONE processor call (`build_triple`).

Bad input
    A bad input is never dropped silently: it is reported as "input <index>: <problem>",
    <index> counting the call's inputs from 0. Every input is first checked without decoding
    (its type and keys, its text and label, that an image file exists); images are decoded
    (corrupt files found) and prompt lengths checked batch by batch.
    errors="raise" (default): a `ValueError` listing every bad input found by the first
    check, else every bad input of the first batch that holds one; nothing is returned.
    errors="report": the good inputs are predicted and each bad one gets, in its place,
    {"error": "input <index>: <problem>", "label": None, "score": None, "strategy": None,
    "scores": {}}. Colour modes (L, RGBA, P, CMYK, ...) are converted and huge images shrunk
    instead of rejected; prompts longer than the language model's positions are rejected, and
    so are inputs whose logits come out NaN or infinite (corrupt weights, overflow): no label
    is made up for them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from transformers import AutoModel, AutoProcessor, Pipeline
from transformers.utils import logging

from .configuration_mme_jd import EXPERT_NAMES, MODES, ROUTER_STRATEGIES
from .counterfactual_mme_jd import (apply_image_counterfactual, build_triple, call_processor, image_token_grids,
                                    lexical_text_counterfactual, saliency_text_counterfactual, top_token_masks)
from .inputs_mme_jd import check_image_source, load_image, normalize_text, short_repr

logger = logging.get_logger(__name__)

PIPELINE_TASK = "multimodal-debias"
REMOTE_PIPELINE_TASK = "multimodal-debias-remote"
ERROR_POLICIES = ("raise", "report")
DEFAULT_BATCH_SIZE = 8
_PARAMETERS = ("mode", "top_k", "return_experts", "explain", "errors")


def custom_pipelines_entry() -> dict[str, dict]:
    """The `custom_pipelines` entry of a saved model's config.json (see the module docstring)."""
    return {
        REMOTE_PIPELINE_TASK: {
            "impl": f"{__name__.rsplit('.', 1)[-1]}.MultimodalDebiasPipeline",
            "pt": ["AutoModel"],
            "type": "multimodal",
        }
    }


def register_pipeline() -> None:
    """Register the `multimodal-debias` task with transformers' pipeline registry (idempotent)."""
    from transformers.pipelines import PIPELINE_REGISTRY

    current = PIPELINE_REGISTRY.supported_tasks.get(PIPELINE_TASK)
    if current is not None and current.get("impl") is MultimodalDebiasPipeline:
        return
    PIPELINE_REGISTRY.register_pipeline(
        PIPELINE_TASK, pipeline_class=MultimodalDebiasPipeline, pt_model=AutoModel, type="multimodal"
    )


class _BadInputs(ValueError):
    """Problems of some inputs of a chunk: {index: message}."""

    def __init__(self, problems: dict[int, str]):
        self.problems = dict(sorted(problems.items()))
        super().__init__("\n".join(self.problems.values()))


def _error_entry(message: str) -> dict[str, Any]:
    return {"error": message, "label": None, "score": None, "strategy": None, "scores": {}}


class MultimodalDebiasPipeline(Pipeline):
    """Classify (image, text) pairs with an MME-JD model; see the module docstring.

    Args:
        model: an `MMEJDModel` (from `mme_jd.from_base`, `AutoModel.from_pretrained` or
            `pipeline(...)`).
        processor: the base model's processor (default: `model.processor`, else loaded from
            the model's folder with `AutoProcessor.from_pretrained(folder)`).
        trust_remote_code: when the processor is loaded from the model's folder, let the folder
            run a processor class of its own (`auto_map`). Off by default: an MME-JD folder's
            processor is a standard transformers class.
        mode, top_k, return_experts, explain, errors, batch_size: call defaults.
    """

    _load_processor = None  # optional: falls back to model.processor / the model's folder
    _load_tokenizer = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_video_processor = False

    def __init__(self, model, processor: Any = None, trust_remote_code: bool = False, **kwargs: Any):
        if processor is None:
            processor = getattr(model, "processor", None)
        if processor is None:
            processor = _load_model_processor(model, trust_remote_code=trust_remote_code)
        super().__init__(model=model, processor=processor, **kwargs)
        self.model.eval()
        if getattr(self.model, "processor", None) is None:
            self.model.processor = processor  # saved beside the weights by model.save_pretrained
        self.tokenizer = getattr(processor, "tokenizer", self.tokenizer)
        config = self.model.config
        markers = {config.family.image_placeholder, getattr(processor, "image_token", None),
                   getattr(self.tokenizer, "image_token", None)}
        self._image_markers = tuple(sorted(m for m in markers if isinstance(m, str) and m))

    # ------------------------------------------------------------------ parameters
    def _sanitize_parameters(self, mode=None, top_k=None, return_experts=None, explain=None, errors=None,
                             **unknown):
        if unknown:
            raise ValueError(
                f"unknown argument(s) {sorted(unknown)} for the multimodal-debias pipeline; it takes "
                f"{list(_PARAMETERS)}, batch_size, images= and text=."
            )
        params: dict[str, Any] = {}
        if mode is not None:
            if mode not in MODES:
                raise ValueError(f"mode={mode!r} is not a debiasing mode; choose one of {list(MODES)}.")
            params["mode"] = mode
        if top_k is not None:
            if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
                raise ValueError(f"top_k={top_k!r} must be a positive integer (or None for every class).")
            params["top_k"] = top_k
        for name, value in (("return_experts", return_experts), ("explain", explain)):
            if value is not None:
                if not isinstance(value, bool):
                    raise ValueError(f"{name}={value!r} must be True or False.")
                params[name] = value
        if errors is not None:
            if errors not in ERROR_POLICIES:
                raise ValueError(f"errors={errors!r}; choose one of {list(ERROR_POLICIES)}.")
            params["errors"] = errors
        preprocess = {k: params[k] for k in ("mode", "explain", "errors") if k in params}
        forward = {k: params[k] for k in ("mode", "return_experts", "explain") if k in params}
        postprocess = {k: params[k] for k in ("mode", "top_k", "return_experts", "explain") if k in params}
        return preprocess, forward, postprocess

    def _settings(self, call_params: dict) -> dict[str, Any]:
        preprocess, forward, postprocess = self._sanitize_parameters(**call_params)
        settings = {"mode": self.model.config.mode, "top_k": None, "return_experts": False, "explain": False,
                    "errors": "raise"}
        for part in (self._preprocess_params, self._forward_params, self._postprocess_params,
                     preprocess, forward, postprocess):
            settings.update(part)
        return settings

    # ------------------------------------------------------------------ call
    def __call__(self, inputs: Any = None, *, images: Any = None, text: Any = None, batch_size: int | None = None,
                 progress_callback: Any = None, **kwargs: Any):
        """Classify one input (returns a dict) or a list of inputs (returns a list of dicts).

        Args:
            inputs: {"image": ..., "text": ...} or a list of them.
            images, text: instead of `inputs`: one image and one text, or two equal-length lists.
            batch_size: inputs per forward pass (default: the constructor's, else 8).
            progress_callback: called as `progress_callback(done, total)` after each batch.
            **kwargs: mode, top_k, return_experts, explain, errors (see the module docstring).
        """
        settings = self._settings(kwargs)
        batch_size = self._batch_size if batch_size is None else batch_size
        batch_size = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be a positive integer.")
        raw, single = _gather(inputs, images, text)
        total = len(raw)
        results: list[dict | None] = [None] * total
        # 1. cheap checks of every input (types, text, label, that image files exist) before any work
        problems: dict[int, str] = {}
        for index, item in enumerate(raw):
            try:
                self._precheck(index, item)
            except ValueError as error:
                problems[index] = str(error)
        if problems and settings["errors"] == "raise":
            raise _bad_inputs_error(problems, total)
        for index, message in problems.items():
            results[index] = _error_entry(message)
        pending = [index for index in range(total) if index not in problems]
        # 2. per batch: decode the images, build the inputs, run the model
        done = len(problems)
        for start in range(0, len(pending), batch_size):
            chunk, bad = [], {}
            for index in pending[start : start + batch_size]:
                try:
                    chunk.append((index, self._check_item(index, raw[index])))
                except ValueError as error:
                    bad[index] = str(error)
            while True:
                if bad and settings["errors"] == "raise":
                    raise _bad_inputs_error(bad, total)
                for index, message in bad.items():
                    results[index] = _error_entry(message)
                chunk = [(index, item) for index, item in chunk if index not in bad]
                if not chunk:
                    break
                try:
                    outputs = self._run_chunk(chunk, settings)
                except _BadInputs as error:
                    bad = error.problems
                    continue
                for (index, _), output in zip(chunk, outputs):
                    results[index] = output
                break
            done += len(pending[start : start + batch_size])
            if progress_callback is not None:
                progress_callback(done, total)
        return results[0] if single else results

    def _run_chunk(self, chunk: list[tuple[int, dict]], settings: dict) -> list[dict]:
        model_inputs = self.preprocess(chunk, mode=settings["mode"], explain=settings["explain"])
        model_outputs = self.forward(model_inputs, mode=settings["mode"], return_experts=settings["return_experts"],
                                     explain=settings["explain"])
        _check_finite(chunk, model_outputs["logits"])
        outputs = self.postprocess(model_outputs, mode=settings["mode"], top_k=settings["top_k"],
                                   return_experts=settings["return_experts"], explain=settings["explain"])
        for (_, item), output in zip(chunk, outputs):
            if item["label"] is not None:
                output["true_label"] = self.model.config.id2label[item["label"]]
        return outputs

    # ------------------------------------------------------------------ checks
    def _precheck(self, index: int, item: Any) -> None:
        """Checks that need no decoding: the input's shape, its text and label, its image source."""
        if not isinstance(item, dict):
            raise ValueError(
                f"input {index}: expected a dict {{'image': ..., 'text': ...}}, got {type(item).__name__}."
            )
        missing = [key for key in ("image", "text") if key not in item]
        if missing:
            raise ValueError(
                f"input {index}: missing {' and '.join(repr(k) for k in missing)}; each input is "
                "{'image': ..., 'text': ...}."
            )
        if item["image"] is None and self.model.config.image_less_rows != "text_only":
            raise ValueError(
                f"input {index}: image is None; give a file path, a PIL image or an array. This model reads rows "
                f"without an image as a grey stand-in (config.image_less_rows={self.model.config.image_less_rows!r}), "
                "so it takes text-only input only from the data loaders, which say so; a model built with "
                "image_less_rows='text_only' takes image None here."
            )
        normalize_text(item["text"], index, forbidden=self._image_markers)
        self._check_label(item.get("label"), index)
        if item["image"] is not None:
            check_image_source(item["image"], index)

    def _check_item(self, index: int, item: Any) -> dict:
        """The input, normalised ({"image": RGB PIL, "text": str, "label": int | None}), or a
        ValueError naming the index and the problem."""
        self._precheck(index, item)
        image = None if item["image"] is None else load_image(item["image"], index=index)  # None: text only
        return {"image": image, "text": item["text"],
                "label": self._check_label(item.get("label"), index)}

    def _check_label(self, value: Any, index: int) -> int | None:
        """A given label (name or id) as an id of the model's labels; None when not given."""
        if value is None:
            return None
        names = {str(name): int(i) for i, name in self.model.config.id2label.items()}
        count = len(names)
        if isinstance(value, str):
            if value in names:
                return names[value]
            digits = value.strip()
            # isdecimal (not isdigit: int("²") fails); the length bound keeps int() from huge strings
            if digits.isdecimal() and len(digits) <= 18 and int(digits) < count:
                return int(digits)
        elif isinstance(value, int) and not isinstance(value, bool) and 0 <= value < count:
            return int(value)
        raise ValueError(
            f"input {index}: label {short_repr(value)} is not one of the model's labels {list(names)} "
            f"(or an id 0-{count - 1})."
        )

    def _check_lengths(self, chunk: list[tuple[int, dict]], *parts: dict) -> None:
        limit = getattr(self.model.config.text_config, "max_position_embeddings", None)
        if not limit:
            return
        problems = {}
        batch = len(chunk)
        for part in parts:
            lengths = part["attention_mask"].sum(dim=1).tolist()
            for row, length in enumerate(lengths):
                index = chunk[row % batch][0]
                if length > limit and index not in problems:
                    problems[index] = (
                        f"input {index}: the prompt is {int(length)} tokens (image tokens included), more than "
                        f"the model's {limit} positions; shorten the text."
                    )
        if problems:
            raise _BadInputs(problems)

    # ------------------------------------------------------------------ steps
    def _needs_counterfactuals(self, mode: str, explain: bool) -> bool:
        return mode == "mid" or explain or (mode == "mme_jd" and self.model.config.correction == "linear")

    def preprocess(self, chunk: list[tuple[int, dict]], mode: str = "mme_jd", explain: bool = False) -> dict:
        """Model inputs of a chunk of checked inputs: originals only, or originals and both
        counterfactuals from one processor call (`build_triple`)."""
        config = self.model.config
        texts = [item["text"] for _, item in chunk]
        images = [item["image"] for _, item in chunk]
        if not self._needs_counterfactuals(mode, explain):
            original = dict(call_processor(self.processor, config, texts, images))
            self._check_lengths(chunk, original)
            return {"original": original}
        built, builder = self._text_counterfactuals(chunk, texts, images)
        triple = build_triple(self.processor, config, texts, images, [cf for cf, _ in built])
        self._check_lengths(chunk, triple["original"], triple["text_counterfactual"])
        return {
            **triple,
            "text_counterfactual_texts": [cf for cf, _ in built],
            "text_mask_positions": [positions for _, positions in built],
            "text_builders": builder,
            "texts": texts,
        }

    def _text_counterfactuals(self, chunk, texts, images) -> tuple[list[tuple[str, list[int]]], list[str]]:
        """(counterfactual text, masked word positions) per text, and the builder used per text."""
        config = self.model.config
        if config.text_counterfactual != "saliency":
            return [lexical_text_counterfactual(t, config.mask_word) for t in texts], ["lexical"] * len(texts)
        original = dict(call_processor(self.processor, config, texts, images))
        self._check_lengths(chunk, original)
        scores = self._word_scores(texts, original)
        built, builders = [], []
        for text, word_scores in zip(texts, scores):
            if word_scores is None:
                built.append(lexical_text_counterfactual(text, config.mask_word))
                builders.append("lexical")
            else:
                built.append(saliency_text_counterfactual(text, word_scores, config.text_mask_ratio, config.mask_word))
                builders.append("saliency")
        return built, builders

    def _word_scores(self, texts: list[str], original: dict) -> list[list[float] | None]:
        """Per-word attention of the general expert's answer position (the `saliency` builder,
        `saliency_word_scores`); None for a row whose tokens cannot be mapped to its words
        (lexical fallback), with one warning."""
        scores = saliency_word_scores(self.model, self._on_device(original), texts, self.tokenizer)
        if any(row is None for row in scores):
            logger.warning("text_counterfactual='saliency': cannot map tokens to words for this tokenizer; "
                           "using the lexical builder for those rows.")
        return scores

    def _on_device(self, inputs: dict) -> dict:
        """Inputs on the model's device, floating tensors in the model's dtype."""
        dtype = self.model.dtype
        moved = {}
        for key, value in inputs.items():
            if isinstance(value, dict):
                moved[key] = self._on_device(value)
            elif torch.is_tensor(value):
                value = value.to(self.device)
                moved[key] = value.to(dtype) if value.is_floating_point() else value
            else:
                moved[key] = value
        return moved

    def _forward(self, model_inputs: dict, mode: str = "mme_jd", return_experts: bool = False,
                 explain: bool = False) -> dict:
        model = self.model
        config = model.config
        original = self._on_device(model_inputs["original"])
        text_cf = image_cf = masks = None
        if "text_counterfactual" in model_inputs:
            text_cf = self._on_device(model_inputs["text_counterfactual"])
            saliency, _ = model.image_saliency(original, _image_builder(config))
            masks = top_token_masks(saliency, config.image_mask_ratio)
            image_cf = apply_image_counterfactual(config, self._on_device(model_inputs["image_counterfactual"]), masks)
        uses_cf = mode == "mid" or (mode == "mme_jd" and config.correction == "linear") or (
            explain and mode in ("general", "mctd"))
        out = model(**original, text_counterfactual=text_cf if uses_cf else None,
                    image_counterfactual=image_cf if uses_cf else None, mode=mode,
                    return_experts=return_experts and mode == "mme_jd")
        result: dict[str, Any] = {"logits": out.logits, "strategy": out.strategy}
        if explain:
            text_logits, image_logits = out.text_counterfactual_logits, out.image_counterfactual_logits
            if text_logits is None or image_logits is None:
                cf_out = model(**original, text_counterfactual=text_cf, image_counterfactual=image_cf, expert="general")
                text_logits, image_logits = cf_out.text_counterfactual_logits, cf_out.image_counterfactual_logits
            result.update(
                text_counterfactual_logits=text_logits, image_counterfactual_logits=image_logits,
                image_masks=[m.nonzero().flatten() for m in masks],
                image_grids=[list(grid) for grid in image_token_grids(config, original)],
                text_counterfactual_texts=model_inputs["text_counterfactual_texts"],
                text_mask_positions=model_inputs["text_mask_positions"],
                text_builders=model_inputs["text_builders"], texts=model_inputs["texts"],
                image_builder=_image_builder(config),
            )
        if return_experts:
            if mode == "mme_jd":
                result["experts"] = {name: getattr(out, f"{name}_logits") for name in EXPERT_NAMES}
                result["router_logits"] = out.router_logits
            else:
                result["experts"] = {name: model.expert_forward(name, original)[0] for name in EXPERT_NAMES}
        return result

    def postprocess(self, model_outputs: dict, mode: str = "mme_jd", top_k: int | None = None,
                    return_experts: bool = False, explain: bool = False) -> list[dict]:
        config = self.model.config
        names = [config.id2label[i] for i in range(len(config.id2label))]

        def scores_of(logits_row: torch.Tensor, limit: int | None = None) -> dict[str, float]:
            probs = logits_row.float().softmax(dim=-1).tolist()
            order = sorted(range(len(probs)), key=lambda i: (-probs[i], i))
            return {names[i]: float(probs[i]) for i in order[: limit or len(order)]}

        outputs = []
        logits = model_outputs["logits"]
        for row in range(logits.shape[0]):
            scores = scores_of(logits[row])
            label = next(iter(scores))
            if mode == "mme_jd" and model_outputs["strategy"] is not None:
                strategy = ROUTER_STRATEGIES[int(model_outputs["strategy"][row])]
            else:
                strategy = mode
            entry: dict[str, Any] = {"label": label, "score": scores[label], "strategy": strategy,
                                     "scores": dict(list(scores.items())[: top_k or len(scores)])}
            if return_experts:
                experts = model_outputs["experts"]
                entry["experts"] = {name: scores_of(value[row], top_k) for name, value in experts.items()}
                if "router_logits" in model_outputs:
                    router = model_outputs["router_logits"][row].float().softmax(dim=-1).tolist()
                    entry["router_scores"] = dict(zip(ROUTER_STRATEGIES, (float(p) for p in router)))
            if explain:
                words = model_outputs["texts"][row].split()
                positions = list(model_outputs["text_mask_positions"][row])
                entry["counterfactuals"] = {
                    "text": {
                        "builder": model_outputs["text_builders"][row],
                        "text": model_outputs["text_counterfactual_texts"][row],
                        "masked_word_positions": positions,
                        "masked_words": [words[p] for p in positions],
                        "scores": scores_of(model_outputs["text_counterfactual_logits"][row], top_k),
                    },
                    "image": {
                        "builder": model_outputs["image_builder"],
                        "masked_patches": [int(i) for i in model_outputs["image_masks"][row].tolist()],
                        "grid": model_outputs["image_grids"][row],
                        "scores": scores_of(model_outputs["image_counterfactual_logits"][row], top_k),
                    },
                }
            outputs.append(entry)
        return outputs

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Save the model (weights, config with `auto_map` and `custom_pipelines`, the remote
        code including this file) and the processor, atomically per file (see
        `MMEJDModel.save_pretrained`)."""
        self.model.save_pretrained(save_directory, processor=self.processor, **kwargs)


def _find(sequence: list[int], pattern: list[int]) -> int:
    """Start of the first occurrence of `pattern` in `sequence` (-1 when absent)."""
    if not pattern:
        return -1
    first = pattern[0]
    for start in range(len(sequence) - len(pattern) + 1):
        if sequence[start] == first and sequence[start : start + len(pattern)] == pattern:
            return start
    return -1


def _word_of_token(bounds: list[tuple[int, int]], start: int, end: int) -> int | None:
    """The word (`bounds`: its characters [start, end) per word) of a token whose characters
    are [start, end): the first word it overlaps; for a token of spaces only (byte-level
    BPE's "Ġ", SentencePiece's "▁" before a rare word), the word it marks the start of; None
    for an empty span or spaces after the last word."""
    if end <= start:
        return None
    overlapped = [index for index, (word_start, word_end) in enumerate(bounds) if start < word_end and end > word_start]
    if overlapped:
        return overlapped[0]
    return next((index for index, (word_start, _) in enumerate(bounds) if word_start >= end), None)


def _text_tokenizations(text: str, words: list[str], tokenizer: Any
                        ) -> Iterator[tuple[list[int], list[int | None]]]:
    """Ways the text's tokens may stand in a prompt, most exact first: (token ids, the index of
    each token's word, None for a token of no word).

    With a fast tokenizer, the text alone and after a space (tokenizers that mark word starts,
    such as byte-level BPE, tokenize a word after a space differently), each token given to
    its word by its character offsets (`_word_of_token`). Last, for tokenizers without
    offsets, each word tokenized alone after a space."""
    if getattr(tokenizer, "is_fast", False):
        bounds, position = [], 0
        for word in words:
            position = text.index(word, position)
            bounds.append((position, position + len(word)))
            position += len(word)
        for prefix in ("", " "):
            encoded = tokenizer(prefix + text, add_special_tokens=False, return_offsets_mapping=True)
            owners = [_word_of_token(bounds, start - len(prefix), end - len(prefix))
                      for start, end in encoded["offset_mapping"]]
            yield list(encoded["input_ids"]), owners
    pieces = [tokenizer(" " + word, add_special_tokens=False)["input_ids"] for word in words]
    yield [t for piece in pieces for t in piece], [index for index, piece in enumerate(pieces) for _ in piece]


def word_token_spans(input_ids: Sequence[int], text: str, tokenizer: Any) -> list[list[int]] | None:
    """For each word of `text.split()`, the positions in `input_ids` (one prompt's token ids) of
    the tokens that make it up; None when the text's tokens are not found in the prompt (a
    tokenizer that changes them in context).

    The one token-to-word mapper: the pipeline's `saliency` builder and the evaluation's
    counterfactual quality (`mme_jd.evaluation.quality`) both use it. The text is tokenized on
    its own (`_text_tokenizations`) and that token sequence is looked up in the prompt (its
    first occurrence: before `{text}` the prompt holds the image tokens). With the tiny
    word-level tokenizer one token is one word; WordPiece and byte-level BPE split a word into
    several."""
    words = text.split()
    if not words:
        return []
    ids = [int(i) for i in input_ids]
    for tokens, owners in _text_tokenizations(text, words, tokenizer):
        at = _find(ids, tokens)
        if at < 0:
            continue
        spans: list[list[int]] = [[] for _ in words]
        for offset, index in enumerate(owners):
            if index is not None:
                spans[index].append(at + offset)
        return spans
    return None


def token_word_scores(input_ids: torch.Tensor, token_scores: torch.Tensor, texts: Sequence[str], tokenizer: Any
                      ) -> list[list[float] | None]:
    """Per row, one score per word of the text: the sum of its tokens' scores (`input_ids` and
    `token_scores` are [B, L], summed in float64); None for a row `word_token_spans` cannot map."""
    token_scores = token_scores.detach().cpu().double()
    scores: list[list[float] | None] = []
    for row, text in enumerate(texts):
        spans = word_token_spans(input_ids[row].tolist(), text, tokenizer)
        scores.append(None if spans is None else [float(token_scores[row, span].sum()) for span in spans])
    return scores


def saliency_word_scores(model: Any, inputs: dict, texts: Sequence[str], tokenizer: Any) -> list[list[float] | None]:
    """The `saliency` text builder's word scores: the general expert's attention from the answer
    position (`MMEJDModel.text_token_saliency`) summed over each word's tokens, for the prompts
    `inputs` (on the model's device) made of `texts`; None for a row that cannot be mapped."""
    with torch.no_grad():
        token_scores, _ = model.text_token_saliency(inputs)
    return token_word_scores(inputs["input_ids"], token_scores, texts, tokenizer)


def _image_builder(config) -> str:
    """The image-counterfactual builder used at inference ("given" needs dataset boxes)."""
    return config.image_counterfactual if config.image_counterfactual in ("attention", "gradient") else "attention"


def _load_model_processor(model, trust_remote_code: bool = False) -> Any:
    """The processor saved beside a model loaded from a folder or the Hub. The folder's own
    processor code (`auto_map`) runs only with `trust_remote_code=True`: the caller's consent."""
    source = getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", None)
    if not source:
        raise ValueError(
            "the model has no processor: pass processor= (the base model's processor) or build the model with "
            "mme_jd.from_base, which attaches it."
        )
    try:
        return AutoProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "custom code" in str(error) and not trust_remote_code:
            reason = ("its processor is Python code shipped in that folder (auto_map), which runs only with the "
                      "caller's consent: inspect it and pass trust_remote_code=True to run it")
        raise ValueError(f"cannot load the processor saved with the model at {source!r}: {reason}; "
                         "or pass processor=.") from None


def _gather(inputs: Any, images: Any, text: Any) -> tuple[list[Any], bool]:
    """The call's inputs as a list, and whether the call was for a single input."""
    if inputs is not None and (images is not None or text is not None):
        raise ValueError("give either inputs ({'image': ..., 'text': ...} or a list) or images= and text=, not both.")
    if inputs is None:
        if images is None and text is None:
            raise ValueError("no input: give {'image': ..., 'text': ...}, a list of them, or images= and text=.")
        many_images, many_texts = isinstance(images, (list, tuple)), isinstance(text, (list, tuple))
        if not many_images and not many_texts:
            return [{"image": images, "text": text}], True
        if many_images != many_texts:
            raise ValueError("images= and text= must both be single values or both lists (one text per image).")
        if len(images) != len(text):
            raise ValueError(f"got {len(images)} images for {len(text)} texts; give one text per image.")
        return [{"image": i, "text": t} for i, t in zip(images, text)], False
    if isinstance(inputs, dict):
        return [inputs], True
    if isinstance(inputs, (list, tuple)):
        return list(inputs), False
    raise ValueError(
        f"inputs must be a dict {{'image': ..., 'text': ...}} or a list of them, got {type(inputs).__name__}."
    )


def _check_finite(chunk: list[tuple[int, dict]], logits: torch.Tensor) -> None:
    """Raise `_BadInputs` for the rows whose logits are NaN or infinite: their softmax has no
    argmax, and reporting label 0 with a NaN score would be a made-up prediction."""
    finite = torch.isfinite(logits.float()).all(dim=-1).tolist()
    problems = {
        index: (
            f"input {index}: the model's logits are not finite (NaN or inf), so there is no prediction; if every "
            "input fails this way the model's weights are corrupt: retrain or re-download the model."
        )
        for (index, _), ok in zip(chunk, finite) if not ok
    }
    if problems:
        raise _BadInputs(problems)


def _bad_inputs_error(problems: dict[int, str], total: int) -> ValueError:
    lines = [problems[i] for i in sorted(problems)]
    head = f"{len(lines)} of {total} inputs are invalid" if len(lines) > 1 else lines[0]
    return ValueError(head if len(lines) == 1 else head + ":\n" + "\n".join(lines))


__all__ = ["MultimodalDebiasPipeline", "PIPELINE_TASK", "REMOTE_PIPELINE_TASK", "custom_pipelines_entry",
           "register_pipeline", "saliency_word_scores", "token_word_scores", "word_token_spans"]
