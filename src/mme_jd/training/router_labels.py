"""The router stage (METHOD §4): router training on cached pooled states, then the routing
it keeps (threshold and routed strategy), tuned on validation data.

* Targets: `routing_mme_jd.strategy_targets` on every expert's logits (the cheapest right
  strategy; evaluation scores the router against the same rule).
* Training: the router (a small MLP on the general expert's pooled final hidden state) trains
  on cached pooled states with class-weighted cross-entropy (`fit_router`): the base and the
  experts never run again during this stage. A plain loop, not the Trainer: a Trainer's set-up
  cost about 0.4 s a fit on the synthetic benchmark, and cross-fitting makes six fits.
* Routing, by `threshold_objective`:
    "f0.5"         the threshold on 1 - P(none) with the best F0.5 of leaving `none`
                   (`tune_threshold`: debias classes as one positive event, precision first);
    "worst_group"  (`train`'s default) every (routed strategy, threshold) pair is scored by the
                   routed mixture's worst-group accuracy on this data (`routing_candidates`;
                   macro F1 without groups); the cheapest within `router_cost_tolerance` of the
                   best is kept (`cheapest_routing`).
  Both respect `router_max_routed_share` (a limit on the share routed away).
* Cross-fitting (`router_selection_folds`): the router trains on the same split its routing
  is tuned on, so its in-sample scores single out the very rows it memorised; the routing is
  tuned on out-of-fold scores instead (`out_of_fold_router_logits`), and the router is then
  trained on every row.
The mixtures scored here are `routing_mme_jd.route` and `combine` over logits computed once: the
same arithmetic as `MMEJDModel`'s routed forward.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from ..evaluation.metrics import f_beta
from ..modeling.routing_mme_jd import (STRATEGY_NAMES, ROUTED_STRATEGY_NAMES, Strategy, away_scores,
                                       candidate_thresholds, combine, expected_cost, route, usable_strategies,
                                       within_budget)

#: The router stage's cost tolerance unless told otherwise (`MMEJDTrainingConfig.router_cost_tolerance`
#: says why 0.01).
DEFAULT_COST_TOLERANCE = 0.01


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


def class_weights(targets: torch.Tensor, num_classes: int = len(Strategy)) -> torch.Tensor:
    """Inverse-frequency weights (classes absent from the targets get weight 0), mean 1."""
    counts = torch.bincount(targets, minlength=num_classes).float()
    weights = torch.where(counts > 0, counts.sum() / (counts.clamp(min=1) * (counts > 0).sum()), torch.zeros_like(counts))
    return weights


def tune_threshold(router_logits: torch.Tensor, targets: torch.Tensor, beta: float = 0.5,
                   max_routed_share: float | None = None,
                   skipped_experts: list[str] | None = None) -> tuple[float, float]:
    """The threshold on 1 - P(none) that maximises F-beta of "leave none" (debias classes as
    one positive event, a right debias class counted as a hit), among the thresholds routing at
    most `max_routed_share` of the samples (no limit: None); routed samples never get a strategy
    that needs one of `skipped_experts`. Returns (threshold, F-beta)."""
    away = away_scores(router_logits)
    truth = targets.cpu()
    should = truth != Strategy.NONE
    best = (1.0, 0.0)
    for threshold in np.unique(np.concatenate([away.cpu().numpy(), [1.0]])):
        if not within_budget(away, float(threshold), max_routed_share):
            continue
        strategy = route(router_logits, float(threshold), skipped_experts=skipped_experts).cpu()
        routed = strategy != Strategy.NONE
        hits = int((routed & (strategy == truth) & should).sum())
        score = f_beta(hits / max(int(routed.sum()), 1), hits / max(int(should.sum()), 1), beta)
        if score > best[1] + 1e-12:
            best = (float(threshold), float(score))
    return best


def mixture_logits(model, router_logits: torch.Tensor, expert_logits: dict[str, torch.Tensor],
                   threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Final logits and strategies of the model's routed mixture (its routed strategy, both
    combination and temperatures) at `threshold`, from logits computed once."""
    strategy = route(router_logits, threshold, model.config.routed_strategy, model.config.skipped_experts)
    return _combined(model, strategy, expert_logits), strategy


def _combined(model, strategy: torch.Tensor, expert_logits: dict[str, torch.Tensor]) -> torch.Tensor:
    temperatures = {name: model.config.expert_temperature(name) for name in expert_logits}
    return combine(strategy, expert_logits, model.config.both_combination, temperatures)


