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

from ..modeling.configuration_mme_jd import ROUTER_STRATEGIES

NONE, IMAGE, TEXT, BOTH = range(4)

#: The router stage's cost tolerance unless told otherwise (`MMEJDTrainingConfig.router_cost_tolerance`
#: says why 0.01).
DEFAULT_COST_TOLERANCE = 0.01


def strategy_labels(labels: torch.Tensor, general: torch.Tensor, image: torch.Tensor, text: torch.Tensor,
                    both: torch.Tensor, image_confidence: torch.Tensor | None = None,
                    text_confidence: torch.Tensor | None = None) -> torch.Tensor:
    """The cheapest right strategy per sample (predictions given as class ids).

    `none` where general is right (or nothing is); else image or text, which cost the same
    (one expert pass): the right one, and where both are right the one more confident in the
    true label when confidences (P(true label)) are given, image otherwise; else `both`.
    """
    out = torch.full_like(labels, NONE)
    wrong = general != labels
    image_right, text_right = image == labels, text == labels
    prefer_text = text_right & ~image_right
    if image_confidence is not None and text_confidence is not None:
        prefer_text = prefer_text | (text_right & image_right & (text_confidence > image_confidence))
    out = torch.where(wrong & (both == labels), torch.full_like(out, BOTH), out)
    out = torch.where(wrong & text_right, torch.full_like(out, TEXT), out)
    out = torch.where(wrong & image_right & ~prefer_text, torch.full_like(out, IMAGE), out)
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


def _within_budget(away_score: torch.Tensor, threshold: float, max_routed_share: float | None) -> bool:
    """Whether `threshold` sends at most `max_routed_share` of these samples away from `none`."""
    return max_routed_share is None or float((away_score >= threshold).float().mean()) <= max_routed_share + 1e-9


def tune_threshold(router_logits: torch.Tensor, targets: torch.Tensor, beta: float = 0.5,
                   max_routed_share: float | None = None) -> tuple[float, float]:
    """The threshold on 1 - P(none) that maximises F-beta of "leave none" (debias classes as
    one positive event, a right debias class counted as a hit), among the thresholds routing at
    most `max_routed_share` of the samples (no limit: None). Returns (threshold, F-beta)."""
    probs = router_logits.float().softmax(-1)
    away_tensor = 1 - probs[:, NONE]
    away_score = away_tensor.numpy()
    choice = (probs[:, 1:].argmax(-1) + 1).numpy()
    truth = targets.numpy()
    best = (1.0, 0.0)
    for threshold in np.unique(np.concatenate([away_score, [1.0]])):
        if not _within_budget(away_tensor, float(threshold), max_routed_share):
            continue
        away = away_score >= threshold
        hits = (away & (choice == truth) & (truth != NONE)).sum()
        precision = hits / max(away.sum(), 1)
        recall = hits / max((truth != NONE).sum(), 1)
        denominator = beta**2 * precision + recall
        score = (1 + beta**2) * precision * recall / denominator if denominator > 0 else 0.0
        if score > best[1] + 1e-12:
            best = (float(threshold), float(score))
    return best


