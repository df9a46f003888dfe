"""Fit MID's λ_t and λ_v on a group-balanced validation split (METHOD §4).

f_mid(x) = f(x) - λ_t·f(x_t*) - λ_v·f(x_v*). A grid search picks the pair with the best
worst-group accuracy (ties: the best mean accuracy, then the smallest λs), so that removing a
cue twice (λ = 1, which wins OOD but loses ID) is not rewarded.
"""

from __future__ import annotations

import itertools

import torch

DEFAULT_GRID = tuple(round(0.1 * i, 1) for i in range(11))


def worst_group_accuracy(predictions: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor | None) -> float:
    if groups is None:
        return float((predictions == labels).float().mean())
    accuracies = [float((predictions[groups == g] == labels[groups == g]).float().mean()) for g in groups.unique()]
    return min(accuracies)


def fit_lambdas(general: torch.Tensor, text_cf: torch.Tensor, image_cf: torch.Tensor, labels: torch.Tensor,
                groups: torch.Tensor | None = None, grid: tuple[float, ...] = DEFAULT_GRID) -> dict:
    """Grid search of (λ_t, λ_v) on precomputed logits. Returns the choice and its scores."""
    best = None
    for lambda_text, lambda_image in itertools.product(grid, grid):
        predictions = (general - lambda_text * text_cf - lambda_image * image_cf).argmax(-1)
        key = (worst_group_accuracy(predictions, labels, groups), float((predictions == labels).float().mean()),
               -(lambda_text + lambda_image))
        if best is None or key > best[0]:
            best = (key, lambda_text, lambda_image)
    (wga, accuracy, _), lambda_text, lambda_image = best
    return {"lambda_text": lambda_text, "lambda_image": lambda_image, "worst_group_accuracy": wga,
            "accuracy": accuracy}