def routing_candidates(model, router_logits: torch.Tensor, expert_logits: dict[str, torch.Tensor],
                       labels: torch.Tensor, groups: torch.Tensor | None,
                       routed_strategies: tuple[str | None, ...] | None = None,
                       max_routed_share: float | None = None) -> list[dict[str, Any]]:
    """Every routing of the routed mixture on this (group-balanced validation) data: each
    routed strategy (default: the model's) × each threshold routing at most `max_routed_share`
    (None: any; `candidate_thresholds`), as {routed_strategy, threshold, worst_group_accuracy,
    accuracy, routed_share, cost, score}; `score` is `mid.selection_score` (worst-group accuracy
    with groups, macro F1 without), `worst_group_accuracy` None without groups. The model is
    only read."""
    from .mid import selection_score

    thresholds = candidate_thresholds(router_logits, max_routed_share)
    candidates = []
    for routed in routed_strategies if routed_strategies is not None else (model.config.routed_strategy,):
        for threshold in thresholds:
            strategy = route(router_logits, threshold, routed, model.config.skipped_experts)
            predictions = _combined(model, strategy, expert_logits).argmax(-1)
            score = selection_score(predictions, labels, groups)
            candidates.append({"routed_strategy": routed, "threshold": float(threshold), "score": score,
                               "worst_group_accuracy": score if groups is not None else None,
                               "accuracy": float((predictions == labels).float().mean()),
                               "routed_share": float((strategy != Strategy.NONE).float().mean()),
                               "cost": expected_cost(strategy, routed, threshold)})
    return candidates


def _within_accuracy_budget(candidates: list[dict[str, Any]], expert_logits: dict[str, torch.Tensor],
                            labels: torch.Tensor, max_accuracy_drop: float | None) -> list[dict[str, Any]]:
    """`mid.within_accuracy_budget` of routing candidates, against the general expert's accuracy
    (routing nothing) on the same rows."""
    from .mid import accuracy, within_accuracy_budget

    reference = accuracy(expert_logits["general"].argmax(-1), labels)
    return within_accuracy_budget(candidates, reference, max_accuracy_drop)


def tune_threshold_for_groups(model, router_logits: torch.Tensor, expert_logits: dict[str, torch.Tensor],
                              labels: torch.Tensor, groups: torch.Tensor | None,
                              max_routed_share: float | None = None,
                              max_accuracy_drop: float | None = None) -> tuple[float, float]:
    """The threshold whose routed mixture (at the model's routed strategy) has the best worst-
    group accuracy on this (group-balanced validation) data, among those routing at most
    `max_routed_share` of it (None: any) and, with `max_accuracy_drop`, whose accuracy is at
    most that below the general expert's (`mid.within_accuracy_budget`); ties go to the higher
    mean accuracy, then to routing less. Returns (threshold, worst-group accuracy)."""
    candidates = routing_candidates(model, router_logits, expert_logits, labels, groups,
                                    max_routed_share=max_routed_share)
    candidates = _within_accuracy_budget(candidates, expert_logits, labels, max_accuracy_drop)
    best = max(candidates, key=lambda c: (c["score"], c["accuracy"], -c["routed_share"]))
    return best["threshold"], best["score"]


def cheapest_routing(model, router_logits: torch.Tensor, expert_logits: dict[str, torch.Tensor],
                     labels: torch.Tensor, groups: torch.Tensor | None, tolerance: float,
                     max_routed_share: float | None = None,
                     max_accuracy_drop: float | None = None) -> dict[str, Any]:
    """Cost-aware routing: over every (routed strategy, threshold) pair (with
    `max_accuracy_drop`: only those whose accuracy on this data is at most that below the
    general expert's, `mid.within_accuracy_budget`), keep those whose routed mixture's
    worst-group accuracy is within `tolerance` of the best, and return the one with the lowest
    `expected_cost` (ties: higher worst-group accuracy, then accuracy), as a
    `routing_candidates` entry."""
    usable = usable_strategies(model.config.skipped_experts)  # a skipped expert is never routed to
    routed_strategies = (None, *(name for name in ROUTED_STRATEGY_NAMES if Strategy.of(name) in usable))
    candidates = routing_candidates(model, router_logits, expert_logits, labels, groups, routed_strategies,
                                    max_routed_share)
    candidates = _within_accuracy_budget(candidates, expert_logits, labels, max_accuracy_drop)
    best = max(c["score"] for c in candidates)
    eligible = [c for c in candidates if c["score"] >= best - tolerance - 1e-9]
    return min(eligible, key=lambda c: (c["cost"], -c["score"], -c["accuracy"]))


#: Folds of the router stage's cross-fitted selection unless told otherwise
#: (`MMEJDTrainingConfig.router_selection_folds` says why).
DEFAULT_SELECTION_FOLDS = 5


class RouterFit(NamedTuple):
    """What one router fit did: optimizer steps, mean training loss, wall-clock seconds."""

    global_step: int
    training_loss: float
    seconds: float


