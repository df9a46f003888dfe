"""Fit MID's λ_t and λ_v on a group-balanced validation split (METHOD §4).

f_mid(x) = f(x) - λ_t·f(x_t*) - λ_v·f(x_v*). A grid search picks the pair with the best
worst-group accuracy (ties: the best mean accuracy, then the smallest λs), so that removing a
cue twice (λ = 1, which wins OOD but loses ID) is not rewarded.

Every validation-based choice (MID's λ here; the router's threshold, routed strategy and cost
tolerance in `router_labels`) scores with `selection_score`: worst-group accuracy over the
groups given (the synthetic `group` column, or ``label × cue presence`` of declared cues);
without groups, the stated fallback :data:`FALLBACK_SELECTION_METRIC`, macro F1 (it does not
reward predicting the majority class, which plain accuracy on a skewed split would).

Untold, with no cue declared and no `group` column, `train` infers the groups (`inferred_groups`):
label × what the general expert predicts from the text cue-only input alone. The general expert
learned the shortcut, so its reading of the cue-only input is what the shortcut says; rows where
that reading disagrees with the label are the cue-conflicting ones, the rows a shortcut gets
wrong. On MMSD (4,000 training rows) macro F1 on its cue-carrying validation preferred the
general expert (0.778 against the text expert's 0.768) and the router kept 99.4% of samples
with it; the inferred groups' worst-group accuracy preferred the text expert (0.692 against
0.456), which recovers 0.68 of what the shortcut costs on MMSD2.0.

An accuracy budget (`within_accuracy_budget`, `MMEJDTrainingConfig.selection_max_accuracy_drop`)
narrows every such choice to the candidates whose accuracy on the selection split is at most
a given drop below the general expert's there: worst-group accuracy alone never weighs what
debiasing costs on data that still carries the cue.
"""

from __future__ import annotations

import itertools

import torch

from ..evaluation.metrics import classification_metrics, worst_group_accuracy

DEFAULT_GRID = tuple(round(0.1 * i, 1) for i in range(11))
#: What validation-based selection maximises when no groups are given.
FALLBACK_SELECTION_METRIC = "macro_f1"


def selection_metric(groups: torch.Tensor | None) -> str:
    """The name of what `selection_score` computes for these groups."""
    return "worst_group_accuracy" if groups is not None else FALLBACK_SELECTION_METRIC


def selection_score(predictions: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor | None) -> float:
    """Worst-group accuracy over `groups`; without groups, macro F1 (see the module docstring)."""
    if groups is not None:
        return worst_group_accuracy(predictions, labels, groups)
    return float(classification_metrics(predictions.cpu().numpy(), labels.cpu().numpy())["macro_f1"])


#: An inferred group smaller than this is merged with the other rows of its label (`inferred_groups`).
MIN_INFERRED_GROUP_ROWS = 10


def inferred_groups(labels: torch.Tensor, cue_reading: torch.Tensor,
                    min_rows: int = MIN_INFERRED_GROUP_ROWS) -> tuple[torch.Tensor, dict[tuple[int, int | None], int]]:
    """Selection groups without declared cues: label × `cue_reading` (the general expert's
    prediction on the text cue-only input), one id per row. Within a label, a reading held by
    fewer than `min_rows` rows joins that label's other rows (its reading is then None), so that
    no worst-group figure rests on a handful of rows. Returns (group ids, {(label, reading):
    rows})."""
    labels, cue_reading = labels.long().cpu(), cue_reading.long().cpu()
    if labels.shape != cue_reading.shape:
        raise ValueError(f"need one cue-only reading per label: got {tuple(cue_reading.shape)} and "
                         f"{tuple(labels.shape)}.")
    keys: list[tuple[int, int | None]] = []
    for label in labels.unique().tolist():
        readings, counts = cue_reading[labels == label].unique(return_counts=True)
        kept = [int(r) for r, n in zip(readings.tolist(), counts.tolist()) if n >= min_rows]
        if len(kept) == len(readings) > 1:
            keys.extend((label, reading) for reading in kept)
        else:
            keys.append((label, None))
    index = {key: i for i, key in enumerate(keys)}
    ids = torch.tensor([index.get((int(y), int(r)), index.get((int(y), None), -1))
                        for y, r in zip(labels.tolist(), cue_reading.tolist())])
    sizes = {key: int((ids == i).sum()) for key, i in index.items()}
    return ids, sizes


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """The share of `predictions` equal to `labels`."""
    return float((predictions == labels).float().mean())


def within_accuracy_budget(candidates: list[dict], reference_accuracy: float,
                           max_accuracy_drop: float | None) -> list[dict]:
    """The candidates (dicts with an "accuracy" on the selection split) at most
    `max_accuracy_drop` below `reference_accuracy`, the general expert's (ERM's) accuracy on the
    same rows: an accuracy budget on a validation choice. None: every candidate. When none keeps
    to the budget, the most accurate ones, so that a choice is always made."""
    if max_accuracy_drop is None or not candidates:
        return list(candidates)
    kept = [c for c in candidates if c["accuracy"] >= reference_accuracy - max_accuracy_drop - 1e-9]
    if kept:
        return kept
    top = max(c["accuracy"] for c in candidates)
    return [c for c in candidates if c["accuracy"] >= top - 1e-9]


def fit_lambdas(general: torch.Tensor, text_cf: torch.Tensor, image_cf: torch.Tensor, labels: torch.Tensor,
                groups: torch.Tensor | None = None, grid: tuple[float, ...] = DEFAULT_GRID,
                max_accuracy_drop: float | None = None) -> dict:
    """Grid search of (λ_t, λ_v) on precomputed logits for the best `selection_score` (ties: the
    best accuracy, then the smallest λs), among the pairs whose accuracy is at most
    `max_accuracy_drop` below the general expert's (λ = 0) on these rows (None: any pair;
    `within_accuracy_budget`). Returns the choice and its scores (`worst_group_accuracy` is None
    without groups)."""
    candidates = []
    for lambda_text, lambda_image in itertools.product(grid, grid):
        predictions = (general - lambda_text * text_cf - lambda_image * image_cf).argmax(-1)
        candidates.append({"lambda_text": lambda_text, "lambda_image": lambda_image,
                           "score": selection_score(predictions, labels, groups),
                           "accuracy": accuracy(predictions, labels)})
    reference = accuracy(general.argmax(-1), labels)
    best = max(within_accuracy_budget(candidates, reference, max_accuracy_drop),
               key=lambda c: (c["score"], c["accuracy"], -(c["lambda_text"] + c["lambda_image"])))
    return {"lambda_text": best["lambda_text"], "lambda_image": best["lambda_image"],
            "worst_group_accuracy": best["score"] if groups is not None else None,
            "selection_metric": selection_metric(groups), "selection_score": best["score"],
            "accuracy": best["accuracy"], "general_accuracy": reference, "max_accuracy_drop": max_accuracy_drop}
