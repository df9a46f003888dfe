"""Routing of MME-JD: the four strategies, which one each sample gets, what its final logits
are made of, what that costs, and which strategy a sample should have got (the router's
training target).

Hub remote code: imports only torch and the standard library. Pure functions on tensors: the
model's routed forward, the router stage, evaluation and the benchmark all call these, so a
strategy id or a routed combination is written here and nowhere else.

    router logits [B, 4] ─► softmax ─► P(none), P(image), P(text), P(both)
        away = 1 - P(none) >= threshold ?
            no  ─► none
            yes ─► routed_strategy when one is fixed, else the most probable of image/text/both

    combine (each expert's logits z divided by its temperature T first):
        none  → z_general / T_general                        (no debias expert runs)
        image → z_image_debias / T_image_debias              (one expert pass)
        text  → z_text_debias / T_text_debias                (one expert pass)
        both  → mean of the two scaled logits, or           (two expert passes)
                log_softmax(image) + log_softmax(text)  ("product", a product of experts)

    strategy targets (METHOD §4), per sample with true label y:
        general right (or no strategy right)  → none
        else image or text, the right one; both right → the one with the higher P(y)
        else the `both` combination right     → both
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping

import torch
import torch.nn.functional as F


class Strategy(enum.IntEnum):
    """What the router decides per sample; the value is the router-logit index."""

    NONE = 0  # keep the general expert's logits
    IMAGE = 1  # the image_debias expert's
    TEXT = 2  # the text_debias expert's
    BOTH = 3  # both debias experts, combined (`combine_both`)

    @property
    def label(self) -> str:
        """The strategy's name in configs, reports and pipeline outputs ("none", "image", ...)."""
        return self.name.lower()

    @classmethod
    def of(cls, name: str) -> Strategy:
        """The strategy named `name` ("none", "image", "text" or "both")."""
        try:
            return cls[str(name).upper()]
        except KeyError:
            raise ValueError(f"unknown routing strategy {name!r}; choose one of {list(STRATEGY_NAMES)}.") from None


#: The strategies' names in id order: ("none", "image", "text", "both").
STRATEGY_NAMES: tuple[str, ...] = tuple(strategy.label for strategy in Strategy)
#: What a sample routed away from `none` can get: the names `routed_strategy` may fix.
ROUTED_STRATEGY_NAMES: tuple[str, ...] = tuple(s.label for s in Strategy if s is not Strategy.NONE)
#: The experts whose logits a strategy's final logits are made of.
STRATEGY_EXPERTS: dict[Strategy, tuple[str, ...]] = {
    Strategy.NONE: ("general",),
    Strategy.IMAGE: ("image_debias",),
    Strategy.TEXT: ("text_debias",),
    Strategy.BOTH: ("image_debias", "text_debias"),
}
#: The debias experts, each run only on the rows whose strategy names it.
DEBIAS_EXPERTS: tuple[str, ...] = ("image_debias", "text_debias")
#: How `both` combines its two experts' scaled logits (`MMEJDConfig.both_combination`).
BOTH_COMBINATIONS: tuple[str, ...] = ("mean", "product")


# ---------------------------------------------------------------------- which strategy


def away_scores(router_logits: torch.Tensor) -> torch.Tensor:
    """1 - P(none) per sample: a sample leaves `none` when this is >= the threshold."""
    return 1.0 - router_logits.float().softmax(dim=-1)[:, Strategy.NONE]


def usable_strategies(skipped_experts: Collection[str] | None = None) -> tuple[Strategy, ...]:
    """The strategies whose experts were all trained: every strategy but those that need one of
    `skipped_experts` (debias experts a training run skipped: `MMEJDConfig.skipped_experts`)."""
    skipped = set(skipped_experts or ())
    return tuple(s for s in Strategy if not skipped & set(STRATEGY_EXPERTS[s]))