def fit_router(model, pooled: torch.Tensor, targets: torch.Tensor, args, quiet: bool = False) -> tuple[RouterFit, torch.Tensor]:
    """Train `model.router` (from its current weights) on these rows; returns (RouterFit, class
    weights). The rest of the model stays frozen.

    The schedule is the TrainingArguments' (`stage_arguments` of the router stage): AdamW
    (`learning_rate`, `adam_beta1/2`, `adam_epsilon`, `weight_decay` on weight matrices only),
    a linear decay after `warmup_steps`, gradient clipping at `max_grad_norm`,
    `per_device_train_batch_size` rows a step in an order reshuffled every epoch from
    `args.seed`, for `num_train_epochs` epochs. Each process of a distributed run fits the same
    router on the same rows. quiet: no log line."""
    from transformers import get_linear_schedule_with_warmup

    started = time.perf_counter()
    model.set_trainable("router")
    router = model.router
    device = router.hidden.weight.device
    pooled = pooled.to(device=device, dtype=router.hidden.weight.dtype)
    targets = targets.to(device)
    weights = class_weights(targets.cpu())
    objective = RouterObjective(router, weights.to(device))
    parameters = [p for p in router.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": [p for p in parameters if p.dim() >= 2], "weight_decay": args.weight_decay},
         {"params": [p for p in parameters if p.dim() < 2], "weight_decay": 0.0}],
        lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon,
    )
    batch_size = max(1, args.per_device_train_batch_size)
    steps_per_epoch = math.ceil(len(targets) / batch_size)
    total = max(1, math.ceil(args.num_train_epochs * steps_per_epoch))
    schedule = get_linear_schedule_with_warmup(optimizer, args.get_warmup_steps(total), total)  # the Trainer's
    generator = torch.Generator().manual_seed(args.seed)
    losses: list[float] = []
    router.train()
    try:
        while len(losses) < total:
            for rows in torch.randperm(len(targets), generator=generator).split(batch_size):
                if len(losses) == total:
                    break
                rows = rows.to(device)
                loss = objective(pooled[rows], targets[rows])["loss"]
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if args.max_grad_norm and args.max_grad_norm > 0:
                    nn.utils.clip_grad_norm_(parameters, args.max_grad_norm)
                optimizer.step()
                schedule.step()
                losses.append(float(loss.detach()))
    finally:
        router.eval()
        model.freeze_all()
    fit = RouterFit(global_step=len(losses), training_loss=float(np.mean(losses)),
                    seconds=round(time.perf_counter() - started, 2))
    if not quiet:
        print(f"[mme-jd] router: {fit.global_step} steps on {len(targets)} cached pooled states, mean loss "
              f"{fit.training_loss:.4f}, last {losses[-1]:.4f}", flush=True)
    return fit, weights


def _router_logits(model, pooled: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.router(pooled.to(model.router.hidden.weight.device)).cpu()


def out_of_fold_router_logits(model, pooled: torch.Tensor, targets: torch.Tensor, args, folds: int,
                              seed: int = 0) -> torch.Tensor:
    """Each row's router logits from a router trained, from the router's current weights, on
    the other `folds` - 1 folds only (a seeded random partition). Scores on rows the router
    never saw: the router trains on the same split its routing is tuned on, and its in-sample
    scores single out exactly the rows it memorised (`train_router`). The router's weights are
    left as they were."""
    if folds < 2 or len(targets) < 2 * folds:
        raise ValueError(f"cross-fitting needs at least 2 folds of at least 2 rows; got {folds} folds over "
                         f"{len(targets)} rows. Use fewer folds, or router_selection_folds=0 (in-sample).")
    initial = {name: value.clone() for name, value in model.router.state_dict().items()}
    order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(seed))
    logits = torch.empty(len(targets), len(Strategy))
    try:
        for held_out in order.chunk(folds):
            kept = torch.ones(len(targets), dtype=torch.bool)
            kept[held_out] = False
            model.router.load_state_dict(initial)
            fit_router(model, pooled[kept], targets[kept], args, quiet=True)
            logits[held_out] = _router_logits(model, pooled[held_out])
    finally:
        model.router.load_state_dict(initial)
        model.freeze_all()
    return logits


