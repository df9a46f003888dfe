"""Router labels, router training and threshold tuning (METHOD §4).

Labels on held-out data: `none` where the general expert is right; otherwise the cheapest
strategy that is right (image, then text, then both); `none` where nothing is right.
The router (a small MLP on the general expert's pooled final hidden state) trains on cached
pooled states with class-weighted cross-entropy through the Trainer: the base and the experts
never run again during this stage. The threshold for leaving `none` is tuned for F0.5 of the
debias classes (precision first).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

NONE, IMAGE, TEXT, BOTH = range(4)


def strategy_labels(labels: torch.Tensor, general: torch.Tensor, image: torch.Tensor, text: torch.Tensor,
                    both: torch.Tensor) -> torch.Tensor:
    """The cheapest right strategy per sample (predictions given as class ids)."""
    out = torch.full_like(labels, NONE)
    wrong = general != labels
    for strategy, prediction in ((BOTH, both), (TEXT, text), (IMAGE, image)):  # cheapest written last
        out = torch.where(wrong & (prediction == labels), torch.full_like(out, strategy), out)
    return out


class RouterFeatures(torch.utils.data.Dataset):
    """Cached pooled states and strategy labels: the router stage's whole dataset."""

    def __init__(self, pooled: torch.Tensor, targets: torch.Tensor):
        self.pooled, self.targets = pooled, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> dict:
        return {"pooled": self.pooled[index], "labels": self.targets[index]}


class RouterObjective(nn.Module):
    """Class-weighted cross-entropy of the model's router on cached pooled states."""

    def __init__(self, router: nn.Module, class_weights: torch.Tensor):
        super().__init__()
        self.router = router
        self.register_buffer("class_weights", class_weights)

    def forward(self, pooled: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        logits = self.router(pooled)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits, labels, weight=self.class_weights)
        return {"loss": loss, "logits": logits}


def class_weights(targets: torch.Tensor, num_classes: int = 4) -> torch.Tensor:
    """Inverse-frequency weights (classes absent from the targets get weight 0), mean 1."""
    counts = torch.bincount(targets, minlength=num_classes).float()
    weights = torch.where(counts > 0, counts.sum() / (counts.clamp(min=1) * (counts > 0).sum()), torch.zeros_like(counts))
    return weights


def tune_threshold(router_logits: torch.Tensor, targets: torch.Tensor, beta: float = 0.5) -> tuple[float, float]:
    """The threshold on 1 - P(none) that maximises F-beta of "leave none" (debias classes as
    one positive event, a right debias class counted as a hit). Returns (threshold, F-beta)."""
    probs = router_logits.float().softmax(-1)
    away_score = (1 - probs[:, NONE]).numpy()
    choice = (probs[:, 1:].argmax(-1) + 1).numpy()
    truth = targets.numpy()
    best = (1.0, 0.0)
    for threshold in np.unique(np.concatenate([away_score, [1.0]])):
        away = away_score >= threshold
        hits = (away & (choice == truth) & (truth != NONE)).sum()
        precision = hits / max(away.sum(), 1)
        recall = hits / max((truth != NONE).sum(), 1)
        denominator = beta**2 * precision + recall
        score = (1 + beta**2) * precision * recall / denominator if denominator > 0 else 0.0
        if score > best[1] + 1e-12:
            best = (float(threshold), float(score))
    return best


def train_router(model, pooled: torch.Tensor, targets: torch.Tensor, args, callbacks: list | None = None) -> dict[str, Any]:
    """Train `model.router` on cached pooled states with the Trainer; tune the threshold."""
    from transformers import Trainer

    model.set_trainable("router")
    weights = class_weights(targets)
    model.config.router_class_weights = [float(w) for w in weights]
    objective = RouterObjective(model.router, weights.to(pooled.device))
    trainer = Trainer(model=objective, args=args, train_dataset=RouterFeatures(pooled.cpu(), targets.cpu()),
                      callbacks=callbacks)
    result = trainer.train()
    model.freeze_all()
    with torch.no_grad():
        logits = model.router(pooled.to(model.router[0].weight.device))
    threshold, fbeta = tune_threshold(logits.cpu(), targets.cpu())
    model.config.router_threshold = threshold
    shares = torch.bincount(model.route(logits).cpu(), minlength=4).float() / len(targets)
    label_shares = torch.bincount(targets, minlength=4).float() / len(targets)
    return {"stage": "router", "steps": result.global_step, "train_loss": result.training_loss,
            "seconds": round(result.metrics.get("train_runtime", 0.0), 2), "threshold": threshold,
            "f0.5": fbeta, "label_shares": dict(zip(model.config.router_strategies, label_shares.tolist())),
            "routed_shares": dict(zip(model.config.router_strategies, shares.tolist()))}
