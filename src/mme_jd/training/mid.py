"""Fit MID's λ_t and λ_v on a group-balanced validation split (METHOD §4).

f_mid(x) = f(x) - λ_t·f(x_t*) - λ_v·f(x_v*). A grid search picks the pair with the best
worst-group accuracy (ties: the best mean accuracy, then the smallest λs), so that removing a
cue twice (λ = 1, which wins OOD but loses ID) is not rewarded.

Every validation-based choice (MID's λ here; the router's threshold, routed strategy and cost
tolerance in `router_labels`) scores with `selection_score`: worst-group accuracy over the
groups given (the synthetic `group` column, or ``label × cue presence`` of declared cues);
without groups, the stated fallback :data:`FALLBACK_SELECTION_METRIC`, macro F1 (it does not
reward predicting the majority class, which plain accuracy on a skewed split would).
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


def fit_lambdas(general: torch.Tensor, text_cf: torch.Tensor, image_cf: torch.Tensor, labels: torch.Tensor,
                groups: torch.Tensor | None = None, grid: tuple[float, ...] = DEFAULT_GRID) -> dict:
    """Grid search of (λ_t, λ_v) on precomputed logits for the best `selection_score`. Returns
    the choice and its scores (`worst_group_accuracy` is None without groups)."""
    best = None
    for lambda_text, lambda_image in itertools.product(grid, grid):
        predictions = (general - lambda_text * text_cf - lambda_image * image_cf).argmax(-1)
        key = (selection_score(predictions, labels, groups), float((predictions == labels).float().mean()),
               -(lambda_text + lambda_image))
        if best is None or key > best[0]:
            best = (key, lambda_text, lambda_image)
    (score, accuracy, _), lambda_text, lambda_image = best
    return {"lambda_text": lambda_text, "lambda_image": lambda_image,
            "worst_group_accuracy": score if groups is not None else None, "selection_metric": selection_metric(groups),
            "selection_score": score, "accuracy": accuracy}
