"""Inference wall time: one timing loop (`time_variants`) for the bench and
`bench/inference_cost.py`, what a routed pass spends in each expert (`expert_seconds`), and
the inference variants of one trained model (`measure_inference`).

A variant that routes or executes the experts otherwise than the trained model's config runs on
`configured_copy(model, ...)`: the model's forward reads its routing from its config, and the
trained model itself is never changed.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import torch


class Routing(NamedTuple):
    """A routing of a trained router: samples with 1 - P(none) >= `threshold` leave `none` and
    get `routed_strategy` (None: the router's most probable debias strategy)."""

    threshold: float
    routed_strategy: str | None


def configured_copy(model, **config_fields: Any):
    """`model` itself when its config already has `config_fields`, else an independent copy of
    it (the same weights, copied) whose config has them (validated).

    The bench's way to run one trained model under another routing (`router_threshold`,
    `routed_strategy`), another `expert_execution` or without `reuse_image_features`: the
    model's forward reads these from its config, and the trained model must not change."""
    if all(getattr(model.config, name) == value for name, value in config_fields.items()):
        return model
    variant = copy.deepcopy(model)
    for name, value in config_fields.items():
        setattr(variant.config, name, value)
    variant.config.validate_fields()
    return variant.eval()


def routed_copy(model, routing: Routing):
    """`configured_copy` of `model` at `routing`, routed execution."""
    return configured_copy(model, router_threshold=float(routing.threshold), routed_strategy=routing.routed_strategy,
                           expert_execution="routed")


def time_variants(run: Callable[[str], None], names: Sequence[str], repeats: int) -> dict[str, list[float]]:
    """Wall seconds of `run(name)` for each name: one warm-up call each, then `repeats` rounds
    in rotating order (no variant always runs first or last). Returns every round's seconds."""
    names = list(names)
    for name in names:  # warm-up
        run(name)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            run(name)
            seconds[name].append(time.perf_counter() - started)
    return seconds


def medians(seconds: dict[str, list[float]]) -> dict[str, float]:
    """The median of each variant's rounds."""
    return {name: statistics.median(values) for name, values in seconds.items()}


@contextlib.contextmanager
def expert_seconds(model) -> Iterator[dict[str, dict[str, float]]]:
    """Within the block, every pass of `model`'s experts through the base (the language model,
    and the vision tower unless its features are reused) is timed: yields
    {expert: {"seconds", "rows", "calls"}}, filled as the passes run. Forward hooks on the
    base; the adapter switch and the class head count outside the expert's time."""
    inner = model.base_model_with_experts.model
    experts: dict[str, dict[str, float]] = {}
    started: list[tuple[str, int, float]] = []

    def before(module, args, kwargs):
        name = model.vlm.active_adapters[0]
        rows = (kwargs.get("input_ids") if "input_ids" in kwargs else args[0]).shape[0]
        started.append((name, int(rows), time.perf_counter()))

    def after(module, args, kwargs, output):
        name, rows, start = started.pop()
        entry = experts.setdefault(name, {"seconds": 0.0, "rows": 0, "calls": 0})
        entry["seconds"] += time.perf_counter() - start
        entry["rows"] += rows
        entry["calls"] += 1

    handles = [inner.register_forward_pre_hook(before, with_kwargs=True),
               inner.register_forward_hook(after, with_kwargs=True)]
    try:
        yield experts
    finally:
        for handle in handles:
            handle.remove()


def prepared_batches(collator, rows, batch_size: int) -> list[dict]:
    """`rows` collated once into model inputs (labels and per-row metadata dropped)."""
    batches = []
    for start in range(0, len(rows), batch_size):
        batch = collator([rows[i] for i in range(start, min(start + batch_size, len(rows)))])
        for key in ("metadata", "labels", "counterfactual_targets", "text_counterfactual_valid"):
            batch.pop(key, None)
        batches.append(batch)
    return batches


def measure_inference(model, rows, batch_size: int = 64, repeats: int = 5,
                      variants: Sequence[str] = ("general", "mme_jd_routed", "mme_jd_all", "mid"),
                      routings: dict[str, Routing] | None = None) -> dict:
    """Wall time of each inference variant over the same pre-collated batches of `rows`.

    Variants: "general" (one general forward), "mme_jd_routed", "mme_jd_all"
    (`expert_execution="all"`), "mid" (the batched pass over originals + both counterfactuals),
    "mme_jd_<name>" (routed at `routings[name]`, a `Routing` or (threshold, routed strategy)).
    Collation is timed separately (for MID it builds the counterfactuals, image saliency
    included). `time_variants` times them; the median is kept. An instrumented extra round
    splits each mixture's time into its experts' passes and the rest (router, heads, adapter
    switches, gathering).
    """
    from ..data.collator import CounterfactualTripleCollator

    processor = model.processor
    model.eval()
    routings = {name: Routing(*routing) for name, routing in (routings or {}).items()}
    unknown = [v for v in variants if v.startswith("mme_jd_") and v not in ("mme_jd_routed", "mme_jd_all")
               and v.removeprefix("mme_jd_") not in routings]
    if unknown:
        raise ValueError(f"variants {unknown} need their (threshold, routed strategy) in routings.")
    collate_seconds: dict[str, float] = {}
    started = time.perf_counter()
    plain_batches = prepared_batches(CounterfactualTripleCollator(processor, model.config,
                                                                  include_counterfactuals=False), rows, batch_size)
    collate_seconds["plain"] = time.perf_counter() - started
    mid_batches: list[dict] = []
    if "mid" in variants:
        counterfactual = CounterfactualTripleCollator(processor, model.config, parts=("text", "image"),
                                                      text_counterfactual="lexical", saliency_model=model)
        started = time.perf_counter()
        mid_batches = prepared_batches(counterfactual, rows, batch_size)
        collate_seconds["counterfactual"] = time.perf_counter() - started

    # each variant: (the model it runs on, its mode, its batches)
    plan: dict[str, tuple[Any, str, list[dict]]] = {}
    for variant in variants:
        if variant == "general":
            plan[variant] = (model, "general", plain_batches)
        elif variant == "mid":
            plan[variant] = (model, "mid", mid_batches)
        elif variant == "mme_jd_all":
            plan[variant] = (configured_copy(model, expert_execution="all"), "mme_jd", plain_batches)
        elif variant == "mme_jd_routed":
            plan[variant] = (configured_copy(model, expert_execution="routed"), "mme_jd", plain_batches)
        else:
            plan[variant] = (routed_copy(model, routings[variant.removeprefix("mme_jd_")]), "mme_jd", plain_batches)

    def run(variant: str) -> None:
        runner, mode, batches = plan[variant]
        with torch.no_grad():
            for batch in batches:
                runner(**batch, mode=mode)

    seconds = time_variants(run, variants, repeats)
    median = medians(seconds)
    count = len(rows)
    general = median.get("general")
    result: dict[str, Any] = {
        "rows": count, "batch_size": batch_size, "repeats": repeats, "threads": torch.get_num_threads(),
        "seconds": {v: round(s, 4) for v, s in median.items()},
        "all_seconds": {v: [round(s, 4) for s in values] for v, values in seconds.items()},
        "seconds_per_1000": {v: round(1000 * s / count, 4) for v, s in median.items()},
        "samples_per_second": {v: round(count / s, 1) for v, s in median.items()},
        "collate_seconds": {k: round(v, 4) for k, v in collate_seconds.items()},
    }
    if general:
        result["ratio_to_general"] = {v: round(s / general, 4) for v, s in median.items()}
        end_to_end_general = general + collate_seconds["plain"]
        result["end_to_end_ratio_to_general"] = {
            v: round((s + collate_seconds["counterfactual" if v == "mid" else "plain"]) / end_to_end_general, 4)
            for v, s in median.items()}
    breakdown = {}
    for variant in [v for v in variants if v.startswith("mme_jd")]:
        breakdown[variant] = _breakdown(plan[variant][0], lambda: run(variant))
    result["breakdown"] = breakdown
    if "mme_jd_routed" in breakdown:
        calls = breakdown["mme_jd_routed"]["experts"]
        routed_rows = sum(calls[name]["rows"] for name in ("image_debias", "text_debias") if name in calls)
        result["debias_rows_per_sample"] = round(routed_rows / count, 4)
    return result


def _breakdown(model, run: Callable[[], None]) -> dict:
    """One instrumented pass: seconds, rows and calls of each expert's pass, and the rest."""
    with expert_seconds(model) as experts:
        started = time.perf_counter()
        run()
        total = time.perf_counter() - started
    other = total - sum(e["seconds"] for e in experts.values())
    return {"total_seconds": round(total, 4),
            "experts": {n: {**e, "seconds": round(e["seconds"], 4), "share": round(e["seconds"] / total, 4)}
                        for n, e in experts.items()},
            "other_seconds": round(other, 4), "other_share": round(other / total, 4)}
