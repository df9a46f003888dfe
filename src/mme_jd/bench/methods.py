"""The bench's methods, one `Method` entry each in `REGISTRY` (table order).

An entry is a name, its one description (used in the results JSON and the Markdown report),
the function that trains and evaluates it on one seed (`SeedRun` -> `Outcome`) and the
`BenchSettings` fields that are its own knobs. Methods that read one trained model share it:
`SeedRun.shared(build)` builds an artifact once per seed, on first use. The `mme_jd` run
(`mme_jd_run`) is ERM (its general expert), MID, each expert alone and every MME-JD routing;
its general stage also starts the random-mask MME-JD, and its cue-only passes are the
reference every method's reliance is measured against.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch

from .controls import random_dataset
from .scoring import (SplitEvaluator, collect, cue_only_columns, cue_only_logits, cue_only_pass, strategy_shares,
                      validation_wga)
from .settings import DATA_SPLITS, TEST_SPLITS, BenchSettings, training_arguments, training_config
from .timing import Routing, measure_inference, routed_copy

Artifact = TypeVar("Artifact")


@dataclass
class Outcome:
    """One method's result on one seed: figures per test split, training CPU seconds (None: no
    training of its own), inference time per sample as a ratio to one general forward, the
    knobs it chose (on validation_balanced) and any other entries of its JSON."""

    splits: dict[str, dict[str, Any]]
    training_seconds: float | None
    inference_ratio: float | None = 1.0
    knobs: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def entry(self) -> dict[str, Any]:
        """The method's entry in the seed's JSON."""
        seconds = None if self.training_seconds is None else round(self.training_seconds, 2)
        entry: dict[str, Any] = {"splits": self.splits, "training_seconds": seconds,
                                 "inference_ratio": self.inference_ratio}
        if self.knobs is not None:
            entry["knobs"] = self.knobs
        entry.update(self.extra)
        return entry


@dataclass(frozen=True)
class Method:
    """One bench method: `run` trains (or reads a shared artifact) and evaluates it on one seed;
    `knobs` are the `BenchSettings` fields only this method reads."""

    name: str
    description: str
    run: Callable[["SeedRun"], Outcome]
    knobs: tuple[str, ...] = ()


def training_seconds(report: dict) -> float:
    """Training time of a `train()` report: the sum of its stages' `cpu_seconds_total`, the
    process's CPU time (each stage's work, image-mask precomputation, reliance checks and λ fit
    included; checkpoint writing and stages skipped on resume excluded). The bench runs torch on
    one thread, so CPU time is the work done, and it barely moves when other jobs share the
    cores, where wall time doubles."""
    return sum(stage_cpu_seconds(stage) for stage in report["stages"] if "resumed" not in stage)


def stage_cpu_seconds(stage_log: dict) -> float:
    """A stage log's CPU seconds (its wall seconds in logs written before they were recorded)."""
    return stage_log.get("cpu_seconds_total", stage_log.get("seconds_total", 0.0))


def strip_log(log: Any) -> Any:
    """A training log without its long lists (losses, histories, error indices)."""
    if isinstance(log, dict):
        return {k: strip_log(v) for k, v in log.items()
                if k not in ("losses", "group_weight_history", "group_loss_history", "error_indices", "settings")}
    if isinstance(log, list):
        return [strip_log(v) for v in log]
    return log