def mixture_logits(model, router_logits: torch.Tensor, expert_logits: dict[str, torch.Tensor],
                   threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Final logits and strategies of the routed mixture at `threshold`, from logits computed
    once (the same combination as MMEJDModel's routed forward)."""
    strategy = model.route(router_logits, threshold)
    temperature = model.config.expert_temperature
    scaled = {name: logits / temperature(name) for name, logits in expert_logits.items()}
    final = scaled["general"].clone()
    final[strategy == IMAGE] = scaled["image_debias"][strategy == IMAGE]
    final[strategy == TEXT] = scaled["text_debias"][strategy == TEXT]
    both = strategy == BOTH
    final[both] = model._combine_both(scaled["image_debias"][both], scaled["text_debias"][both])
    return final, strategy


def routing_candidates(model, router_logits: torch.Tensor, expert_logits: dict[str, torch.Tensor],
                       labels: torch.Tensor, groups: torch.Tensor | None,
                       routed_strategies: tuple[str | None, ...] | None = None,
                       max_routed_share: float | None = None) -> list[dict[str, Any]]:
    """Every routing of the routed mixture on this (group-balanced validation) data: each
    routed strategy (default: the model's) × each threshold routing at most `max_routed_share`
    (None: any), as {routed_strategy, threshold, worst_group_accuracy, accuracy, routed_share,
    cost, score}; `score` is `mid.selection_score` (worst-group accuracy with groups, macro F1
    without), `worst_group_accuracy` None without groups. The model's routed strategy is
    restored afterwards."""
    from .mid import selection_score

    away = 1 - router_logits.float().softmax(-1)[:, NONE]
    thresholds = torch.unique(torch.cat([away, torch.tensor([0.0, 1.0])])).tolist()
    thresholds = [t for t in thresholds if _within_budget(away, t, max_routed_share)] or [1.0]
    previous = model.config.routed_strategy
    candidates = []
    try:
        for routed in routed_strategies if routed_strategies is not None else (previous,):
            model.config.routed_strategy = routed
            for threshold in thresholds:
                final, strategy = mixture_logits(model, router_logits, expert_logits, threshold)
                predictions = final.argmax(-1)
                score = selection_score(predictions, labels, groups)
                candidates.append({"routed_strategy": routed, "threshold": float(threshold), "score": score,
                                   "worst_group_accuracy": score if groups is not None else None,
                                   "accuracy": float((predictions == labels).float().mean()),
                                   "routed_share": float((strategy != NONE).float().mean()),
                                   "cost": expected_cost(strategy, routed, threshold)})
    finally:
        model.config.routed_strategy = previous
    return candidates


def tune_threshold_for_groups(model, router_logits: torch.Tensor, expert_logits: dict[str, torch.Tensor],
                              labels: torch.Tensor, groups: torch.Tensor | None,
                              max_routed_share: float | None = None) -> tuple[float, float]:
    """The threshold whose routed mixture (at the model's routed strategy) has the best worst-
    group accuracy on this (group-balanced validation) data, among those routing at most
    `max_routed_share` of it (None: any); ties go to the higher mean accuracy, then to routing
    less. Returns (threshold, worst-group accuracy)."""
    candidates = routing_candidates(model, router_logits, expert_logits, labels, groups,
                                    max_routed_share=max_routed_share)
    best = max(candidates, key=lambda c: (c["score"], c["accuracy"], -c["routed_share"]))
    return best["threshold"], best["score"]


def expected_cost(strategy: torch.Tensor, routed_strategy: str | None, threshold: float) -> float:
    """Passes per sample of the routed forward at this routing: one general pass plus each
    debias expert's rows (a `both` row runs both); one pass when every sample goes to one
    expert whatever the router says (`MMEJDModel.single_routed_expert` skips the general pass)."""
    from ..modeling.configuration_mme_jd import single_routed_expert

    if single_routed_expert(routed_strategy, threshold) is not None:
        return 1.0
    image = ((strategy == IMAGE) | (strategy == BOTH)).float().mean()
    text = ((strategy == TEXT) | (strategy == BOTH)).float().mean()
    return 1.0 + float(image + text)


def cheapest_routing(model, router_logits: torch.Tensor, expert_logits: dict[str, torch.Tensor],
                     labels: torch.Tensor, groups: torch.Tensor | None, tolerance: float,
                     max_routed_share: float | None = None) -> dict[str, Any]:
    """Cost-aware routing: over every (routed strategy, threshold) pair, keep those whose
    routed mixture's worst-group accuracy on this data is within `tolerance` of the best, and
    return the one with the lowest `expected_cost` (ties: higher worst-group accuracy, then
    accuracy), as a `routing_candidates` entry."""
    candidates = routing_candidates(model, router_logits, expert_logits, labels, groups,
                                    (None, "image", "text", "both"), max_routed_share)
    best = max(c["score"] for c in candidates)
    eligible = [c for c in candidates if c["score"] >= best - tolerance - 1e-9]
    return min(eligible, key=lambda c: (c["cost"], -c["score"], -c["accuracy"]))


def train_router(model, pooled: torch.Tensor, targets: torch.Tensor, args, callbacks: list | None = None,
                 threshold_objective: str = "f0.5", expert_logits: dict[str, torch.Tensor] | None = None,
                 labels: torch.Tensor | None = None, groups: torch.Tensor | None = None,
                 cost_tolerance: float = DEFAULT_COST_TOLERANCE,
                 max_routed_share: float | None = None) -> dict[str, Any]:
    """Train `model.router` on cached pooled states with the Trainer; tune the threshold.

    threshold_objective: "f0.5" (METHOD §4: F0.5 of leaving `none`, precision first) or
    "worst_group" (the routed mixture's worst-group accuracy on this data; needs the experts'
    logits, the labels and the groups).
    cost_tolerance: with "worst_group", keep the cheapest (threshold, routed strategy) whose
    worst-group accuracy is within this of the best (`cheapest_routing`).
    max_routed_share: tune only among thresholds routing at most this share of the samples
    (None: any).
    Sets the model's router threshold and routed strategy, and the class weights of the
    router's loss (`model.loss_settings.router_class_weights`, also in the returned log)."""
    from transformers import Trainer

    from .mid import selection_metric

    model.set_trainable("router")
    weights = class_weights(targets)
    model.loss_settings.router_class_weights = [float(w) for w in weights]
    objective = RouterObjective(model.router, weights.to(pooled.device))
    trainer = Trainer(model=objective, args=args, train_dataset=RouterFeatures(pooled.cpu(), targets.cpu()),
                      callbacks=callbacks)
    result = trainer.train()
    model.freeze_all()
    with torch.no_grad():
        logits = model.router(pooled.to(model.router[0].weight.device))
    f_threshold, fbeta = tune_threshold(logits.cpu(), targets.cpu(), max_routed_share=max_routed_share)
    threshold, group_score, chosen = f_threshold, None, model.config.routed_strategy
    if threshold_objective == "worst_group":
        if expert_logits is None or labels is None:
            raise ValueError("threshold_objective='worst_group' needs the experts' logits and the labels.")
        # the threshold and what routed samples get (the router's choice, or one fixed debias
        # strategy), jointly: the cheapest routing within `cost_tolerance` of the mixture's best
        # worst-group accuracy on this data (tolerance 0: the best; ties go to the cheaper)
        chosen_routing = cheapest_routing(model, logits.cpu(), expert_logits, labels, groups, cost_tolerance,
                                          max_routed_share)
        group_score, threshold, chosen = (chosen_routing["score"], chosen_routing["threshold"],
                                          chosen_routing["routed_strategy"])
    elif threshold_objective != "f0.5":
        raise ValueError(f"unknown threshold_objective {threshold_objective!r}; choose 'f0.5' or 'worst_group'.")
    model.config.routed_strategy = chosen
    model.config.router_threshold = threshold
    shares = torch.bincount(model.route(logits).cpu(), minlength=4).float() / len(targets)
    label_shares = torch.bincount(targets, minlength=4).float() / len(targets)
    return {"stage": "router", "steps": result.global_step, "train_loss": result.training_loss,
            "seconds": round(result.metrics.get("train_runtime", 0.0), 2), "threshold": threshold,
            "threshold_objective": threshold_objective, "f0.5_threshold": f_threshold, "f0.5": fbeta,
            "validation_worst_group_accuracy": group_score if groups is not None else None,
            "selection_metric": selection_metric(groups), "validation_selection_score": group_score,
            "routed_strategy": chosen, "label_shares": dict(zip(ROUTER_STRATEGIES, label_shares.tolist())),
            "routed_shares": dict(zip(ROUTER_STRATEGIES, shares.tolist())),
            "router_class_weights": model.loss_settings.router_class_weights}