def train_router(model, pooled: torch.Tensor, targets: torch.Tensor, args,
                 threshold_objective: str = "f0.5", expert_logits: dict[str, torch.Tensor] | None = None,
                 labels: torch.Tensor | None = None, groups: torch.Tensor | None = None,
                 cost_tolerance: float = DEFAULT_COST_TOLERANCE,
                 max_routed_share: float | None = None,
                 selection_folds: int = DEFAULT_SELECTION_FOLDS,
                 max_accuracy_drop: float | None = None) -> dict[str, Any]:
    """Train `model.router` on cached pooled states (`fit_router`, with `args`' schedule); tune
    the threshold.

    threshold_objective: "f0.5" (METHOD §4: F0.5 of leaving `none`, precision first) or
    "worst_group" (the routed mixture's worst-group accuracy on this data; needs the experts'
    logits, the labels and the groups).
    cost_tolerance: with "worst_group", keep the cheapest (threshold, routed strategy) whose
    worst-group accuracy is within this of the best (`cheapest_routing`).
    max_routed_share: tune only among thresholds routing at most this share of the samples
    (None: any).
    max_accuracy_drop: with "worst_group", tune only among routings whose accuracy on this data
    is at most this below the general expert's (None: any; `mid.within_accuracy_budget`).
    selection_folds: ≥ 2: the threshold and routed strategy are tuned on out-of-fold router
    scores (`out_of_fold_router_logits`, seeded by `args.seed`), then the router is trained
    on every row and keeps them; 0: tuned on the trained router's in-sample scores, as they
    are (with a warning) when there are fewer than 2 rows a fold.
    Sets the model's router threshold and routed strategy, and the class weights of the
    router's loss (`model.loss_settings.router_class_weights`, also in the returned log)."""
    from .mid import accuracy, selection_metric

    selection_logits, selection = None, "in sample"
    if selection_folds and len(targets) < 2 * selection_folds:
        # a router stage at the end of a long run does not fail on a tiny validation split
        logging.getLogger("mme_jd").warning(
            "router: %d rows are too few for %d folds of at least 2; the routing is tuned on in-sample router "
            "scores (set router_selection_folds lower, or give the router split more rows).", len(targets),
            selection_folds)
        selection = f"in sample ({len(targets)} rows: too few for {selection_folds} folds)"
    elif selection_folds:
        selection_logits = out_of_fold_router_logits(model, pooled, targets, args, selection_folds,
                                                     seed=args.seed)
        selection = f"out of fold ({selection_folds} folds)"
    result, weights = fit_router(model, pooled, targets, args)
    model.loss_settings.router_class_weights = [float(w) for w in weights]
    logits = _router_logits(model, pooled)
    if selection_logits is None:
        selection_logits = logits
    f_threshold, fbeta = tune_threshold(selection_logits, targets.cpu(), max_routed_share=max_routed_share,
                                        skipped_experts=model.config.skipped_experts)
    threshold, group_score, chosen, accuracies = f_threshold, None, model.config.routed_strategy, {}
    if threshold_objective == "worst_group":
        if expert_logits is None or labels is None:
            raise ValueError("threshold_objective='worst_group' needs the experts' logits and the labels.")
        # the threshold and what routed samples get (the router's choice, or one fixed debias
        # strategy), jointly: the cheapest routing within `cost_tolerance` of the mixture's best
        # worst-group accuracy on this data (tolerance 0: the best; ties go to the cheaper)
        chosen_routing = cheapest_routing(model, selection_logits, expert_logits, labels, groups, cost_tolerance,
                                          max_routed_share, max_accuracy_drop)
        group_score, threshold, chosen = (chosen_routing["score"], chosen_routing["threshold"],
                                          chosen_routing["routed_strategy"])
        accuracies = {"validation_accuracy": chosen_routing["accuracy"],
                      "validation_general_accuracy": accuracy(expert_logits["general"].argmax(-1), labels)}
    elif threshold_objective != "f0.5":
        raise ValueError(f"unknown threshold_objective {threshold_objective!r}; choose 'f0.5' or 'worst_group'.")
    model.config.routed_strategy = chosen
    model.config.router_threshold = threshold
    # the shares of the scores the routing was tuned on (out of fold: as on rows the router never saw)
    shares = torch.bincount(model.route(selection_logits).cpu(), minlength=len(Strategy)).float() / len(targets)
    label_shares = torch.bincount(targets, minlength=len(Strategy)).float() / len(targets)
    return {"stage": "router", "steps": result.global_step, "train_loss": result.training_loss,
            "seconds": result.seconds, "threshold": threshold,
            "threshold_objective": threshold_objective, "f0.5_threshold": f_threshold, "f0.5": fbeta,
            "validation_worst_group_accuracy": group_score if groups is not None else None,
            "selection_metric": selection_metric(groups), "validation_selection_score": group_score,
            "routed_strategy": chosen, "label_shares": dict(zip(STRATEGY_NAMES, label_shares.tolist())),
            "routed_shares": dict(zip(STRATEGY_NAMES, shares.tolist())),
            "selection_scores": selection, **accuracies, "max_accuracy_drop": max_accuracy_drop,
            "router_class_weights": model.loss_settings.router_class_weights}