def route(router_logits: torch.Tensor, threshold: float, routed_strategy: str | None = None,
          skipped_experts: Collection[str] | None = None) -> torch.Tensor:
    """Strategy id per sample [B]: `none` unless 1 - P(none) >= threshold; then the fixed
    `routed_strategy` ("image", "text" or "both") or, when None, the most probable of the
    debias strategies that need none of `skipped_experts` (`none` when no debias strategy is
    left)."""
    probs = router_logits.float().softmax(dim=-1)
    away = (1.0 - probs[:, Strategy.NONE]) >= threshold
    usable = [int(s) for s in usable_strategies(skipped_experts) if s is not Strategy.NONE]
    if routed_strategy is not None:
        if int(Strategy.of(routed_strategy)) not in usable:
            raise ValueError(f"routed_strategy {routed_strategy!r} needs an expert this model's training skipped "
                             f"({sorted(skipped_experts or ())}); choose one of "
                             f"{[Strategy(s).label for s in usable] or ['none']} or None.")
        choice = torch.full_like(probs[:, 0], int(Strategy.of(routed_strategy))).long()
    elif not usable:
        return torch.full_like(probs[:, 0], int(Strategy.NONE)).long()
    else:  # the most probable usable debias strategy
        debias = torch.full_like(probs, float("-inf"))
        debias[:, usable] = probs[:, usable]
        choice = debias.argmax(dim=-1)
    return torch.where(away, choice, torch.full_like(choice, Strategy.NONE))


def needs_expert(strategy: torch.Tensor, expert: str) -> torch.Tensor:
    """[B] bool: the rows whose strategy's final logits use `expert`'s logits."""
    wanted = [int(s) for s, experts in STRATEGY_EXPERTS.items() if expert in experts]
    return torch.isin(strategy, torch.tensor(wanted, device=strategy.device, dtype=strategy.dtype))


def single_routed_expert(routed_strategy: str | None, threshold: float) -> str | None:
    """The debias expert every sample goes to whatever the router says (threshold 0 with a fixed
    image or text routed strategy), else None. The routed forward then runs that expert alone."""
    if routed_strategy is None or threshold > 0.0:
        return None
    experts = STRATEGY_EXPERTS[Strategy.of(routed_strategy)]
    return experts[0] if len(experts) == 1 and experts[0] in DEBIAS_EXPERTS else None


def candidate_thresholds(router_logits: torch.Tensor, max_routed_share: float | None = None) -> list[float]:
    """Every threshold at which the routing of these samples changes (each sample's
    1 - P(none), plus 0 and 1), ascending, among those routing at most `max_routed_share` of
    them away from `none` (None: no limit); [1.0] when none qualifies."""
    away = away_scores(router_logits)
    ends = torch.tensor([0.0, 1.0], device=away.device, dtype=away.dtype)
    thresholds = torch.unique(torch.cat([away, ends])).tolist()
    return [t for t in thresholds if within_budget(away, t, max_routed_share)] or [1.0]


def within_budget(away: torch.Tensor, threshold: float, max_routed_share: float | None) -> bool:
    """Whether `threshold` sends at most `max_routed_share` of the samples (with these
    `away_scores`) away from `none` (None: always)."""
    return max_routed_share is None or float((away >= threshold).float().mean()) <= max_routed_share + 1e-9


# ---------------------------------------------------------------------- final logits


def combine_both(image_logits: torch.Tensor, text_logits: torch.Tensor, both_combination: str = "mean") -> torch.Tensor:
    """The `both` strategy's logits from the two debias experts' (scaled) logits."""
    if both_combination == "product":
        return F.log_softmax(image_logits, -1) + F.log_softmax(text_logits, -1)
    if both_combination == "mean":
        return (image_logits + text_logits) / 2
    raise ValueError(f"unknown both_combination {both_combination!r}; choose one of {list(BOTH_COMBINATIONS)}.")


