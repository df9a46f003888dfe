"""`make bench`: every method on the synthetic benchmark, in one run, on one base and one data set.

    python -m mme_jd.bench            # 3 seeds, 6000 training rows, 3 epochs  (about 30 min, 2 cores)
    python -m mme_jd.bench --quick    # 1 seed, 3000 training rows, 3 epochs   (under 10 minutes)

For each seed (the seed makes the data AND the training seed), on the pretrained tiny base
(`mme_jd.tiny.pretrained_tiny_model`), the synthetic benchmark at p_cue 0.97 / label noise 0.1
and `TrainingArguments(per_device_train_batch_size=64, learning_rate=2e-3, warmup_steps=10, ...)`
with `MMEJDTrainingConfig`'s defaults (why these: `bench/lr_sensitivity.py` and the README):

    method               how it is obtained
    ERM                  the general expert of the `mme_jd` run (plain fine-tuning; trained once)
    Oracle               recipe "general" on `train_cue_free` (no cue correlation in training),
                         trained for `oracle_epochs` (to convergence: it is the ceiling)
    MID                  the `mme_jd` run's general expert with λ_t, λ_v fitted on validation_balanced
    MCTD                 recipe "mctd"
    MME-JD routed        the `mme_jd` run, routed inference (debias experts only for routed rows),
                         its routing tuned by the router stage with the defaults: the cheapest
                         within `router_cost_tolerance` (0.01) of the best validation worst-group
                         accuracy
    MME-JD all experts   the same model with `expert_execution="all"` (the paper's: every expert)
    MME-JD routed (budget)  the same model, router threshold re-tuned on validation_balanced to
                         route at most `routed_budget` (0.25) of it: an inference-cost budget
    MME-JD routed (best WGA)  the same model, routing re-tuned on validation_balanced for the best
                         worst-group accuracy whatever it costs (`router_cost_tolerance=0`)
    JTT                  `training.peers.train_jtt` (upweight chosen on validation_balanced)
    Group DRO            `training.peers.train_group_dro` (η chosen on validation_balanced)
    image/text_debias    each debias expert alone (ablation rows of the `mme_jd` run)
    ... (random masks)   random-mask controls of every counterfactual recipe (MID, MCTD, MME-JD):
                         the same recipe with text and image counterfactuals whose masked words and
                         patches are chosen at random, as many per row as the real builder masks
                         (precomputed `text_counterfactual` / `image_counterfactual_mask` columns,
                         which the collator uses when present)

Figures, per method: accuracy and F1 on test_id / test_ood / test_balanced, worst-group accuracy
(test_balanced, label × text cue × image cue), reliance (test_balanced: share of predictions equal
to the model's general expert's prediction on the cue-only counterfactual: content words masked /
salient patches masked, computed once per split from ERM's saliency, so every method, controls
included, is measured on the same inputs),
training time as a ratio to ERM's, inference time per sample as a ratio to one general forward
and samples per second. Knobs are chosen on validation_balanced, never on a test split.

Inference cost (`measure_inference`): on test_balanced, in the same process, over the same
pre-collated batches, warm-up first, `timing_repeats` repeats, median: one general forward,
routed MME-JD, all-experts MME-JD, MID; plus where the routed time goes (the general pass, each
debias expert's sub-batches, the rest).

Writes `<output_dir>/<name>_seed<S>.json` per seed, `<name>.json` (mean ± std), `<name>.md`
(the tables), atomically, and the README section between `<!-- bench:synthetic:start -->` and
`<!-- bench:synthetic:end -->` (a quick run writes `synthetic_quick*` and touches the README only
when no full result exists).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .files import atomic_write_text
from .provenance import describe_environment, run_environment

TEST_SPLITS = ("test_id", "test_ood", "test_balanced")
DATA_SPLITS = ("train", "train_cue_free", "validation_balanced", *TEST_SPLITS)
README_START = "<!-- bench:synthetic:start -->"
README_END = "<!-- bench:synthetic:end -->"

#: Method names in table order, with how each is obtained.
METHODS: dict[str, str] = {
    "ERM": "general expert of the mme_jd run (plain fine-tuning)",
    "Oracle": "recipe general on train_cue_free, trained to convergence (oracle_epochs)",
    "JTT": "ERM errors of a short first phase upweighted, retrained",
    "Group DRO": "online group weights over label x cue groups",
    "MID": "general expert minus lambda-weighted cue-only logits (lambda fitted on validation_balanced)",
    "MCTD": "recipe mctd (counterfactuals with reversed targets)",
    "MME-JD routed": "mme_jd run, routed inference",
    "MME-JD all experts": "mme_jd run, expert_execution='all' (the paper's)",
    "MME-JD routed (budget)": "mme_jd run, router threshold re-tuned on validation_balanced to route at most "
                              "`routed_budget` of it (an inference-cost budget)",
    "MME-JD routed (best WGA)": "mme_jd run, routing re-tuned on validation_balanced for the best worst-group "
                                "accuracy whatever it costs (router_cost_tolerance 0)",
    "image_debias expert": "ablation: the image_debias expert alone",
    "text_debias expert": "ablation: the text_debias expert alone",
    "MID (random masks)": "control: MID with random masks of the same counts",
    "MCTD (random masks)": "control: MCTD trained on random masks of the same counts",
    "MME-JD (random masks)": "control: MME-JD debias experts trained on random masks, routed",
}

#: Figures of one split kept for the tables (from `evaluation.run.headline_figures`).
FIGURES = ("accuracy", "f1", "macro_f1", "worst_group_accuracy", "group_average_accuracy", "reliance_text",
           "reliance_image", "ece")


@dataclass
class BenchSettings:
    """The budget of one bench run. `for_run(quick)` gives the defaults of each variant."""

    quick: bool = False
    seeds: tuple[int, ...] = (0, 1, 2)
    num_train: int = 6000
    num_test: int = 1000
    num_validation_balanced: int = 400
    # the benchmark's spurious correlation in training (P(cue agrees with the label)) and label
    # noise. At p_cue 0.9 the cues are no more predictive than the core (label noise 0.1), and ERM
    # at lr <= 2e-3 learns the core (seed 0: WGA 0.94-0.96; bench/lr_sensitivity.py); at 0.97 it
    # takes the shortcut at lr 2e-3 (WGA 0.50) with a stable optimisation
    p_cue: float = 0.97
    label_noise: float = 0.1
    epochs: float = 3.0
    # the oracle is the ceiling, so it is trained longer: at lr 5e-3, 3 epochs leave it far from
    # converged (seed 0: WGA 0.44, bench/results/lr_sensitivity.md); None: `epochs`
    oracle_epochs: float | None = 9.0
    max_steps: int = -1
    batch_size: int = 64
    # at 5e-3 the 3-epoch oracle does not converge (bench/results/lr_sensitivity.md); 2e-3 does
    learning_rate: float = 2e-3
    warmup_steps: int = 10
    inference_batch_size: int = 256
    jtt_upweights: tuple[int, ...] = (3, 6)
    # JTT's first (ERM) phase; None: two thirds of `epochs`. On the pretrained tiny base the
    # loss sits at chance through the first epoch. After 2 epochs the error set (12-16% of the
    # rows) is 59-78% noisy-label rows, whose cues follow the noisy label, and only 5-7%
    # cue-conflicting rows (bench/jtt_error_set.py): upweighting it teaches the cue, which is
    # why JTT falls below ERM here
    jtt_first_epochs: float | None = None
    group_dro_step_sizes: tuple[float, ...] = (0.01, 0.1)
    timing_batch_size: int = 64
    timing_repeats: int = 5
    timing_rows: int | None = None  # None: the whole test_balanced split
    # the share of validation samples "MME-JD routed (budget)" may send to a debias expert
    routed_budget: float = 0.25
    # the mme_jd run's `router_cost_tolerance` (None: MMEJDConfig's default, 0.01): its routing
    # is the cheapest within this of the best validation WGA
    routed_cost_tolerance: float | None = None
    # torch threads: the tiny model gains nothing from a second thread, and on shared cores
    # extra threads slowed every pass several times over (None: torch's default)
    num_threads: int | None = 1
    training_overrides: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_run(cls, quick: bool = False, **overrides: Any) -> "BenchSettings":
        values: dict[str, Any] = {}
        if quick:
            # 3000 rows x 3 epochs: the fewest with which ERM already leans on the cues and MME-JD
            # removes them, as in the full run (1500 rows x 1 epoch left every method at chance)
            values.update(seeds=(0,), num_train=3000, num_test=500, epochs=3.0, jtt_upweights=(6,),
                          group_dro_step_sizes=(0.1,), timing_repeats=3)
        values.update({k: v for k, v in overrides.items() if v is not None})
        for name in ("seeds", "jtt_upweights", "group_dro_step_sizes"):
            if name in values:
                values[name] = tuple(values[name])
        return cls(quick=quick, **values)

    @property
    def first_epochs(self) -> float:
        if self.jtt_first_epochs is None:
            return round(2 * self.epochs / 3, 4)
        return min(self.jtt_first_epochs, self.epochs)


# ---------------------------------------------------------------------------- small helpers


def _write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, default=str) + "\n", make_parents=True)


def _say(message: str) -> None:
    print(f"[bench] {message}", flush=True)


def _training_arguments(settings: BenchSettings, seed: int, output_dir: str, epochs: float | None = None):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=settings.batch_size,
        num_train_epochs=settings.epochs if epochs is None else epochs,
        max_steps=settings.max_steps, learning_rate=settings.learning_rate, warmup_steps=settings.warmup_steps,
        save_strategy="no", report_to="none", use_cpu=True, seed=seed, disable_tqdm=True, logging_steps=100,
    )


def _training_config(settings: BenchSettings, **fields: Any):
    from .training.run import MMEJDTrainingConfig

    return MMEJDTrainingConfig(**{**settings.training_overrides, **fields})


def _fresh_model(model_factory: Callable[[], Any], seed: int, settings: BenchSettings | None = None):
    """A new model from the factory with the seed set first (same LoRA init for every method),
    with the bench's routing tolerance when it sets one (only the router stage reads it)."""
    from transformers import set_seed

    set_seed(seed)
    model = model_factory().eval()
    if settings is not None and settings.routed_cost_tolerance is not None:
        model.config.router_cost_tolerance = settings.routed_cost_tolerance
        model.config.validate_fields()
    return model


