"""What one bench run is made of: its budget (`BenchSettings`), the data splits, and the
`TrainingArguments` / `MMEJDTrainingConfig` every method trains with."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TEST_SPLITS = ("test_id", "test_ood", "test_balanced")
DATA_SPLITS = ("train", "train_cue_free", "validation_balanced", *TEST_SPLITS)

#: What the quick variant changes (`BenchSettings.for_run(quick=True)`): one seed, half the
#: training and test rows, one JTT upweight and one Group DRO step size, three timing repeats,
#: and the three costliest controls left out (JTT, and the random-mask MCTD and MME-JD, which
#: train a model each: 4.4x, 2.5x and 4.8x ERM's training time). 3000 rows x 3 epochs are the
#: fewest with which ERM already leans on the cues and MME-JD removes them, as in the full run
#: (1500 rows x 1 epoch left every method at chance). The oracle keeps the full run's
#: `oracle_epochs`: trained for `epochs` (3) it is no ceiling (seed 0: worst-group accuracy 0.651
#: against MME-JD's 0.889); 9 epochs reach 0.889 (6: 0.839, 12: 0.873, label noise overfitted).
QUICK_SETTINGS: dict[str, Any] = dict(seeds=(0,), num_train=3000, num_test=500, jtt_upweights=(6,),
                                      group_dro_step_sizes=(0.1,), timing_repeats=3,
                                      skip_methods=("JTT", "MCTD (random masks)", "MME-JD (random masks)",
                                                    "MME-JD (general's schedule)"))


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
    # the mme_jd run's `router_cost_tolerance` (None: MMEJDTrainingConfig's default, 0.01): its routing
    # is the cheapest within this of the best validation WGA
    routed_cost_tolerance: float | None = None
    # torch threads: the tiny model gains nothing from a second thread, and on shared cores
    # extra threads slowed every pass several times over (None: torch's default)
    num_threads: int | None = 1
    training_overrides: dict[str, Any] = field(default_factory=dict)
    # the mme_jd runs' warm-started debias stages (`MMEJDTrainingConfig.debias_epochs` /
    # `debias_learning_rate`; None: `epochs` / `learning_rate`): 2 epochs at 3e-3 keep epochs × rate
    # at the general stage's 3 × 2e-3. On validation_balanced they tie 3 epochs at 2e-3 in mean
    # worst-group accuracy (3 seeds: 0.927 each; bench/results/debias_schedule_grid.json), as do 2
    # epochs at 4e-3; 2 at 2e-3 reach 0.920. "MME-JD (general's schedule)" trains them for `epochs`
    # at `learning_rate`, as the general stage, for comparison
    debias_epochs: float | None = 2.0
    debias_learning_rate: float | None = 3e-3
    # methods (names of `mme_jd.bench.methods.REGISTRY`) this run leaves out
    skip_methods: tuple[str, ...] = ()

    @classmethod
    def for_run(cls, quick: bool = False, **overrides: Any) -> "BenchSettings":
        """The settings of a full (`quick=False`) or quick run, with `overrides` (None values
        are ignored)."""
        values: dict[str, Any] = dict(QUICK_SETTINGS) if quick else {}
        values.update({k: v for k, v in overrides.items() if v is not None})
        for name in ("seeds", "jtt_upweights", "group_dro_step_sizes", "skip_methods"):
            if name in values:
                values[name] = tuple(values[name])
        return cls(quick=quick, **values)

    @property
    def first_epochs(self) -> float:
        """Epochs of JTT's first (ERM) phase."""
        if self.jtt_first_epochs is None:
            return round(2 * self.epochs / 3, 4)
        return min(self.jtt_first_epochs, self.epochs)


def training_arguments(settings: BenchSettings, seed: int, output_dir: str, epochs: float | None = None):
    """The `TrainingArguments` of every bench method: the settings' batch size, learning rate,
    warm-up and epochs (`epochs` overrides), on CPU, no checkpoints, no reporting."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=settings.batch_size,
        num_train_epochs=settings.epochs if epochs is None else epochs,
        max_steps=settings.max_steps, learning_rate=settings.learning_rate, warmup_steps=settings.warmup_steps,
        save_strategy="no", report_to="none", use_cpu=True, seed=seed, disable_tqdm=True, logging_steps=100,
    )


def training_config(settings: BenchSettings, **fields: Any):
    """An `MMEJDTrainingConfig` with the settings' `routed_cost_tolerance` (when set), the
    debias stages' schedule (`debias_epochs`, `debias_learning_rate`: recipe mme_jd only),
    `training_overrides` and `fields`."""
    from ..training.run import MMEJDTrainingConfig

    defaults: dict[str, Any] = {}
    if settings.routed_cost_tolerance is not None:
        defaults["router_cost_tolerance"] = settings.routed_cost_tolerance
    if fields.get("recipe", MMEJDTrainingConfig.recipe) == "mme_jd":
        defaults.update(debias_epochs=settings.debias_epochs, debias_learning_rate=settings.debias_learning_rate)
    return MMEJDTrainingConfig(**{**defaults, **settings.training_overrides, **fields})