def combine(strategy: torch.Tensor, expert_logits: Mapping[str, torch.Tensor], both_combination: str = "mean",
            temperatures: Mapping[str, float] | None = None) -> torch.Tensor:
    """The routed mixture's final logits [B, C]: per row, its strategy's experts' logits, each
    divided by the expert's temperature (1 unless `temperatures` names it).

    expert_logits: {"general", "image_debias", "text_debias"} → [B, C]; rows whose strategy does
        not use an expert are never read (NaN there, as the routed forward leaves them, is fine).
    """
    temperatures = temperatures or {}
    scaled = {name: logits / float(temperatures.get(name, 1.0)) for name, logits in expert_logits.items()}
    final = scaled["general"].clone()
    for value in (Strategy.IMAGE, Strategy.TEXT):
        rows = strategy == value
        final[rows] = scaled[STRATEGY_EXPERTS[value][0]][rows]
    rows = strategy == Strategy.BOTH
    if rows.any():
        image, text = STRATEGY_EXPERTS[Strategy.BOTH]
        final[rows] = combine_both(scaled[image][rows], scaled[text][rows], both_combination)
    return final


def expected_cost(strategy: torch.Tensor, routed_strategy: str | None, threshold: float) -> float:
    """Passes per sample of the routed forward at this routing: one general pass plus each
    debias expert's rows (a `both` row runs both); one pass when every sample goes to one
    expert whatever the router says (`single_routed_expert`: the general pass is skipped)."""
    if single_routed_expert(routed_strategy, threshold) is not None:
        return 1.0
    return 1.0 + sum(float(needs_expert(strategy, expert).float().mean()) for expert in DEBIAS_EXPERTS)


# ---------------------------------------------------------------------- router targets


def strategy_targets(labels: torch.Tensor, expert_logits: Mapping[str, torch.Tensor],
                     both_combination: str = "mean") -> torch.Tensor:
    """The cheapest right strategy per sample [B]: the router's training target, and the truth
    its evaluation report measures it against (one rule for both).

    expert_logits: every expert's logits on every sample ({"general", "image_debias",
        "text_debias"} → [B, C], e.g. a `return_experts=True` forward).
    `none` where the general expert is right, or where no strategy is; else image or text,
    which cost the same (one expert pass): the right one, and where both are right the one
    more confident in the true label (P(y), ties to image); else `both` when the `both`
    combination of the two is right.
    """
    labels = labels.to(expert_logits["general"].device)
    image_logits, text_logits = expert_logits["image_debias"], expert_logits["text_debias"]
    general_right = expert_logits["general"].argmax(-1) == labels
    image_right = image_logits.argmax(-1) == labels
    text_right = text_logits.argmax(-1) == labels
    both_right = combine_both(image_logits, text_logits, both_combination).argmax(-1) == labels
    image_confidence = image_logits.float().softmax(-1).gather(1, labels[:, None])[:, 0]
    text_confidence = text_logits.float().softmax(-1).gather(1, labels[:, None])[:, 0]
    prefer_text = text_right & (~image_right | (text_confidence > image_confidence))
    out = torch.full_like(labels, Strategy.NONE)
    out = torch.where(~general_right & both_right, torch.full_like(out, Strategy.BOTH), out)
    out = torch.where(~general_right & text_right, torch.full_like(out, Strategy.TEXT), out)
    out = torch.where(~general_right & image_right & ~prefer_text, torch.full_like(out, Strategy.IMAGE), out)
    return out


__all__ = ["BOTH_COMBINATIONS", "DEBIAS_EXPERTS", "ROUTED_STRATEGY_NAMES", "STRATEGY_EXPERTS", "STRATEGY_NAMES",
           "Strategy", "away_scores", "candidate_thresholds", "combine", "combine_both", "expected_cost",
           "needs_expert", "route", "single_routed_expert", "usable_strategies", "strategy_targets", "within_budget"]