def _training_seconds(report: dict) -> float:
    """Training wall time of a `train()` report: the sum of its stages' `seconds_total` (each
    stage's work, image-mask precomputation and λ fit included; checkpoint writing and stages
    skipped on resume excluded)."""
    return sum(stage.get("seconds_total", 0.0) for stage in report["stages"] if "resumed" not in stage)


def _strip_log(log: Any) -> Any:
    """A training log without its long lists (losses, histories, error indices)."""
    if isinstance(log, dict):
        return {k: _strip_log(v) for k, v in log.items()
                if k not in ("losses", "group_weight_history", "group_loss_history", "error_indices", "settings")}
    if isinstance(log, list):
        return [_strip_log(v) for v in log]
    return log


# ---------------------------------------------------------------------------- random-mask controls


def random_counterfactual_columns(rows, model, processor, text_builder: str, seed: int):
    """`rows` with the columns `text_counterfactual`, `text_mask_positions` and
    `image_counterfactual_mask` of the random-mask control.

    Text: the real builder (`text_builder`: "swap", "lexical", ...) decides how many words a
    row's counterfactual changes; the control masks that many words chosen at random (with the
    model's mask word; none where the builder changes none). Image: as many patches as the
    attention builder masks (`image_mask_ratio` of the image tokens, at least one) chosen at
    random. All images of the synthetic benchmark have one size, so one token grid serves all.
    """
    from .data.lexicon import load_lexicon
    from .modeling.counterfactual_mme_jd import call_processor, image_token_grids, text_counterfactuals
    from .training.run import _vocabulary

    config = model.config
    texts = list(rows["text"])
    lexicon = load_lexicon() if text_builder == "swap" else None
    built = text_counterfactuals(texts, text_builder, config.mask_word, lexicon=lexicon,
                                 vocabulary=_vocabulary(processor, True), ratio=config.text_mask_ratio,
                                 core_positions=rows["core_word_positions"] if text_builder == "given" else None)
    rng = np.random.default_rng(seed)
    random_texts, positions = [], []
    for text, (_, changed) in zip(texts, built):
        words = text.split()
        chosen = sorted(rng.choice(len(words), size=min(len(changed), len(words)), replace=False).tolist())
        masked = set(chosen)
        random_texts.append(" ".join(config.mask_word if i in masked else w for i, w in enumerate(words)))
        positions.append(chosen)
    sample = call_processor(processor, config, texts[:1], [rows[0]["image"]])
    grid_rows, grid_cols = image_token_grids(config, sample)[0]
    tokens = grid_rows * grid_cols
    count = max(1, round(config.image_mask_ratio * tokens))
    masks = []
    for _ in range(len(rows)):
        mask = np.zeros(tokens, dtype=bool)
        mask[rng.choice(tokens, size=count, replace=False)] = True
        masks.append(mask.tolist())
    for name in ("text_counterfactual", "text_mask_positions", "image_counterfactual_mask"):
        if name in rows.column_names:
            rows = rows.remove_columns(name)
    return (rows.add_column("text_counterfactual", random_texts).add_column("text_mask_positions", positions)
            .add_column("image_counterfactual_mask", masks))


def _random_dataset(data, model, processor, config, seed: int, splits: Sequence[str]):
    """A copy of `data` whose `splits` carry random-mask columns: the training split with the
    training text builder's counts, the others with MID's text builder's counts."""
    import datasets

    out = {}
    for index, split in enumerate(data):
        if split in splits:
            builder = config.text_counterfactual if split == config.train_split else config.mid_text_counterfactual
            out[split] = random_counterfactual_columns(data[split], model, processor, builder, seed * 1000 + index)
        else:
            out[split] = data[split]
    return datasets.DatasetDict(out)


# ---------------------------------------------------------------------------- evaluation


