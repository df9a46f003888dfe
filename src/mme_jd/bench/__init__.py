"""`make bench`: every method on the synthetic benchmark, in one run, on one base and one data set.

    python -m mme_jd.bench            # 3 seeds, 6000 training rows, 3 epochs  (about 30 min, 2 cores)
    python -m mme_jd.bench --quick    # 1 seed, 3000 training rows, 3 epochs   (under 10 minutes)

For each seed (the seed makes the data AND the training seed), on the pretrained tiny base
(`mme_jd.tiny.pretrained_tiny_model`), the synthetic benchmark at p_cue 0.97 / label noise 0.1
and `TrainingArguments(per_device_train_batch_size=64, learning_rate=2e-3, warmup_steps=10, ...)`
with `MMEJDTrainingConfig`'s defaults (why these: `bench/lr_sensitivity.py` and the README),
every method of the registry (`methods.REGISTRY`: each method's name, description, training
and knobs, in one entry) is trained and evaluated. The quick variant (`settings.QUICK_SETTINGS`)
runs one seed on fewer rows and leaves out the costliest controls.

Figures, per method: accuracy and F1 on test_id / test_ood / test_balanced, worst-group accuracy
(test_balanced, label × text cue × image cue), reliance (test_balanced: share of predictions equal
to the model's general expert's prediction on the cue-only counterfactual: content words masked /
salient patches masked, computed once per split from ERM's saliency, so every method, controls
included, is measured on the same inputs), training time as a ratio to ERM's, inference time per
sample as a ratio to one general forward and samples per second. Knobs are chosen on
validation_balanced, never on a test split.

Inference cost (`timing.measure_inference`): on test_balanced, in the same process, over the same
pre-collated batches, warm-up first, `timing_repeats` repeats, median: one general forward,
routed MME-JD, all-experts MME-JD, the re-tuned routings, MID; plus where the routed time goes
(each expert's passes, the rest).

Writes `<output_dir>/<name>_seed<S>.json` per seed, `<name>.json` (mean ± std), `<name>.md`
(the tables), atomically, and the README section between `<!-- bench:synthetic:start -->` and
`<!-- bench:synthetic:end -->` (a quick run writes `synthetic_quick*` and touches the README only
when no full result exists).

Modules: `settings` (the budget), `methods` (the registry and what its methods share), `scoring`
(figures), `controls` (random masks), `timing` (one timing loop, also for
`bench/inference_cost.py`), `report` (aggregation, tables, README), `run` (seeds, files, CLI).
"""

from .controls import random_counterfactual_columns, random_dataset
from .methods import METHODS, REGISTRY, Method, Outcome, SeedRun
from .report import (README_END, README_START, ROUTED_COST_TARGET, aggregate, markdown_report, readme_section,
                     results_table, timing_table, update_readme)
from .run import add_arguments, main, run_bench, run_from_args, run_seed, write_json
from .scoring import cue_only_columns, recipe_figures, strategy_shares
from .settings import DATA_SPLITS, QUICK_SETTINGS, TEST_SPLITS, BenchSettings, training_arguments, training_config
from .timing import (Routing, configured_copy, expert_seconds, measure_inference, medians, routed_copy,
                     time_variants)

__all__ = [
    "BenchSettings", "DATA_SPLITS", "METHODS", "Method", "Outcome", "QUICK_SETTINGS", "README_END", "README_START",
    "REGISTRY", "ROUTED_COST_TARGET", "Routing", "SeedRun", "TEST_SPLITS", "add_arguments", "aggregate",
    "configured_copy", "cue_only_columns", "expert_seconds", "main", "markdown_report", "measure_inference",
    "medians", "random_counterfactual_columns", "random_dataset", "readme_section", "recipe_figures",
    "results_table", "routed_copy", "run_bench", "run_from_args", "run_seed", "strategy_shares", "time_variants",
    "timing_table",
    "training_arguments", "training_config", "update_readme", "write_json",
]
