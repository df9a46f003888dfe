"""Counterfactual quality where the core is known (METHOD §6): precision and recall of the
masked words and image patches of each counterfactual builder against the truth.

On the synthetic benchmark the truth is exact: `core_word_positions` (the one sentiment word,
indexing `text.split()`) and `core_box` (the glyph's bounding box, turned into image-token masks
by `boxes_to_token_masks`). `counterfactual_quality` runs the builders of
`mme_jd.modeling.counterfactual_mme_jd` on rows of such a dataset and scores their masks with
`mme_jd.evaluation.diagnostics.mask_quality`, beside a random control that masks as many
positions at random.

Text builders
    lexical            every content word (stop words and social-media context stay)
    swap               the lexicon's sentiment words (`mme_jd.data.lexicon.load_lexicon()`)
    given              the truth itself (a sanity check: precision = recall = 1)
    saliency           the top `text_mask_ratio` words by the general expert's attention
                       (`MMEJDModel.text_token_saliency`, token scores summed per word by the
                       pipeline's mapper, `mme_jd.modeling.pipeline_mme_jd.saliency_word_scores`)
    saliency_gradient  the same with |gradient × input| of the predicted class logit w.r.t. the
                       text token embeddings (summed over the embedding dimension)
    random             as many words as `lexical` masks, drawn at random
The word-ranking builders (`saliency`, `saliency_gradient`, and `random` as their control) also
get `ranking`: how often the top-1 / top-2 words hold a core word, and, among rows holding a
text cue token (`#irony`, or the 3-class `#fail` / `#meh` / `#winning`), how often they hold it.

Image builders (masks over image tokens, i.e. patches)
    attention / gradient  `MMEJDModel.image_saliency` scores; the top `image_mask_ratio` tokens
                          (`top_token_masks`) and the top-k tokens for each k of `top_k`
    given                 the truth itself
    random                as many tokens as the builders above, drawn at random
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from .diagnostics import mask_quality, to_builtin

__all__ = [
    "TEXT_BUILDERS",
    "attention_word_scores",
    "IMAGE_BUILDERS",
    "counterfactual_quality",
    "format_quality",
]

TEXT_BUILDERS = ("lexical", "swap", "given", "saliency", "saliency_gradient", "random")
IMAGE_BUILDERS = ("attention", "gradient", "given", "random")
_RANKED_TEXT = ("saliency", "saliency_gradient", "random")


# ---------------------------------------------------------------------------- words ↔ tokens


def _mapped(scores: list[list[float] | None], texts: Sequence[str]) -> list[list[float]]:
    """Per-word scores of every row, or a `ValueError` naming the first text whose tokens the
    mapper could not find in its prompt (the pipeline falls back to the lexical builder for
    such a row; a figure of the `saliency` builder must not mix builders)."""
    for row, text in zip(scores, texts):
        if row is None:
            raise ValueError(
                f"the tokens of the text {text!r} are not found in the prompt's input_ids; the tokenizer changes "
                "them in context (give word scores another way)."
            )
    return scores  # type: ignore[return-value]


def attention_word_scores(model: Any, inputs: dict, texts: Sequence[str], tokenizer: Any) -> list[list[float]]:
    """The `saliency` text builder's word scores, as the pipeline computes them
    (`mme_jd.modeling.pipeline_mme_jd.saliency_word_scores`), for the prompts `inputs` made of
    `texts` (on the model's device). Raises `ValueError` for a row that cannot be mapped."""
    from ..modeling.pipeline_mme_jd import saliency_word_scores

    return _mapped(saliency_word_scores(model, inputs, texts, tokenizer), texts)


# ---------------------------------------------------------------------------- helpers


def _batches(dataset: Any, batch_size: int) -> Iterator[dict[str, list]]:
    """Column dicts of `batch_size` rows from a `datasets.Dataset` or a list of row dicts."""
    if hasattr(dataset, "column_names") and hasattr(dataset, "select"):
        for start in range(0, len(dataset), batch_size):
            chunk = dataset[start : start + batch_size]
            yield {key: list(value) for key, value in chunk.items()}
        return
    rows = list(dataset)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        yield {key: [row.get(key) for row in chunk] for key in chunk[0]}


def _text_gradient_scores(model: Any, inputs: dict) -> Any:
    """|gradient × input| per token: the gradient of the general expert's predicted class logit
    w.r.t. the text token embeddings, times the embeddings, summed over the embedding dims."""
    import torch

    layer = model.base_model_with_experts.get_input_embeddings()
    captured: dict[str, torch.Tensor] = {}

    def hook(module, args, output):
        output = output.detach().float().requires_grad_(True)
        captured["embeddings"] = output
        return output

    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits, _, _ = model.expert_forward("general", inputs)
            logits.gather(1, logits.argmax(1, keepdim=True)).sum().backward()
    finally:
        handle.remove()
    embeddings = captured["embeddings"]
    scores = (embeddings.grad * embeddings).sum(dim=-1).abs().detach()
    return scores * inputs["attention_mask"].to(scores.dtype)


def _top_k_masks(scores: Sequence[Any], k: int) -> list[np.ndarray]:
    masks = []
    for score in scores:
        score = np.asarray(score.detach().float().cpu() if hasattr(score, "detach") else score, dtype=np.float64)
        score = score.reshape(-1)
        mask = np.zeros(score.size, dtype=bool)
        mask[np.argsort(-score, kind="stable")[: min(k, score.size)]] = True
        masks.append(mask)
    return masks


def _row_rng(seed: int, purpose: int, row: int) -> np.random.Generator:
    """A random stream per (seed, purpose, row): the controls do not depend on the batch size."""
    return np.random.default_rng([seed, purpose, row])


def _random_masks(sizes: Sequence[int], counts: Sequence[int], seed: int, purpose: int, first_row: int
                  ) -> list[np.ndarray]:
    masks = []
    for offset, (size, count) in enumerate(zip(sizes, counts)):
        mask = np.zeros(size, dtype=bool)
        mask[_row_rng(seed, purpose, first_row + offset).choice(size, size=min(count, size), replace=False)] = True
        masks.append(mask)
    return masks


def _expected_random_precision(sizes, counts, truths) -> float:
    """E[precision] of masks of `counts` positions drawn uniformly: Σ k_i·|T_i|/n_i / Σ k_i."""
    numerator = sum(k * len(t) / n for n, k, t in zip(sizes, counts, truths) if n)
    denominator = sum(counts)
    return float(numerator / denominator) if denominator else 0.0


def _positions_of(mask: Any) -> list[int]:
    return [int(i) for i in np.flatnonzero(np.asarray(mask, dtype=bool))]


class _Ranking:
    """Top-1 / top-2 statistics of per-word scores against the core words and the cue token."""

    def __init__(self) -> None:
        self.rows = self.top1 = self.top2 = 0
        self.cue_rows = self.top1_cue = self.top2_cue = 0

    def add(self, order: Sequence[int], core: set[int], cue: set[int]) -> None:
        self.rows += 1
        self.top1 += bool(set(order[:1]) & core)
        self.top2 += bool(set(order[:2]) & core)
        if cue:
            self.cue_rows += 1
            self.top1_cue += bool(set(order[:1]) & cue)
            self.top2_cue += bool(set(order[:2]) & cue)

    def result(self) -> dict[str, Any]:
        ratio = lambda a, b: a / b if b else 0.0  # noqa: E731
        return {
            "top1_core": ratio(self.top1, self.rows),
            "top2_core": ratio(self.top2, self.rows),
            "rows": self.rows,
            "top1_cue": ratio(self.top1_cue, self.cue_rows),
            "top2_cue": ratio(self.top2_cue, self.cue_rows),
            "rows_with_cue": self.cue_rows,
        }


def _default_cue_tokens() -> tuple[str, ...]:
    from ..data.synthetic import TEXT_CUE_TOKEN, TEXT_CUE_TOKENS_3

    return (TEXT_CUE_TOKEN, *TEXT_CUE_TOKENS_3)


# ---------------------------------------------------------------------------- main


def counterfactual_quality(
    model: Any,
    processor: Any,
    dataset: Any,
    text_builders: Sequence[str] = ("lexical", "swap", "saliency", "random"),
    image_builders: Sequence[str] = ("attention", "gradient", "random"),
    batch_size: int = 64,
    seed: int = 0,
    top_k: Sequence[int] = (1, 2, 4),
    lexicon: Any = None,
    vocabulary: set[str] | None = None,
    cue_tokens: Sequence[str] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Precision and recall of each builder's masked words and patches against the truth.

    Args:
        model: an `MMEJDModel` (its general expert scores the saliency builders; its config
            gives the prompt, `mask_word`, `text_mask_ratio` and `image_mask_ratio`).
        processor: the base model's processor (inputs are built with `call_processor`).
        dataset: rows with `text`, `image`, `core_word_positions` and `core_box` (a
            `datasets.Dataset` of the synthetic benchmark, or a list of row dicts).
        text_builders / image_builders: builders to score (see the module docstring); empty
            to skip a modality.
        batch_size: rows per processor call and forward pass.
        seed: seed of the random controls.
        top_k: image masks of the top-k tokens of each saliency builder (and random k tokens).
        lexicon: the `swap` lexicon (default: the shipped one).
        vocabulary: restrict `swap` replacements to these words (None: any lexicon word).
        cue_tokens: text cue tokens for `ranking` (default: the synthetic benchmark's).
        progress: show a progress bar over batches.

    Returns a JSON-able dict:
        {"num_rows": N,
         "text": {"num_words", "base_rate" (Σ|truth| / Σ words), "mask_ratio",
                  "builders": {name: mask_quality(...) + "mean_masked"},
                  "ranking": {name: {"top1_core", "top2_core", "top1_cue", "top2_cue",
                                     "rows", "rows_with_cue"}}},
         "image": {"num_tokens", "base_rate", "mask_ratio", "top_k",
                   "builders": {name: {"ratio": mask_quality(...), "top1": ..., "top2": ...}}}}
    The `random` builders also hold `expected_precision`: the precision a uniform draw of
    their counts has in expectation (Σ k_i·|T_i|/n_i / Σ k_i).
    """
    import torch

    from ..modeling.counterfactual_mme_jd import (boxes_to_token_masks, call_processor, image_token_grids,
                                                  text_counterfactuals, top_token_masks)
    from ..modeling.pipeline_mme_jd import token_word_scores
    from ..data.images import load_image

    text_builders, image_builders = tuple(text_builders), tuple(image_builders)
    for name in text_builders:
        if name not in TEXT_BUILDERS:
            raise ValueError(f"unknown text builder {name!r}; choose from {list(TEXT_BUILDERS)}.")
    for name in image_builders:
        if name not in IMAGE_BUILDERS:
            raise ValueError(f"unknown image builder {name!r}; choose from {list(IMAGE_BUILDERS)}.")
    if "swap" in text_builders and lexicon is None:
        from ..data.lexicon import load_lexicon

        lexicon = load_lexicon()
    config = model.config
    tokenizer = getattr(processor, "tokenizer", processor)
    cues = {c.lower() for c in (cue_tokens if cue_tokens is not None else _default_cue_tokens())}
    top_k = tuple(int(k) for k in top_k)
    device = next(model.parameters()).device

    text_truth: list[list[int]] = []
    word_counts: list[int] = []
    text_masks: dict[str, list[list[int]]] = {name: [] for name in text_builders}
    text_counts: dict[str, list[int]] = {name: [] for name in text_builders}
    rankings = {name: _Ranking() for name in text_builders if name in _RANKED_TEXT}
    image_truth: list[np.ndarray] = []
    image_sizes: list[int] = []
    image_variants = ["ratio", *[f"top{k}" for k in top_k]]
    image_masks: dict[str, dict[str, list]] = {n: {v: [] for v in image_variants} for n in image_builders}
    image_counts: dict[str, list[int]] = {v: [] for v in image_variants}

    was_training = model.training
    model.eval()
    num_rows = 0
    batches = _batches(dataset, batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="counterfactual quality", total=-(-len(dataset) // batch_size))
    try:
        for batch in batches:
            texts = [str(t) for t in batch["text"]]
            first_row = num_rows
            num_rows += len(texts)
            for key in ("core_word_positions", "core_box"):
                if key not in batch and (text_builders if key == "core_word_positions" else image_builders):
                    raise ValueError(f"counterfactual_quality needs a `{key}` column (the truth).")
            images = [None if image is None else load_image(image, index=i) for i, image in enumerate(batch["image"])]
            inputs = dict(call_processor(processor, config, texts, images))
            inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}

            # ---------------------------------------------------------------- text
            if text_builders:
                truths = [sorted({int(p) for p in positions}) for positions in batch["core_word_positions"]]
                sizes = [len(t.split()) for t in texts]
                text_truth += truths
                word_counts += sizes
                scores: dict[str, list[list[float]]] = {}
                if "saliency" in text_builders:
                    scores["saliency"] = attention_word_scores(model, inputs, texts, tokenizer)
                if "saliency_gradient" in text_builders:
                    scores["saliency_gradient"] = _mapped(
                        token_word_scores(inputs["input_ids"], _text_gradient_scores(model, inputs), texts, tokenizer),
                        texts,
                    )
                lexical = None
                if "random" in text_builders or "lexical" in text_builders:
                    lexical = [p for _, p in text_counterfactuals(texts, "lexical", config.mask_word)]
                for name in text_builders:
                    if name == "lexical":
                        built = lexical
                    elif name == "random":
                        built = [sorted(_positions_of(m)) for m in
                                 _random_masks(sizes, [len(p) for p in lexical], seed, 0, first_row)]
                    elif name == "given":
                        built = [p for _, p in text_counterfactuals(texts, "given", config.mask_word,
                                                                    core_positions=truths)]
                    elif name == "swap":
                        built = [p for _, p in text_counterfactuals(texts, "swap", lexicon=lexicon,
                                                                    vocabulary=vocabulary)]
                    else:
                        built = [p for _, p in text_counterfactuals(texts, "saliency", config.mask_word,
                                                                    word_scores=scores[name],
                                                                    ratio=config.text_mask_ratio)]
                    text_masks[name] += [list(p) for p in built]
                    text_counts[name] += [len(p) for p in built]
                    if name in rankings:
                        for i, text in enumerate(texts):
                            if name == "random":
                                order = [int(j) for j in _row_rng(seed, 1, first_row + i).permutation(sizes[i])]
                            else:
                                order = sorted(range(sizes[i]), key=lambda j, s=scores[name][i]: (-s[j], j))
                            cue = {j for j, word in enumerate(text.split()) if word.lower() in cues}
                            rankings[name].add(order, set(truths[i]), cue)

            # ---------------------------------------------------------------- image
            if image_builders:
                grids = image_token_grids(config, inputs)
                truths_img = [m.numpy() for m in boxes_to_token_masks(batch["core_box"], grids)]
                sizes_img = [r * c for r, c in grids]
                image_truth += truths_img
                image_sizes += sizes_img
                ratio_counts = [max(1, round(config.image_mask_ratio * n)) for n in sizes_img]
                image_counts["ratio"] += ratio_counts
                for k in top_k:
                    image_counts[f"top{k}"] += [min(k, n) for n in sizes_img]
                for name in image_builders:
                    if name in ("attention", "gradient"):
                        saliency, _ = model.image_saliency(inputs, name)
                        image_masks[name]["ratio"] += [
                            m.cpu().numpy() for m in top_token_masks(saliency, config.image_mask_ratio)
                        ]
                        for k in top_k:
                            image_masks[name][f"top{k}"] += _top_k_masks(saliency, k)
                    elif name == "given":
                        for variant in image_variants:
                            image_masks[name][variant] += [m.copy() for m in truths_img]
                    else:  # random, same counts as the saliency builders
                        image_masks[name]["ratio"] += _random_masks(sizes_img, ratio_counts, seed, 2, first_row)
                        for k in top_k:
                            image_masks[name][f"top{k}"] += _random_masks(sizes_img, [k] * len(sizes_img), seed,
                                                                          3 + k, first_row)
    finally:
        model.train(was_training)

    result: dict[str, Any] = {"num_rows": num_rows}
    if text_builders:
        total_words = sum(word_counts)
        text: dict[str, Any] = {
            "num_words": total_words,
            "base_rate": sum(len(t) for t in text_truth) / total_words if total_words else 0.0,
            "mask_ratio": config.text_mask_ratio,
            "builders": {},
            "ranking": {name: ranking.result() for name, ranking in rankings.items()},
        }
        for name in text_builders:
            entry = mask_quality(text_masks[name], text_truth)
            entry["mean_masked"] = float(np.mean(text_counts[name])) if text_counts[name] else 0.0
            if name == "random":
                entry["expected_precision"] = _expected_random_precision(word_counts, text_counts[name], text_truth)
            text["builders"][name] = entry
        result["text"] = text
    if image_builders:
        total_tokens = sum(image_sizes)
        image: dict[str, Any] = {
            "num_tokens": total_tokens,
            "base_rate": float(sum(int(t.sum()) for t in image_truth) / total_tokens) if total_tokens else 0.0,
            "mask_ratio": config.image_mask_ratio,
            "top_k": list(top_k),
            "builders": {},
        }
        truth_lists = [_positions_of(t) for t in image_truth]
        for name in image_builders:
            entry = {}
            for variant in image_variants:
                entry[variant] = mask_quality(image_masks[name][variant], image_truth)
                if name == "random":
                    entry[variant]["expected_precision"] = _expected_random_precision(
                        image_sizes, image_counts[variant], truth_lists
                    )
            image["builders"][name] = entry
        result["image"] = image
    return to_builtin(result)


def format_quality(result: dict[str, Any]) -> str:
    """A plain-text table of `counterfactual_quality`'s result (precision / recall / F1)."""
    lines = [f"counterfactual quality on {result['num_rows']} rows"]
    text = result.get("text")
    if text:
        lines.append(f"text (base rate {text['base_rate']:.3f} of {text['num_words']} words are core)")
        lines.append(f"  {'builder':<18}{'precision':>10}{'recall':>8}{'f1':>8}{'masked':>8}")
        for name, entry in text["builders"].items():
            lines.append(f"  {name:<18}{entry['precision']:>10.3f}{entry['recall']:>8.3f}{entry['f1']:>8.3f}"
                         f"{entry['mean_masked']:>8.2f}")
        if text["ranking"]:
            lines.append(f"  {'ranking':<18}{'top1 core':>10}{'top2 core':>10}{'top1 cue':>10}{'top2 cue':>10}"
                         f"{'cue rows':>10}")
            for name, entry in text["ranking"].items():
                lines.append(f"  {name:<18}{entry['top1_core']:>10.3f}{entry['top2_core']:>10.3f}"
                             f"{entry['top1_cue']:>10.3f}{entry['top2_cue']:>10.3f}{entry['rows_with_cue']:>10}")
    image = result.get("image")
    if image:
        lines.append(f"image (base rate {image['base_rate']:.3f} of {image['num_tokens']} tokens are core; "
                     f"ratio = top {image['mask_ratio']:.0%})")
        variants = list(next(iter(image["builders"].values())).keys()) if image["builders"] else []
        lines.append(f"  {'builder':<12}{'variant':<8}{'precision':>10}{'recall':>8}{'f1':>8}")
        for name, entry in image["builders"].items():
            for variant in variants:
                quality = entry[variant]
                lines.append(f"  {name:<12}{variant:<8}{quality['precision']:>10.3f}{quality['recall']:>8.3f}"
                             f"{quality['f1']:>8.3f}")
    return "\n".join(lines)