class _SplitEvaluator:
    """Evaluators of the test splits (built once; every method's outputs share the row order)."""

    def __init__(self, data, num_labels: int):
        from .evaluation.diagnostics import Evaluator
        from .evaluation.run import synthetic_group_names

        self.evaluators = {}
        for split in TEST_SPLITS:
            rows = data[split]
            self.evaluators[split] = Evaluator(np.asarray(rows["label"]), groups=np.asarray(rows["group"]),
                                               group_names=synthetic_group_names(rows, num_labels),
                                               num_labels=num_labels)

    def figures(self, split: str, logits: torch.Tensor, cue_only: dict[str, torch.Tensor]) -> dict[str, Any]:
        from .evaluation.run import headline_figures, prediction_figures

        return headline_figures(prediction_figures(self.evaluators[split], logits, cue_only))


def _collect(model, rows, settings: BenchSettings, mode: str, **kwargs) -> dict[str, torch.Tensor]:
    from .inference import collect_outputs

    return collect_outputs(model, model.processor, rows, batch_size=settings.inference_batch_size, mode=mode,
                           **kwargs)


def _cue_only_pass(model, rows, settings: BenchSettings) -> dict[str, torch.Tensor]:
    """A mode "mid" pass: general logits, the cue-only counterfactuals' logits and MID's logits
    (lexical text counterfactual, the model's image saliency)."""
    return _collect(model, rows, settings, "mid", counterfactual_parts=("text", "image"),
                    text_counterfactual="lexical")


def cue_only_columns(model, rows, config) -> Any:
    """`rows` with the cue-only counterfactuals precomputed as columns: `text_counterfactual`
    (content words masked: the lexical builder) and `image_counterfactual_mask` (the top
    `image_mask_ratio` patches by `model`'s general-expert saliency, `config.image_counterfactual`).
    Computed once per split from the ERM model, so every method is measured on the same inputs."""
    from .modeling.counterfactual_mme_jd import lexical_text_counterfactual
    from .training.run import precompute_image_masks

    built = [lexical_text_counterfactual(text, model.config.mask_word) for text in rows["text"]]
    for name in ("text_counterfactual", "text_mask_positions", "image_counterfactual_mask"):
        if name in rows.column_names:
            rows = rows.remove_columns(name)
    rows = precompute_image_masks(model, model.processor, rows, config)
    return (rows.add_column("text_counterfactual", [text for text, _ in built])
            .add_column("text_mask_positions", [positions for _, positions in built]))


def _cue_only(outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"text": outputs["text_counterfactual_logits"], "image": outputs["image_counterfactual_logits"]}


def _evaluate_single(model, cue_data, settings: BenchSettings, evaluator: _SplitEvaluator) -> dict[str, dict]:
    """Figures of a one-forward model (its general expert) on every test split (`cue_data`: the
    splits with the cue-only counterfactual columns)."""
    figures = {}
    for split in TEST_SPLITS:
        outputs = _cue_only_pass(model, cue_data[split], settings)
        figures[split] = evaluator.figures(split, outputs["general_logits"], _cue_only(outputs))
    return figures


def _validation_wga(model, data, settings: BenchSettings) -> float:
    from .training.mid import worst_group_accuracy

    outputs = _collect(model, data["validation_balanced"], settings, "general")
    return worst_group_accuracy(outputs["logits"].argmax(-1), outputs["labels"], outputs["groups"])


# ---------------------------------------------------------------------------- inference cost


def _expert_logits(outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: outputs[f"{name}_logits"] for name in ("general", "image_debias", "text_debias")}


def alternative_routings(model, rows, settings: BenchSettings) -> dict[str, tuple[float, str | None]]:
    """Two re-tunings of the trained router on `rows` (validation_balanced), from one pass:
    "budget", the threshold with the best worst-group accuracy among those routing at most
    `settings.routed_budget` of the rows (the routed strategy stays the router stage's); and
    "best_wga", the (threshold, routed strategy) with the best worst-group accuracy whatever it
    costs (ties: the cheapest). Each as (threshold, routed strategy)."""
    from .training.router_labels import cheapest_routing, tune_threshold_for_groups

    outputs = _collect(model, rows, settings, "mme_jd", return_experts=True)
    experts, labels, groups = _expert_logits(outputs), outputs["labels"], outputs.get("groups")
    budget, _ = tune_threshold_for_groups(model, outputs["router_logits"], experts, labels, groups,
                                          max_routed_share=settings.routed_budget)
    best = cheapest_routing(model, outputs["router_logits"], experts, labels, groups, tolerance=0.0)
    return {"budget": (budget, model.config.routed_strategy),
            "best_wga": (best["threshold"], best["routed_strategy"])}


def _prepared_batches(collator, rows, batch_size: int) -> list[dict]:
    batches = []
    for start in range(0, len(rows), batch_size):
        batch = collator([rows[i] for i in range(start, min(start + batch_size, len(rows)))])
        for key in ("metadata", "labels", "counterfactual_targets", "text_counterfactual_valid"):
            batch.pop(key, None)
        batches.append(batch)
    return batches


def measure_inference(model, rows, batch_size: int = 64, repeats: int = 5,
                      variants: Sequence[str] = ("general", "mme_jd_routed", "mme_jd_all", "mid"),
                      routings: dict[str, tuple[float, str | None]] | None = None) -> dict:
    """Wall time of each inference variant over the same pre-collated batches of `rows`.

    Variants: "general" (one general forward), "mme_jd_routed", "mme_jd_all"
    (`expert_execution="all"`), "mid" (the batched pass over originals + both counterfactuals),
    "mme_jd_<name>" (routed at `routings[name]` = (threshold, routed strategy)).
    Collation is timed separately (for MID it builds the counterfactuals, image saliency
    included). One warm-up pass per variant, then `repeats` rounds in rotating order; the
    median is kept. An instrumented extra round splits the mixture's time into the general
    pass, each debias expert's sub-batches and the rest (router, gathering).
    """
    from .data.collator import CounterfactualTripleCollator

    processor = model.processor
    model.eval()
    plain = CounterfactualTripleCollator(processor, model.config, include_counterfactuals=False)
    counterfactual = CounterfactualTripleCollator(processor, model.config, parts=("text", "image"),
                                                  text_counterfactual="lexical", saliency_model=model)
    collate_seconds: dict[str, float] = {}
    started = time.perf_counter()
    plain_batches = _prepared_batches(plain, rows, batch_size)
    collate_seconds["plain"] = time.perf_counter() - started
    mid_batches: list[dict] = []
    if "mid" in variants:
        started = time.perf_counter()
        mid_batches = _prepared_batches(counterfactual, rows, batch_size)
        collate_seconds["counterfactual"] = time.perf_counter() - started
    execution, threshold, routed = (model.config.expert_execution, model.config.router_threshold,
                                    model.config.routed_strategy)
    routings = routings or {}
    unknown = [v for v in variants if v.startswith("mme_jd_") and v not in ("mme_jd_routed", "mme_jd_all")
               and v[len("mme_jd_"):] not in routings]
    if unknown:
        raise ValueError(f"variants {unknown} need their (threshold, routed strategy) in routings.")

    def run(variant: str) -> None:
        batches = mid_batches if variant == "mid" else plain_batches
        mode = "general" if variant == "general" else "mid" if variant == "mid" else "mme_jd"
        model.config.expert_execution = "all" if variant == "mme_jd_all" else "routed"
        routing = routings.get(variant.removeprefix("mme_jd_"))
        if routing is not None:
            model.config.router_threshold, model.config.routed_strategy = routing
        try:
            with torch.no_grad():
                for batch in batches:
                    model(**batch, mode=mode)
        finally:
            model.config.expert_execution, model.config.router_threshold = execution, threshold
            model.config.routed_strategy = routed

    for variant in variants:  # warm-up
        run(variant)
    seconds: dict[str, list[float]] = {v: [] for v in variants}
    for repeat in range(repeats):
        order = list(variants[repeat % len(variants):]) + list(variants[:repeat % len(variants)])
        for variant in order:
            started = time.perf_counter()
            run(variant)
            seconds[variant].append(time.perf_counter() - started)
    median = {v: statistics.median(values) for v, values in seconds.items()}
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
        breakdown[variant] = _timed_breakdown(model, run, variant)
    result["breakdown"] = breakdown
    if "mme_jd_routed" in breakdown:
        calls = breakdown["mme_jd_routed"]["experts"]
        routed_rows = sum(calls[name]["rows"] for name in ("image_debias", "text_debias") if name in calls)
        result["debias_rows_per_sample"] = round(routed_rows / count, 4)
    return result