class SeedRun:
    """What the methods of one seed share: the seed's data (the seed makes the data AND the
    training seed), its settings, the test-split evaluators, the training logs and inference
    timings the seed's JSON records, and the artifacts built once (`shared`)."""

    def __init__(self, seed: int, settings: BenchSettings, model_factory: Callable[..., Any], work_dir: Path,
                 progress: Callable[[str], None]):
        from ..data.synthetic import make_synthetic_benchmark

        self.seed, self.settings, self.model_factory = seed, settings, model_factory
        self.work_dir, self.progress = work_dir, progress
        work_dir.mkdir(parents=True, exist_ok=True)
        self.data = make_synthetic_benchmark(
            num_train=settings.num_train, num_test=settings.num_test,
            num_validation_balanced=settings.num_validation_balanced, seed=seed, p_cue=settings.p_cue,
            label_noise=settings.label_noise, splits=DATA_SPLITS)
        self.training: dict[str, Any] = {}
        self.timing: dict[str, Any] = {}
        self._artifacts: dict[Callable, Any] = {}
        self._evaluator: SplitEvaluator | None = None

    def say(self, message: str) -> None:
        self.progress(f"seed {self.seed}: {message}")

    def shared(self, build: Callable[["SeedRun"], Artifact]) -> Artifact:
        """`build(self)`, built on the first call and kept for the seed's other methods."""
        if build not in self._artifacts:
            self._artifacts[build] = build(self)
        return self._artifacts[build]

    def fresh_model(self):
        """A new model from the factory with the seed set first (the same LoRA init for every
        method)."""
        from transformers import set_seed

        set_seed(self.seed)
        return self.model_factory().eval()

    def train(self, log_name: str, model, dataset, config, folder: str, epochs: float | None = None,
              resume: bool = False) -> dict:
        """`mme_jd.training.train` with the bench's arguments; the log is kept under `log_name`."""
        from ..training.run import train

        report = train(model, dataset, training_arguments(self.settings, self.seed, str(self.work_dir / folder),
                                                          epochs), config, resume_from_checkpoint=resume)
        self.training[log_name] = strip_log(report)
        return report

    @property
    def timing_rows(self):
        """The rows inference is timed on: test_balanced, its first `timing_rows` when set."""
        rows = self.data["test_balanced"]
        if self.settings.timing_rows is not None:
            rows = rows.select(range(min(self.settings.timing_rows, len(rows))))
        return rows

    def figures(self, split: str, logits: torch.Tensor, cue_only: dict[str, torch.Tensor] | None = None
                ) -> dict[str, Any]:
        """The figures of `logits` on a test split, reliance against `cue_only` (the logits of
        a model's general expert on the cue-only columns; default: those of the mme_jd run's,
        ERM's)."""
        reference = self.shared(mme_jd_run)
        if self._evaluator is None:
            self._evaluator = SplitEvaluator(self.data, int(reference.model.config.num_labels))
        if cue_only is None:
            cue_only = cue_only_logits(reference.passes[split]["mid"])
        return self._evaluator.figures(split, logits, cue_only)

    def general_figures(self, model) -> dict[str, dict]:
        """Figures of a one-forward model (its general expert) on every test split, reliance
        against its own predictions on the cue-only columns (the same inputs for every method)."""
        cue_data = self.shared(mme_jd_run).cue_data
        figures = {}
        for split in TEST_SPLITS:
            outputs = cue_only_pass(model, cue_data[split], self.settings)
            figures[split] = self.figures(split, outputs["general_logits"], cue_only_logits(outputs))
        return figures


# ---------------------------------------------------------------------------- the mme_jd run