def _timed_breakdown(model, run: Callable[[str], None], variant: str) -> dict:
    """One instrumented pass: seconds, rows and calls of each expert's forward."""
    original = model.expert_forward
    experts: dict[str, dict[str, float]] = {}

    def timed(name, inputs, output_attentions=False, **kwargs):
        started = time.perf_counter()
        out = original(name, inputs, output_attentions, **kwargs)
        entry = experts.setdefault(name, {"seconds": 0.0, "rows": 0, "calls": 0})
        entry["seconds"] += time.perf_counter() - started
        entry["rows"] += int(inputs["input_ids"].shape[0])
        entry["calls"] += 1
        return out

    model.expert_forward = timed
    try:
        started = time.perf_counter()
        run(variant)
        total = time.perf_counter() - started
    finally:
        del model.expert_forward  # back to the class's method
    other = total - sum(e["seconds"] for e in experts.values())
    return {"total_seconds": round(total, 4),
            "experts": {n: {**e, "seconds": round(e["seconds"], 4), "share": round(e["seconds"] / total, 4)}
                        for n, e in experts.items()},
            "other_seconds": round(other, 4), "other_share": round(other / total, 4)}


# ---------------------------------------------------------------------------- one seed


def run_seed(seed: int, settings: BenchSettings, model_factory: Callable[[], Any], work_dir: Path,
             progress: Callable[[str], None] = _say) -> dict:
    """Train and evaluate every method on one seed's data. Returns the seed's JSON."""
    from .data.synthetic import make_synthetic_benchmark
    from .training.mid import fit_lambdas
    from .training.peers import restore_expert, snapshot_expert, train_group_dro, train_jtt
    from .training.router_labels import mixture_logits
    from .training.run import train

    seed_started = time.perf_counter()
    work_dir.mkdir(parents=True, exist_ok=True)
    data = make_synthetic_benchmark(num_train=settings.num_train, num_test=settings.num_test,
                                    num_validation_balanced=settings.num_validation_balanced, seed=seed,
                                    p_cue=settings.p_cue, label_noise=settings.label_noise, splits=DATA_SPLITS)
    progress(f"seed {seed}: data {', '.join(f'{k}={len(v)}' for k, v in data.items())}")
    methods: dict[str, dict[str, Any]] = {}
    training: dict[str, Any] = {}
    timing: dict[str, Any] = {}

    def add(name: str, figures: dict, seconds: float | None, inference_ratio: float | None = 1.0, **extra):
        methods[name] = {"splits": figures, "training_seconds": None if seconds is None else round(seconds, 2),
                         "inference_ratio": inference_ratio, **extra}

    # ---- mme_jd: ERM, MID, each expert, routed and all-experts MME-JD
    progress(f"seed {seed}: training mme_jd (ERM = its general expert)")
    model = _fresh_model(model_factory, seed, settings)
    evaluator = _SplitEvaluator(data, int(model.config.num_labels))
    config = _training_config(settings, recipe="mme_jd")
    report = train(model, data, _training_arguments(settings, seed, str(work_dir / "mme_jd")), config)
    training["mme_jd"] = _strip_log(report)
    stages = {stage["stage"]: stage for stage in report["stages"]}
    erm_seconds = stages["general"]["seconds_total"]
    mid_seconds = erm_seconds + stages["mid"]["seconds_total"]
    mme_jd_seconds = _training_seconds(report)
    lambdas = {"lambda_text": model.config.lambda_text, "lambda_image": model.config.lambda_image}
    progress(f"seed {seed}: mme_jd trained in {report['seconds']} s (ERM {erm_seconds} s); evaluating")
    per_split: dict[str, dict[str, dict]] = {name: {} for name in
                                             ("ERM", "MID", "image_debias expert", "text_debias expert",
                                              "MME-JD routed", "MME-JD all experts", "MME-JD routed (budget)",
                                              "MME-JD routed (best WGA)")}
    routed_shares: dict[str, Any] = {}
    cue_only_logits: dict[str, dict[str, torch.Tensor]] = {}
    identical = True
    cue_data = {split: cue_only_columns(model, data[split], config) for split in TEST_SPLITS}
    routings = alternative_routings(model, data["validation_balanced"], settings)
    alternative_shares: dict[str, dict[str, Any]] = {"budget": {}, "best_wga": {}}
    for split in TEST_SPLITS:
        rows = data[split]
        mid = _cue_only_pass(model, cue_data[split], settings)
        cue_only_logits[split] = _cue_only(mid)
        routed = _collect(model, rows, settings, "mme_jd")
        every = _collect(model, rows, settings, "mme_jd", return_experts=True)
        identical &= bool(torch.equal(routed["logits"].argmax(-1), every["logits"].argmax(-1)))
        named = {"ERM": mid["general_logits"], "MID": mid["logits"], "image_debias expert": every["image_debias_logits"],
                 "text_debias expert": every["text_debias_logits"], "MME-JD routed": routed["logits"],
                 "MME-JD all experts": every["logits"]}
        for name, logits in named.items():
            per_split[name][split] = evaluator.figures(split, logits, cue_only_logits[split])
        strategy = routed["strategy"]
        routed_shares[split] = {s: round(float((strategy == i).float().mean()), 4)
                                for i, s in enumerate(("none", "image", "text", "both"))}
        for name in ("MME-JD routed", "MME-JD all experts"):
            per_split[name][split]["routed_away"] = round(1 - routed_shares[split]["none"], 4)
        # the re-tuned routings' mixtures, from the all-experts logits (the routed forward's arithmetic)
        for key, name in (("budget", "MME-JD routed (budget)"), ("best_wga", "MME-JD routed (best WGA)")):
            threshold, routed = routings[key]
            previous, model.config.routed_strategy = model.config.routed_strategy, routed
            try:
                logits, strategy = mixture_logits(model, every["router_logits"], _expert_logits(every), threshold)
            finally:
                model.config.routed_strategy = previous
            per_split[name][split] = evaluator.figures(split, logits, cue_only_logits[split])
            alternative_shares[key][split] = {s: round(float((strategy == i).float().mean()), 4)
                                              for i, s in enumerate(("none", "image", "text", "both"))}
            per_split[name][split]["routed_away"] = round(1 - alternative_shares[key][split]["none"], 4)
    timing_rows = data["test_balanced"]
    if settings.timing_rows is not None:
        timing_rows = timing_rows.select(range(min(settings.timing_rows, len(timing_rows))))
    progress(f"seed {seed}: timing inference on {len(timing_rows)} rows ({settings.timing_repeats} repeats)")
    timing["mme_jd"] = measure_inference(model, timing_rows, settings.timing_batch_size, settings.timing_repeats,
                                         variants=("general", "mme_jd_routed", "mme_jd_all", "mme_jd_budget",
                                                   "mme_jd_best_wga", "mid"),
                                         routings=routings)
    ratios = timing["mme_jd"]["ratio_to_general"]
    knobs = {**lambdas, "router_threshold": float(model.config.router_threshold),
             "routed_strategy": model.config.routed_strategy,
             "router_cost_tolerance": model.config.router_cost_tolerance}
    add("ERM", per_split["ERM"], erm_seconds, 1.0)
    add("MID", per_split["MID"], mid_seconds, ratios["mid"], knobs=lambdas)
    add("image_debias expert", per_split["image_debias expert"], None, 1.0)
    add("text_debias expert", per_split["text_debias expert"], None, 1.0)
    add("MME-JD routed", per_split["MME-JD routed"], mme_jd_seconds, ratios["mme_jd_routed"], knobs=knobs,
        routed_shares=routed_shares)
    add("MME-JD all experts", per_split["MME-JD all experts"], mme_jd_seconds, ratios["mme_jd_all"],
        identical_predictions_to_routed=identical)
    add("MME-JD routed (budget)", per_split["MME-JD routed (budget)"], mme_jd_seconds, ratios["mme_jd_budget"],
        knobs={**lambdas, "router_threshold": routings["budget"][0], "routed_strategy": routings["budget"][1],
               "routed_budget": settings.routed_budget},
        routed_shares=alternative_shares["budget"])
    add("MME-JD routed (best WGA)", per_split["MME-JD routed (best WGA)"], mme_jd_seconds,
        ratios["mme_jd_best_wga"], knobs={**lambdas, "router_threshold": routings["best_wga"][0],
                                          "routed_strategy": routings["best_wga"][1], "router_cost_tolerance": 0.0},
        routed_shares=alternative_shares["best_wga"])

    # ---- MID with random masks: the same general expert, λ refitted on random counterfactuals
    progress(f"seed {seed}: MID random-mask control")
    random_data = _random_dataset(data, model, model.processor, config, seed,
                                  ("validation_balanced", *TEST_SPLITS))
    validation = _cue_only_pass(model, random_data["validation_balanced"], settings)
    fitted = fit_lambdas(validation["general_logits"], validation["text_counterfactual_logits"],
                         validation["image_counterfactual_logits"], validation["labels"], validation.get("groups"))
    figures = {}
    for split in TEST_SPLITS:
        outputs = _cue_only_pass(model, random_data[split], settings)
        logits = (outputs["general_logits"] - fitted["lambda_text"] * outputs["text_counterfactual_logits"]
                  - fitted["lambda_image"] * outputs["image_counterfactual_logits"])
        figures[split] = evaluator.figures(split, logits, cue_only_logits[split])
    add("MID (random masks)", figures, mid_seconds, ratios["mid"],
        knobs={"lambda_text": fitted["lambda_text"], "lambda_image": fitted["lambda_image"]})
    general_stage = work_dir / "mme_jd" / "stages" / "general"
    del model, random_data

    # ---- MME-JD with random masks (the general stage is the real run's: it sees no counterfactual)
    progress(f"seed {seed}: training mme_jd with random masks")
    model = _fresh_model(model_factory, seed, settings)
    random_data = _random_dataset(data, model, model.processor, config, seed, (config.train_split,
                                                                               "validation_balanced"))
    random_dir = work_dir / "mme_jd_random"
    shutil.rmtree(random_dir, ignore_errors=True)
    shutil.copytree(general_stage, random_dir / "stages" / "general")
    random_report = train(model, random_data, _training_arguments(settings, seed, str(random_dir)),
                          _training_config(settings, recipe="mme_jd"), resume_from_checkpoint=True)
    training["mme_jd_random"] = _strip_log(random_report)
    figures, shares = {}, {}
    for split in TEST_SPLITS:
        routed = _collect(model, data[split], settings, "mme_jd")
        figures[split] = evaluator.figures(split, routed["logits"], cue_only_logits[split])
        shares[split] = round(float((routed["strategy"] != 0).float().mean()), 4)
        figures[split]["routed_away"] = shares[split]
    random_timing = measure_inference(model, timing_rows, settings.timing_batch_size, settings.timing_repeats,
                                      variants=("general", "mme_jd_routed"))
    timing["mme_jd_random_masks"] = random_timing
    add("MME-JD (random masks)", figures, erm_seconds + _training_seconds(random_report),
        random_timing["ratio_to_general"]["mme_jd_routed"],
        knobs={"lambda_text": model.config.lambda_text, "lambda_image": model.config.lambda_image,
               "router_threshold": float(model.config.router_threshold),
               "routed_strategy": model.config.routed_strategy,
               "router_cost_tolerance": model.config.router_cost_tolerance})
    del model

    # ---- one-forward recipes: oracle, MCTD, MCTD with random masks
    for name, recipe, fields, dataset in (
        ("Oracle", "general", {"train_split": "train_cue_free"}, data),
        ("MCTD", "mctd", {}, data),
        ("MCTD (random masks)", "mctd", {}, None),
    ):
        progress(f"seed {seed}: training {name}")
        model = _fresh_model(model_factory, seed, settings)
        recipe_config = _training_config(settings, recipe=recipe, **fields)
        if dataset is None:
            dataset = _random_dataset(data, model, model.processor, recipe_config, seed, (recipe_config.train_split,))
        folder = work_dir / name.lower().replace(" ", "_").replace("(", "").replace(")", "")
        epochs = settings.oracle_epochs if name == "Oracle" and not settings.quick else None
        recipe_report = train(model, dataset, _training_arguments(settings, seed, str(folder), epochs), recipe_config)
        training[name] = _strip_log(recipe_report)
        add(name, _evaluate_single(model, cue_data, settings, evaluator), _training_seconds(recipe_report), 1.0)
        del model

    # ---- JTT: one first phase, the upweight chosen on validation_balanced
    progress(f"seed {seed}: training JTT (upweights {list(settings.jtt_upweights)})")
    model = _fresh_model(model_factory, seed, settings)
    initial = snapshot_expert(model, "general")
    jtt_args = _training_arguments(settings, seed, str(work_dir / "jtt"))
    started = time.perf_counter()
    best = None
    errors = None
    candidates = {}
    for upweight in settings.jtt_upweights:
        restore_expert(model, initial)
        if errors is None:
            log = train_jtt(model, data, jtt_args, upweight=upweight, first_epochs=settings.first_epochs)
            errors = log["error_indices"]
            first_seconds = log["first_phase_seconds"]
        else:
            log = train_jtt(model, data, jtt_args, upweight=upweight, error_indices=errors)
        wga = _validation_wga(model, data, settings)
        candidates[upweight] = {"validation_worst_group_accuracy": round(wga, 4),
                                "second_phase_seconds": log["second_phase_seconds"],
                                "train_rows": log["train_rows"]}
        if best is None or wga > best[0]:
            best = (wga, upweight, snapshot_expert(model, "general"), log)
    restore_expert(model, best[2])
    training["JTT"] = {**_strip_log(best[3]), "candidates": candidates}
    jtt_seconds = first_seconds + best[3]["second_phase_seconds"]
    add("JTT", _evaluate_single(model, cue_data, settings, evaluator), jtt_seconds, 1.0,
        knobs={"upweight": best[1], "first_epochs": settings.first_epochs, "num_errors": best[3]["num_errors"],
               "error_share": round(best[3]["error_share"], 4)},
        selection_seconds=round(time.perf_counter() - started, 2))
    del model

    # ---- Group DRO: η chosen on validation_balanced
    progress(f"seed {seed}: training Group DRO (step sizes {list(settings.group_dro_step_sizes)})")
    model = _fresh_model(model_factory, seed, settings)
    initial = snapshot_expert(model, "general")
    best = None
    candidates = {}
    for step_size in settings.group_dro_step_sizes:
        restore_expert(model, initial)
        started = time.perf_counter()
        log = train_group_dro(model, data, _training_arguments(settings, seed, str(work_dir / "group_dro")),
                              step_size=step_size)
        log["seconds_total"] = round(time.perf_counter() - started, 2)
        wga = _validation_wga(model, data, settings)
        candidates[str(step_size)] = {"validation_worst_group_accuracy": round(wga, 4),
                                      "seconds": log["seconds_total"],
                                      "group_weights": [round(q, 4) for q in log["group_weights"]]}
        if best is None or wga > best[0]:
            best = (wga, step_size, snapshot_expert(model, "general"), log)
    restore_expert(model, best[2])
    training["Group DRO"] = {**_strip_log(best[3]), "candidates": candidates}
    add("Group DRO", _evaluate_single(model, cue_data, settings, evaluator), best[3]["seconds_total"], 1.0,
        knobs={"step_size": best[1], "group_weights": [round(q, 4) for q in best[3]["group_weights"]]})
    del model

    for entry in methods.values():
        seconds = entry["training_seconds"]
        entry["training_ratio"] = None if seconds is None else round(seconds / erm_seconds, 3)
    general_seconds = timing["mme_jd"]["seconds"]["general"]
    for name, entry in methods.items():
        ratio = entry["inference_ratio"]
        entry["samples_per_second"] = (round(timing["mme_jd"]["rows"] / (general_seconds * ratio), 1)
                                       if ratio else None)
    return {
        "seed": seed,
        "settings": dataclasses.asdict(settings),
        "methods": {name: methods[name] for name in METHODS if name in methods},
        "timing": timing,
        "training": training,
        "seconds": round(time.perf_counter() - seed_started, 1),
    }