def expert_logits(outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The experts' logits of an all-experts pass, by expert."""
    return {name: outputs[f"{name}_logits"] for name in ("general", "image_debias", "text_debias")}


def routed_mixture(model, outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Final logits and strategies of `model`'s routed mixture at its routing, from the outputs
    of one all-experts pass (the routed forward's arithmetic, without running it again)."""
    from ..training.router_labels import mixture_logits

    return mixture_logits(model, outputs["router_logits"], expert_logits(outputs), model.config.router_threshold)


def alternative_routings(model, rows, settings: BenchSettings) -> dict[str, Routing]:
    """Two re-tunings of the trained router on `rows` (validation_balanced), from one pass:
    "budget", the threshold with the best worst-group accuracy among those routing at most
    `settings.routed_budget` of the rows (the routed strategy stays the router stage's); and
    "best_wga", the (threshold, routed strategy) with the best worst-group accuracy whatever it
    costs (ties: the cheapest)."""
    from ..training.router_labels import cheapest_routing, tune_threshold_for_groups

    outputs = collect(model, rows, settings, "mme_jd", return_experts=True)
    experts, labels, groups = expert_logits(outputs), outputs["labels"], outputs.get("groups")
    budget, _ = tune_threshold_for_groups(model, outputs["router_logits"], experts, labels, groups,
                                          max_routed_share=settings.routed_budget)
    best = cheapest_routing(model, outputs["router_logits"], experts, labels, groups, tolerance=0.0)
    return {"budget": Routing(budget, model.config.routed_strategy),
            "best_wga": Routing(best["threshold"], best["routed_strategy"])}


#: The inference variants timed on the mme_jd run's model (`measure_inference`).
MME_JD_VARIANTS = ("general", "mme_jd_routed", "mme_jd_all", "mme_jd_budget", "mme_jd_best_wga", "mid")


@dataclass
class MMEJDRun:
    """The seed's `mme_jd` run and what is read off it once: the cue-only test columns (from its
    general expert = ERM), per test split a "mid" pass over them, a routed pass and an
    all-experts pass, the re-tuned routings (`alternative_routings`) with a copy of the model
    at each, and the inference timing of its variants (`MME_JD_VARIANTS`)."""

    model: Any
    config: Any
    report: dict
    folder: Path
    cue_data: dict[str, Any]
    passes: dict[str, dict[str, dict[str, torch.Tensor]]]
    routings: dict[str, Routing]
    rerouted: dict[str, Any]
    timing: dict[str, Any]

    def stage_seconds(self, *stages: str) -> float:
        seconds = {stage["stage"]: stage_cpu_seconds(stage) for stage in self.report["stages"]}
        return sum(seconds[stage] for stage in stages)

    @property
    def lambdas(self) -> dict[str, float]:
        return {"lambda_text": self.model.config.lambda_text, "lambda_image": self.model.config.lambda_image}

    def ratio(self, variant: str) -> float:
        return self.timing["ratio_to_general"][variant]


def mme_jd_run(run: SeedRun) -> MMEJDRun:
    """Train the `mme_jd` recipe and read everything its methods need off the trained model."""
    settings = run.settings
    run.say("training mme_jd (ERM = its general expert)")
    model = run.fresh_model()
    config = training_config(settings, recipe="mme_jd")
    report = run.train("mme_jd", model, run.data, config, "mme_jd")
    general = next(stage_cpu_seconds(s) for s in report["stages"] if s["stage"] == "general")
    run.say(f"mme_jd trained in {training_seconds(report):.1f} CPU s (ERM {general} CPU s); evaluating")
    cue_data = {split: cue_only_columns(model, run.data[split], config) for split in TEST_SPLITS}
    routings = alternative_routings(model, run.data["validation_balanced"], settings)
    passes = {}
    for split in TEST_SPLITS:
        rows = run.data[split]
        passes[split] = {"mid": cue_only_pass(model, cue_data[split], settings),
                         "routed": collect(model, rows, settings, "mme_jd"),
                         "every": collect(model, rows, settings, "mme_jd", return_experts=True)}
    rows = run.timing_rows
    run.say(f"timing inference on {len(rows)} rows ({settings.timing_repeats} repeats)")
    timing = measure_inference(model, rows, settings.timing_batch_size, settings.timing_repeats,
                               variants=MME_JD_VARIANTS, routings=routings)
    run.timing["mme_jd"] = timing
    return MMEJDRun(model=model, config=config, report=report, folder=run.work_dir / "mme_jd", cue_data=cue_data,
                    passes=passes, routings=routings,
                    rerouted={key: routed_copy(model, routing) for key, routing in routings.items()}, timing=timing)


# ---------------------------------------------------------------------------- methods of the mme_jd run


def erm(run: SeedRun) -> Outcome:
    m = run.shared(mme_jd_run)
    return Outcome({s: run.figures(s, m.passes[s]["mid"]["general_logits"]) for s in TEST_SPLITS},
                   m.stage_seconds("general"))


def mid(run: SeedRun) -> Outcome:
    m = run.shared(mme_jd_run)
    return Outcome({s: run.figures(s, m.passes[s]["mid"]["logits"]) for s in TEST_SPLITS},
                   m.stage_seconds("general", "mid"), m.ratio("mid"), knobs=m.lambdas)


def expert_alone(expert: str) -> Callable[[SeedRun], Outcome]:
    """The ablation of one expert of the mme_jd run, alone on every sample."""

    def evaluate(run: SeedRun) -> Outcome:
        m = run.shared(mme_jd_run)
        # a skipped expert (`reliance_check`) holds the general expert's weights: its figures are those
        skipped = expert in (m.model.config.skipped_experts or ())
        return Outcome({s: run.figures(s, m.passes[s]["every"][f"{expert}_logits"]) for s in TEST_SPLITS}, None,
                       extra={"skipped": skipped})

    return evaluate


def _routed_figures(run: SeedRun, logits_and_strategies) -> tuple[dict, dict]:
    """(figures with `routed_away`, strategy shares) per test split."""
    figures, shares = {}, {}
    for split in TEST_SPLITS:
        logits, strategy = logits_and_strategies(split)
        shares[split] = strategy_shares(strategy)
        figures[split] = {**run.figures(split, logits), "routed_away": round(1 - shares[split]["none"], 4)}
    return figures, shares


def mme_jd_routed(run: SeedRun) -> Outcome:
    m = run.shared(mme_jd_run)
    figures, shares = _routed_figures(run, lambda s: (m.passes[s]["routed"]["logits"],
                                                      m.passes[s]["routed"]["strategy"]))
    config = m.model.config
    knobs = {**m.lambdas, "router_threshold": float(config.router_threshold), "routed_strategy": config.routed_strategy,
             "router_cost_tolerance": m.report["settings"]["router_cost_tolerance"]}
    return Outcome(figures, training_seconds(m.report), m.ratio("mme_jd_routed"), knobs=knobs,
                   extra={"routed_shares": shares})


def mme_jd_all_experts(run: SeedRun) -> Outcome:
    m = run.shared(mme_jd_run)
    figures = {}
    for split in TEST_SPLITS:
        routed = m.passes[split]["routed"]
        figures[split] = {**run.figures(split, m.passes[split]["every"]["logits"]),
                          "routed_away": round(1 - strategy_shares(routed["strategy"])["none"], 4)}
    identical = all(torch.equal(m.passes[s]["routed"]["logits"].argmax(-1), m.passes[s]["every"]["logits"].argmax(-1))
                    for s in TEST_SPLITS)
    return Outcome(figures, training_seconds(m.report), m.ratio("mme_jd_all"),
                   extra={"identical_predictions_to_routed": identical})


def rerouted(key: str, knob: Callable[[BenchSettings], dict[str, Any]]) -> Callable[[SeedRun], Outcome]:
    """The mme_jd run's model at its re-tuned routing `key` (`alternative_routings`); `knob`:
    what the knobs record besides λ and the routing."""

    def evaluate(run: SeedRun) -> Outcome:
        m = run.shared(mme_jd_run)
        figures, shares = _routed_figures(run, lambda s: routed_mixture(m.rerouted[key], m.passes[s]["every"]))
        routing = m.routings[key]
        knobs = {**m.lambdas, "router_threshold": routing.threshold, "routed_strategy": routing.routed_strategy,
                 **knob(run.settings)}
        return Outcome(figures, training_seconds(m.report), m.ratio(f"mme_jd_{key}"), knobs=knobs,
                       extra={"routed_shares": shares})

    return evaluate


# ---------------------------------------------------------------------------- random-mask controls


def mid_random_masks(run: SeedRun) -> Outcome:
    """The mme_jd run's general expert, λ refitted on random counterfactuals."""
    from ..training.mid import fit_lambdas

    run.say("MID random-mask control")
    m = run.shared(mme_jd_run)
    model, settings = m.model, run.settings
    random_data = random_dataset(run.data, model, model.processor, m.config, run.seed,
                                 ("validation_balanced", *TEST_SPLITS))
    validation = cue_only_pass(model, random_data["validation_balanced"], settings)
    fitted = fit_lambdas(validation["general_logits"], validation["text_counterfactual_logits"],
                         validation["image_counterfactual_logits"], validation["labels"], validation.get("groups"))
    figures = {}
    for split in TEST_SPLITS:
        outputs = cue_only_pass(model, random_data[split], settings)
        logits = (outputs["general_logits"] - fitted["lambda_text"] * outputs["text_counterfactual_logits"]
                  - fitted["lambda_image"] * outputs["image_counterfactual_logits"])
        figures[split] = run.figures(split, logits)
    return Outcome(figures, m.stage_seconds("general", "mid"), m.ratio("mid"),
                   knobs={"lambda_text": fitted["lambda_text"], "lambda_image": fitted["lambda_image"]})


def mme_jd_random_masks(run: SeedRun) -> Outcome:
    """mme_jd retrained from the real run's general stage (which sees no counterfactual) with
    random counterfactuals for the debias experts and the router's validation split."""
    run.say("training mme_jd with random masks")
    m = run.shared(mme_jd_run)
    settings = run.settings
    model = run.fresh_model()
    random_data = random_dataset(run.data, model, model.processor, m.config, run.seed,
                                 (m.config.train_split, "validation_balanced"))
    folder = run.work_dir / "mme_jd_random"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(m.folder / "stages" / "general", folder / "stages" / "general")
    report = run.train("mme_jd_random", model, random_data, training_config(settings, recipe="mme_jd"),
                       folder.name, resume=True)
    figures = {}
    for split in TEST_SPLITS:
        routed = collect(model, run.data[split], settings, "mme_jd")
        figures[split] = {**run.figures(split, routed["logits"]),
                          "routed_away": round(float((routed["strategy"] != 0).float().mean()), 4)}
    timing = measure_inference(model, run.timing_rows, settings.timing_batch_size, settings.timing_repeats,
                               variants=("general", "mme_jd_routed"))
    run.timing["mme_jd_random_masks"] = timing
    config = model.config
    return Outcome(figures, m.stage_seconds("general") + training_seconds(report),
                   timing["ratio_to_general"]["mme_jd_routed"],
                   knobs={"lambda_text": config.lambda_text, "lambda_image": config.lambda_image,
                          "router_threshold": float(config.router_threshold),
                          "routed_strategy": config.routed_strategy,
                          "router_cost_tolerance": report["settings"]["router_cost_tolerance"]})


def mme_jd_generals_schedule(run: SeedRun) -> Outcome:
    """mme_jd trained on its own (its general stage included, the same as the mme_jd run's) with
    its warm-started debias stages on the general stage's schedule (`epochs` at `learning_rate`)
    instead of the settings' `debias_epochs` / `debias_learning_rate`, routed: what the shorter
    debias schedule of the mme_jd run costs in accuracy and saves in time."""
    run.say("training mme_jd with the general stage's schedule for its debias stages")
    settings = run.settings
    model = run.fresh_model()
    config = training_config(settings, recipe="mme_jd", debias_epochs=None, debias_learning_rate=None)
    report = run.train("mme_jd_generals_schedule", model, run.data, config, "mme_jd_generals_schedule")
    figures, shares = {}, {}
    for split in TEST_SPLITS:
        routed = collect(model, run.data[split], settings, "mme_jd")
        shares[split] = strategy_shares(routed["strategy"])
        figures[split] = {**run.figures(split, routed["logits"]), "routed_away": round(1 - shares[split]["none"], 4)}
    config = model.config
    return Outcome(figures, training_seconds(report), None,
                   knobs={"debias_epochs": settings.epochs, "debias_learning_rate": settings.learning_rate,
                          "router_threshold": float(config.router_threshold),
                          "routed_strategy": config.routed_strategy, "skipped_experts": config.skipped_experts},
                   extra={"routed_shares": shares})


# ---------------------------------------------------------------------------- one-forward recipes and peers


def one_forward(name: str, recipe: str, train_split: str | None = None, random_masks: bool = False,
                epochs: Callable[[BenchSettings], float | None] = lambda settings: None,
                ) -> Callable[[SeedRun], Outcome]:
    """A recipe trained on its own whose model is one general forward at inference: `recipe` on
    `train_split`, with random-mask counterfactual columns when `random_masks`, for
    `epochs(settings)` epochs (None: the settings')."""

    def evaluate(run: SeedRun) -> Outcome:
        run.say(f"training {name}")
        model = run.fresh_model()
        config = training_config(run.settings, recipe=recipe, **({"train_split": train_split} if train_split else {}))
        dataset = run.data
        if random_masks:
            dataset = random_dataset(run.data, model, model.processor, config, run.seed, (config.train_split,))
        folder = name.lower().replace(" ", "_").replace("(", "").replace(")", "")
        report = run.train(name, model, dataset, config, folder, epochs(run.settings))
        return Outcome(run.general_figures(model), training_seconds(report))

    return evaluate


def jtt(run: SeedRun) -> Outcome:
    """One first phase, then the upweight with the best validation worst-group accuracy."""
    from ..training.peers import restore_expert, snapshot_expert, train_jtt

    settings = run.settings
    run.say(f"training JTT (upweights {list(settings.jtt_upweights)})")
    model = run.fresh_model()
    initial = snapshot_expert(model, "general")
    args = training_arguments(settings, run.seed, str(run.work_dir / "jtt"))
    started = time.perf_counter()
    best = None
    errors = None
    first_seconds = 0.0
    candidates = {}
    for upweight in settings.jtt_upweights:
        restore_expert(model, initial)
        if errors is None:
            log = train_jtt(model, run.data, args, upweight=upweight, first_epochs=settings.first_epochs)
            errors = log["error_indices"]
            first_seconds = log["first_phase_cpu_seconds"]
        else:
            log = train_jtt(model, run.data, args, upweight=upweight, error_indices=errors)
        wga = validation_wga(model, run.data, settings)
        candidates[upweight] = {"validation_worst_group_accuracy": round(wga, 4),
                                "second_phase_cpu_seconds": log["second_phase_cpu_seconds"],
                                "train_rows": log["train_rows"]}
        if best is None or wga > best[0]:
            best = (wga, upweight, snapshot_expert(model, "general"), log)
    restore_expert(model, best[2])
    run.training["JTT"] = {**strip_log(best[3]), "candidates": candidates}
    return Outcome(run.general_figures(model), first_seconds + best[3]["second_phase_cpu_seconds"],
                   knobs={"upweight": best[1], "first_epochs": settings.first_epochs,
                          "num_errors": best[3]["num_errors"], "error_share": round(best[3]["error_share"], 4)},
                   extra={"selection_seconds": round(time.perf_counter() - started, 2)})


def group_dro(run: SeedRun) -> Outcome:
    """Group DRO for each step size η; the best validation worst-group accuracy is kept."""
    from ..training.peers import restore_expert, snapshot_expert, train_group_dro

    settings = run.settings
    run.say(f"training Group DRO (step sizes {list(settings.group_dro_step_sizes)})")
    model = run.fresh_model()
    initial = snapshot_expert(model, "general")
    best = None
    candidates = {}
    for step_size in settings.group_dro_step_sizes:
        restore_expert(model, initial)
        started = time.process_time()
        log = train_group_dro(model, run.data, training_arguments(settings, run.seed, str(run.work_dir / "group_dro")),
                              step_size=step_size)
        log["cpu_seconds_total"] = round(time.process_time() - started, 2)
        wga = validation_wga(model, run.data, settings)
        candidates[str(step_size)] = {"validation_worst_group_accuracy": round(wga, 4),
                                      "cpu_seconds": log["cpu_seconds_total"],
                                      "group_weights": [round(q, 4) for q in log["group_weights"]]}
        if best is None or wga > best[0]:
            best = (wga, step_size, snapshot_expert(model, "general"), log)
    restore_expert(model, best[2])
    run.training["Group DRO"] = {**strip_log(best[3]), "candidates": candidates}
    return Outcome(run.general_figures(model), best[3]["cpu_seconds_total"],
                   knobs={"step_size": best[1], "group_weights": [round(q, 4) for q in best[3]["group_weights"]]})


# ---------------------------------------------------------------------------- the registry

REGISTRY: tuple[Method, ...] = (
    Method("ERM", "the general expert of the mme_jd run (plain fine-tuning; trained once)", erm),
    Method("Oracle", "recipe general on train_cue_free (no cue correlation in training), trained for "
                     "`oracle_epochs` (to convergence: it is the ceiling)",
           one_forward("Oracle", "general", train_split="train_cue_free", epochs=lambda s: s.oracle_epochs),
           knobs=("oracle_epochs",)),
    Method("JTT", "`training.peers.train_jtt`: the errors of a first ERM phase (`jtt_first_epochs`) upweighted, "
                  "retrained; the upweight chosen on validation_balanced", jtt,
           knobs=("jtt_upweights", "jtt_first_epochs")),
    Method("Group DRO", "`training.peers.train_group_dro`: online group weights over the label × cue groups; "
                        "η chosen on validation_balanced", group_dro, knobs=("group_dro_step_sizes",)),
    Method("MID", "the mme_jd run's general expert minus λ-weighted cue-only logits (λ_t, λ_v fitted on "
                  "validation_balanced)", mid),
    Method("MCTD", "recipe mctd (the general adapter on originals and counterfactuals with reversed targets)",
           one_forward("MCTD", "mctd")),
    Method("MME-JD routed", "the mme_jd run, routed inference (debias experts only for routed rows); its routing "
                            "tuned by the router stage: the cheapest within `router_cost_tolerance` of the best "
                            "validation worst-group accuracy", mme_jd_routed, knobs=("routed_cost_tolerance",)),
    Method("MME-JD all experts", "the same model with expert_execution='all' (the paper's: every expert)",
           mme_jd_all_experts),
    Method("MME-JD routed (budget)", "the same model, router threshold re-tuned on validation_balanced to route at "
                                     "most `routed_budget` of it (an inference-cost budget)",
           rerouted("budget", lambda s: {"routed_budget": s.routed_budget}), knobs=("routed_budget",)),
    Method("MME-JD routed (best WGA)", "the same model, routing re-tuned on validation_balanced for the best "
                                       "worst-group accuracy whatever it costs (router_cost_tolerance 0)",
           rerouted("best_wga", lambda s: {"router_cost_tolerance": 0.0})),
    Method("MME-JD (general's schedule)", "mme_jd trained on its own with its debias stages on the general "
                                          "stage's schedule (`epochs` at `learning_rate`, not `debias_epochs` at "
                                          "`debias_learning_rate`; the rest as the mme_jd run), routed",
           mme_jd_generals_schedule),
    Method("image_debias expert", "ablation: the image_debias expert of the mme_jd run alone",
           expert_alone("image_debias")),
    Method("text_debias expert", "ablation: the text_debias expert of the mme_jd run alone",
           expert_alone("text_debias")),
    Method("MID (random masks)", "control: MID with λ refitted on counterfactuals whose masked words and patches are "
                                 "chosen at random, as many per row as the real builders mask", mid_random_masks),
    Method("MCTD (random masks)", "control: MCTD trained on random masks of the same counts",
           one_forward("MCTD (random masks)", "mctd", random_masks=True)),
    Method("MME-JD (random masks)", "control: the mme_jd run's general stage, then debias experts and router trained "
                                    "on random masks of the same counts, routed", mme_jd_random_masks),
)

#: Method names in table order, with their descriptions.
METHODS: dict[str, str] = {method.name: method.description for method in REGISTRY}