# ---------------------------------------------------------------------------- aggregation


def _mean_std(values: list[float]) -> dict[str, float]:
    values = [float(v) for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": round(statistics.fmean(values), 4), "std": round(std, 4), "n": len(values)}


def aggregate(seed_results: list[dict]) -> dict:
    """Mean ± std over seeds of every figure of every method, and of the timing ratios."""
    names = [name for name in METHODS if all(name in r["methods"] for r in seed_results)]
    methods = {}
    for name in names:
        entries = [r["methods"][name] for r in seed_results]
        splits = {}
        for split in TEST_SPLITS:
            keys = [k for k in entries[0]["splits"][split] if isinstance(entries[0]["splits"][split][k], (int, float))]
            splits[split] = {k: _mean_std([e["splits"][split].get(k) for e in entries]) for k in keys}
        methods[name] = {
            "splits": splits,
            "training_ratio": _mean_std([e["training_ratio"] for e in entries]),
            "training_seconds": _mean_std([e["training_seconds"] for e in entries]),
            "inference_ratio": _mean_std([e["inference_ratio"] for e in entries]),
            "samples_per_second": _mean_std([e["samples_per_second"] for e in entries]),
            "knobs": [e.get("knobs") for e in entries],
        }
    timing = {}
    for key in ("ratio_to_general", "end_to_end_ratio_to_general", "seconds_per_1000", "samples_per_second"):
        variants = seed_results[0]["timing"]["mme_jd"].get(key, {})
        timing[key] = {v: _mean_std([r["timing"]["mme_jd"][key][v] for r in seed_results]) for v in variants}
    breakdown = {}
    for variant in ("mme_jd_routed", "mme_jd_all", "mme_jd_budget", "mme_jd_best_wga"):
        parts: dict[str, list[float]] = {}
        for r in seed_results:
            entry = r["timing"]["mme_jd"]["breakdown"].get(variant)
            if not entry:
                continue
            for expert, values in entry["experts"].items():
                parts.setdefault(f"{expert} share", []).append(values["share"])
                parts.setdefault(f"{expert} rows per sample", []).append(values["rows"] / r["timing"]["mme_jd"]["rows"])
                batches = math.ceil(r["timing"]["mme_jd"]["rows"] / r["timing"]["mme_jd"]["batch_size"])
                parts.setdefault(f"{expert} calls per batch", []).append(values["calls"] / batches)
            parts.setdefault("router and gathering share", []).append(entry["other_share"])
        breakdown[variant] = {k: _mean_std(v) for k, v in parts.items()}
    timing["breakdown"] = breakdown
    timing["routed_away_test_balanced"] = _mean_std(
        [1 - r["methods"]["MME-JD routed"]["routed_shares"]["test_balanced"]["none"] for r in seed_results])
    timing["budget_routed_away_test_balanced"] = _mean_std(
        [1 - r["methods"]["MME-JD routed (budget)"]["routed_shares"]["test_balanced"]["none"]
         for r in seed_results if "MME-JD routed (budget)" in r["methods"]])
    timing["rows"] = seed_results[0]["timing"]["mme_jd"]["rows"]
    timing["batch_size"] = seed_results[0]["timing"]["mme_jd"]["batch_size"]
    timing["repeats"] = seed_results[0]["timing"]["mme_jd"]["repeats"]
    timing["threads"] = seed_results[0]["timing"]["mme_jd"]["threads"]
    return {"seeds": [r["seed"] for r in seed_results], "methods": methods, "timing": timing}


# ---------------------------------------------------------------------------- tables


def _cell(stat: dict | None, digits: int = 3) -> str:
    if not stat or stat.get("mean") is None:
        return "–"
    if stat.get("n", 1) > 1:
        return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"
    return f"{stat['mean']:.{digits}f}"


def results_table(summary: dict) -> str:
    """The main Markdown table: one row per method (mean ± std over seeds)."""
    header = ["Method", "ID acc", "ID F1", "OOD acc", "OOD F1", "Bal. acc", "Bal. F1", "WGA", "Reliance text",
              "Reliance image", "Train × ERM", "Infer × general", "Samples/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]
    for name, entry in summary["methods"].items():
        s = entry["splits"]
        cells = [name]
        for split in TEST_SPLITS:
            cells += [_cell(s[split].get("accuracy")), _cell(s[split].get("f1"))]
        balanced = s["test_balanced"]
        cells += [_cell(balanced.get("worst_group_accuracy")), _cell(balanced.get("reliance_text")),
                  _cell(balanced.get("reliance_image")), _cell(entry["training_ratio"], 2),
                  _cell(entry["inference_ratio"], 2), _cell(entry["samples_per_second"], 0)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def timing_table(summary: dict) -> str:
    timing = summary["timing"]
    names = {"general": "one general forward", "mme_jd_routed": "MME-JD routed",
             "mme_jd_all": "MME-JD all experts", "mme_jd_budget": "MME-JD routed (budget)",
             "mme_jd_best_wga": "MME-JD routed (best WGA)",
             "mid": "MID (3 rows per sample)"}
    lines = ["| Inference | s / 1000 samples | × general forward | samples/s | end to end × general |",
             "|---|---:|---:|---:|---:|"]
    for variant, label in names.items():
        if variant not in timing["ratio_to_general"]:
            continue
        lines.append(f"| {label} | {_cell(timing['seconds_per_1000'][variant], 3)} | "
                     f"{_cell(timing['ratio_to_general'][variant], 2)} | "
                     f"{_cell(timing['samples_per_second'][variant], 0)} | "
                     f"{_cell(timing['end_to_end_ratio_to_general'].get(variant), 2)} |")
    columns = [v for v in ("mme_jd_routed", "mme_jd_budget", "mme_jd_best_wga", "mme_jd_all") if timing["breakdown"].get(v)]
    lines += ["", "| Where the time goes | " + " | ".join(names[v] for v in columns) + " |",
              "|---|" + "---:|" * len(columns)]
    rows = list(dict.fromkeys(row for v in columns for row in timing["breakdown"][v]))
    for row in rows:
        lines.append(f"| {row} | " + " | ".join(_cell(timing["breakdown"][v].get(row), 2) for v in columns) + " |")
    return "\n".join(lines)


def _describe(settings: BenchSettings) -> str:
    kind = "quick" if settings.quick else "full"
    seeds = ", ".join(map(str, settings.seeds))
    epochs = f"{settings.epochs:g} epoch" + ("" if settings.epochs == 1 else "s")
    steps = f"{settings.max_steps} steps" if settings.max_steps > 0 else epochs
    return (f"{kind} run: seeds {seeds}; {settings.num_train} training rows (p_cue {settings.p_cue:g}, label noise "
            f"{settings.label_noise:g}), {steps}, batch {settings.batch_size}, "
            f"lr {settings.learning_rate:g}"
            + (f" (oracle: {settings.oracle_epochs:g} epochs)" if settings.oracle_epochs and not settings.quick else "")
            + f"; {settings.num_validation_balanced} validation_balanced rows; "
            f"{settings.num_test} rows per test split")


def markdown_report(summary: dict, settings: BenchSettings, seconds: float) -> str:
    timing = summary["timing"]
    routed = timing["ratio_to_general"].get("mme_jd_routed", {}).get("mean")
    verdict = ("within" if routed is not None and routed <= 1.25 else "above") + " the 1.25× target"
    lines = [
        "# Synthetic benchmark",
        "",
        f"{_describe(settings)}. Model: `{summary.get('model_factory')}()`, CPU, {timing['threads']} thread(s); "
        "the whole run took "
        f"{seconds / 60:.1f} min. Values are mean ± std over seeds (one seed: the value).",
        "",
        describe_environment(summary["environment"]) if summary.get("environment") else "",
        "",
        results_table(summary),
        "",
        "ID = test_id (cues correlated as in training), OOD = test_ood (cues reversed), Bal. = test_balanced "
        "(cues independent); F1 of the positive class; WGA = worst-group accuracy on test_balanced over the "
        "8 (label × text cue × image cue) groups; reliance = share of test_balanced predictions equal to the "
        "model's general expert's prediction on the cue-only counterfactual (text: content words masked, "
        "mean image; image: the patches most salient to ERM masked, empty text), computed once per split, so "
        "every method, controls included, is measured on the same inputs. Train × ERM: training wall time over ERM's (the general stage of the mme_jd run); the "
        "random-mask MME-JD reuses the real run's general stage and counts its time. Infer × general: "
        "inference wall time per sample over one general forward (one-forward methods run exactly that "
        "computation: 1.00); samples/s at that ratio. Knobs (MID λ, router threshold, JTT upweight, Group "
        "DRO η) are chosen on validation_balanced.",
        "",
        "## Inference cost",
        "",
        f"test_balanced, {timing['rows']} rows in batches of {timing['batch_size']}, same pre-collated batches, "
        f"warm-up first, median of {timing['repeats']} repeats, in the same process. Routed away from `none`: "
        f"{_cell(timing['routed_away_test_balanced'], 3)} of the samples; routed MME-JD costs "
        f"{_cell(timing['ratio_to_general'].get('mme_jd_routed'), 2)}× one general forward ({verdict}). "
        f"Under the routing budget ({settings.routed_budget:g} of validation_balanced) "
        f"{_cell(timing.get('budget_routed_away_test_balanced'), 3)} of the samples leave `none` and it costs "
        f"{_cell(timing['ratio_to_general'].get('mme_jd_budget'), 2)}×. The routing with the best validation "
        f"worst-group accuracy whatever it costs (`router_cost_tolerance=0`) costs "
        f"{_cell(timing['ratio_to_general'].get('mme_jd_best_wga'), 2)}×. The debias experts reuse the general "
        "pass's vision features (`reuse_image_features`). End to "
        "end adds collation; for MID that builds both counterfactuals, the image saliency pass included.",
        "",
        timing_table(summary),
        "",
        "Shares are of the instrumented pass's wall time; an expert's rows average over the seeds in which the "
        "router sent it samples (no ± : one seed). Compare time shares with rows per sample: a debias "
        "sub-batch of k rows costs more than k/64 of a general batch, as each call has a fixed cost "
        "(an adapter switch, a forward of a few rows through every layer's Python overhead).",
        "",
        "## Knobs per seed",
        "",
    ]
    for name in ("MID", "MME-JD routed", "MME-JD routed (budget)", "MME-JD routed (best WGA)", "JTT", "Group DRO",
                 "MID (random masks)",
                 "MME-JD (random masks)"):
        if name in summary["methods"]:
            knobs = summary["methods"][name]["knobs"]
            lines.append(f"- {name}: " + "; ".join(json.dumps(k, default=str) for k in knobs))
    lines += ["", "Per-seed figures (every split, macro-F1, group-average accuracy, ECE, training logs) are in "
              "the JSON files beside this one."]
    return "\n".join(lines) + "\n"


def update_readme(readme: Path, section: str, start: str = README_START, end: str = README_END) -> None:
    """Replace the text between the `start` and `end` markers of `readme` (appended when absent)."""
    text = readme.read_text(encoding="utf-8") if readme.exists() else ""
    block = f"{start}\n{section.strip()}\n{end}"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    atomic_write_text(readme, text)


def readme_section(summary: dict, settings: BenchSettings, markdown_name: str) -> str:
    timing = summary["timing"]
    # the tolerance the runs' router stage used, as recorded with their knobs
    tolerances = {k.get("router_cost_tolerance") for k in summary["methods"]["MME-JD routed"]["knobs"] if k}
    tolerance = ", ".join(f"{t:g}" for t in sorted(t for t in tolerances if t is not None)) or "?"
    lines = [
        "## Benchmark",
        "",
        "`make bench` (`python -m mme_jd.bench`; `--quick` for one seed on fewer rows) trains every method on "
        "the synthetic spurious-cue benchmark with one base, one data set and the same seeds, and writes "
        f"`bench/results/`. Latest: {_describe(settings)}.",
        "",
        results_table(summary),
        "",
        f"Routed MME-JD (routing: the cheapest within `router_cost_tolerance` {tolerance} of the best "
        f"validation worst-group accuracy) runs a debias expert for {_cell(timing['routed_away_test_balanced'], 3)} "
        f"of the samples and costs {_cell(timing['ratio_to_general'].get('mme_jd_routed'), 2)}× one general "
        f"forward; running every expert (the paper's) costs {_cell(timing['ratio_to_general'].get('mme_jd_all'), 2)}×; "
        f"the best-WGA routing {_cell(timing['ratio_to_general'].get('mme_jd_best_wga'), 2)}× and the "
        f"{settings.routed_budget:g} routing budget "
        f"{_cell(timing['ratio_to_general'].get('mme_jd_budget'), 2)}×. Definitions, "
        f"the cost breakdown and the knobs: [bench/results/{markdown_name}](bench/results/{markdown_name}).",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- entry point


def run_bench(
    quick: bool = False,
    seeds: Sequence[int] | None = None,
    output_dir: str | os.PathLike = "bench/results",
    model_factory: Callable[[], Any] | None = None,
    readme: str | os.PathLike | None = "README.md",
    work_dir: str | os.PathLike | None = None,
    name: str | None = None,
    resume: bool = False,
    keep_work_dir: bool = False,
    progress: Callable[[str], None] | None = _say,
    **overrides: Any,
) -> dict:
    """Run the benchmark (see the module docstring) and write its files. Returns the summary.

    Args:
        quick: one seed, 3000 training rows, 3 epochs, 500 rows per test split.
        seeds: the seeds (default: 0, 1, 2; quick: 0).
        output_dir: where the JSON and Markdown files go.
        model_factory: builds a fresh `MMEJDModel` (default: `pretrained_tiny_model`).
        readme: the README whose bench section is rewritten (None: leave it).
        work_dir: where checkpoints go (default: `<output_dir>/tmp/<name>`, removed at the end).
        name: file name stem (default: "synthetic", quick: "synthetic_quick").
        resume: reuse a seed's JSON written before with the same settings.
        overrides: `BenchSettings` fields (num_train, num_test, epochs, max_steps, ...).
    """
    progress = progress or (lambda message: None)
    settings = BenchSettings.for_run(quick, seeds=tuple(seeds) if seeds is not None else None, **overrides)
    if settings.num_threads:
        torch.set_num_threads(settings.num_threads)
    if model_factory is None:
        from .tiny import pretrained_tiny_model as model_factory
    name = name or ("synthetic_quick" if quick else "synthetic")
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    work = Path(work_dir) if work_dir is not None else output / "tmp" / name
    started = time.perf_counter()
    settings_dict = dataclasses.asdict(settings)
    # what the figures were made with (versions, lock, threads, the base's checksum): recorded
    # in every results file, so a rerun that disagrees shows what differed
    environment = run_environment(model_factory())
    seed_results = []
    resumed_seconds = 0.0
    for seed in settings.seeds:
        path = output / f"{name}_seed{seed}.json"
        if resume and path.exists():
            previous = json.loads(path.read_text())
            if previous.get("settings") == json.loads(json.dumps(settings_dict, default=str)):
                progress(f"seed {seed}: reusing {path}")
                seed_results.append(previous)
                resumed_seconds += previous["seconds"]
                continue
        result = run_seed(seed, settings, model_factory, work / f"seed{seed}", progress)
        result["environment"] = environment
        _write_json(path, result)
        progress(f"seed {seed}: done in {result['seconds'] / 60:.1f} min, wrote {path}")
        seed_results.append(result)
    summary = aggregate(seed_results)
    # a reused seed counts the time it took when it ran
    seconds = time.perf_counter() - started + resumed_seconds
    summary.update(settings=settings_dict, name=name, seconds=round(seconds, 1), methods_description=METHODS,
                   environment=environment,
                   model_factory=getattr(model_factory, "__name__", type(model_factory).__name__))
    _write_json(output / f"{name}.json", summary)
    markdown = markdown_report(summary, settings, seconds)
    atomic_write_text(output / f"{name}.md", markdown, make_parents=True)
    if readme is not None and (not quick or not (output / "synthetic.json").exists()):
        update_readme(Path(readme), readme_section(summary, settings, f"{name}.md"))
    if not keep_work_dir:
        shutil.rmtree(work, ignore_errors=True)
        try:
            work.parent.rmdir()  # `<output_dir>/tmp` when nothing else is left in it
        except OSError:
            pass
    print(markdown, flush=True)
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The bench's command-line options (for `python -m mme_jd.bench` and `mme-jd bench`)."""
    parser.add_argument("--quick", action="store_true", help="one seed, 3000 training rows, 3 epochs (under 10 minutes)")
    parser.add_argument("--seeds", type=lambda s: tuple(int(x) for x in s.split(",")), default=None,
                        help="comma-separated seeds (default: 0,1,2; quick: 0)")
    parser.add_argument("--output-dir", default="bench/results", help="where results go (default: %(default)s)")
    parser.add_argument("--readme", default="README.md", help="README whose bench section is rewritten ('' : none)")
    parser.add_argument("--num-train", type=int, default=None, help="training rows (default 6000; quick 3000)")
    parser.add_argument("--num-test", type=int, default=None, help="rows per test split (default 1000; quick 500)")
    parser.add_argument("--epochs", type=float, default=None, help="epochs (default 3, also quick)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: 1)")
    parser.add_argument("--learning-rate", type=float, default=None, help="learning rate of every method (default 2e-3)")
    parser.add_argument("--p-cue", type=float, default=None, help="training P(cue agrees with the label) (default 0.97)")
    parser.add_argument("--routed-budget", type=float, default=None,
                        help="share of validation samples MME-JD routed (budget) may route (default 0.25)")
    parser.add_argument("--routed-cost-tolerance", type=float, default=None,
                        help="router_cost_tolerance of the MME-JD runs: the validation worst-group accuracy "
                             "their routing may give up for cheaper inference (default: the config's, 0.01)")
    parser.add_argument("--name", default=None, help="results file stem (default synthetic / synthetic_quick)")
    parser.add_argument("--resume", action="store_true", help="reuse finished seeds with the same settings")
    return parser


def run_from_args(args: argparse.Namespace) -> dict:
    return run_bench(quick=args.quick, seeds=args.seeds, output_dir=args.output_dir, readme=args.readme or None,
                     resume=args.resume, num_train=args.num_train, num_test=args.num_test, epochs=args.epochs,
                     num_threads=args.threads, learning_rate=args.learning_rate, p_cue=args.p_cue,
                     routed_budget=args.routed_budget, routed_cost_tolerance=args.routed_cost_tolerance,
                     name=args.name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="python -m mme_jd.bench", description=__doc__,
                                                    formatter_class=argparse.RawDescriptionHelpFormatter))
    run_from_args(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
