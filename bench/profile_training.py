"""Where a training run spends its time: ERM (the `general` recipe) and MME-JD (`mme_jd`) on the
synthetic benchmark or a real dataset, per stage and per part, with the peak memory of each run.

    python bench/profile_training.py [--num-train 6000] [--epochs 3] [--name before]
    python bench/profile_training.py --data mmsd --num-train 1000 --epochs 1 --name mmsd_after

Each recipe is trained once under `cProfile` (1 torch thread; synthetic: the bench's settings,
batch 64, lr 2e-3, p_cue 0.97; a real dataset: `bench/real_data.py`'s, MiniLM-LLaVA with a
linear head, batch 8, lr 1e-3, the first `--num-train` training rows, 300 validation rows). The parts are read from the profile as the time spent inside these calls,
attributed to the caller that made them, so no part is counted twice:

    data loading        the collator called by the Trainer's DataLoader (processor calls and
                        counterfactual building)
    image masks         `precompute_image_masks`: the saliency passes for the attention masks
    cue-only passes     the general expert on the validation split's originals and cue-only
                        inputs, run once (`CueOnlyPasses`) for the reliance checks and MID's λ
    reliance checks     `reliance_check` before each debias stage (whether it trains), less the
                        cue-only passes it reads
    forward             the Trainer's `compute_loss` (the model's forward and its losses)
    backward            `Accelerator.backward`
    optimizer           the optimizer's and the scheduler's steps, gradient clipping, zero_grad
    router stage        router-label inference (pooled states and every expert's logits cached
                        once), router training and threshold tuning
    MID λ fitting       the λ grid (over the cue-only passes)
    saving              stage checkpoints and the final folder
    other               the rest of `train` (Trainer set-up, seeding, copying experts, ...)

Below the sum, three rows count calls made in every pass (training batches and the router / MID
inference alike): processor calls, text counterfactual building, image token masking.

Per stage: the `seconds_total` of each stage in the training report (the profiler's overhead
included; the unprofiled wall time of a recipe is in `bench/results/synthetic*.json`).
Peak memory: the process's peak resident set after each recipe (`ru_maxrss`; each recipe runs in
a fresh process, so the peaks are its own). Writes bench/results/profile_training_<name>.json and
.md and prints the table.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

#: (part, [(file suffix, function name), ...], callers: only calls made from these functions
#: count (None: every call)). Cumulative times of the first match of each entry are summed.
PARTS = (
    ("data loading", [("data/collator.py", "__call__")], [("_utils/fetch.py", "fetch")]),
    ("image masks", [("training/run.py", "precompute_image_masks")], None),
    ("cue-only passes", [("training/run.py", "get")], None),
    ("reliance checks", [("training/reliance_check.py", "reliance_check")], None),
    ("forward", [("transformers/trainer.py", "compute_loss")], None),
    ("backward", [("accelerate/accelerator.py", "backward")], None),
    ("optimizer", [("accelerate/optimizer.py", "step"), ("torch/optim/lr_scheduler.py", "step"),
                   ("accelerate/accelerator.py", "clip_grad_norm_"), ("accelerate/optimizer.py", "zero_grad")],
     None),
    ("router stage", [("training/run.py", "_router_stage")], None),
    ("MID λ fitting", [("training/run.py", "_mid_stage")], None),
    ("saving", [("training/run.py", "_save_stage"), ("modeling_mme_jd.py", "save_pretrained")], None),
)
#: Supplementary rows (not in the sum): calls made in every pass, training and inference alike.
ACROSS = (
    ("processor calls (every pass)", [("counterfactual_mme_jd.py", "call_processor")], None),
    ("text counterfactual building (every pass)", [("data/collator.py", "_text_counterfactual_texts")], None),
    ("image token masking (every pass)", [("counterfactual_mme_jd.py", "mask_image_tokens")], None),
)
TOP_LEVEL = ("data loading", "image masks", "cue-only passes", "reliance checks", "forward", "backward", "optimizer", "router stage", "MID λ fitting",
             "saving")


def _matches(function: tuple[str, int, str], suffix: str, name: str) -> bool:
    return function[0].replace(os.sep, "/").endswith(suffix) and function[2] == name


def part_seconds(stats: pstats.Stats) -> dict[str, float]:
    """Seconds per part (`PARTS`) from a profile, plus `total` (`train`) and `other`."""
    table = stats.stats  # {function: (primitive calls, calls, own time, cumulative time, callers)}
    seconds: dict[str, float] = {}
    for part, functions, callers in (*PARTS, *ACROSS):
        total = 0.0
        for suffix, name in functions:
            for function, (_, _, _, cumulative, by_caller) in table.items():
                if not _matches(function, suffix, name):
                    continue
                if callers is None:
                    total += cumulative
                else:
                    total += sum(edge[3] for caller, edge in by_caller.items()
                                 if any(_matches(caller, s, n) for s, n in callers))
        seconds[part] = round(total, 2)
    train = [v[3] for f, v in table.items() if _matches(f, "training/run.py", "train")]
    seconds["total"] = round(max(train, default=0.0), 2)
    seconds["other"] = round(seconds["total"] - sum(seconds[p] for p in TOP_LEVEL), 2)
    return seconds


def synthetic_run(recipe: str, num_train: int, epochs: float, seed: int, folder: str):
    """(model, data, TrainingArguments, MMEJDTrainingConfig) of the synthetic benchmark's settings."""
    from mme_jd.bench import BenchSettings, training_arguments, training_config
    from mme_jd.data.synthetic import make_synthetic_benchmark
    from mme_jd.tiny import pretrained_tiny_model

    settings = BenchSettings(num_train=num_train, epochs=epochs, seeds=(seed,))
    data = make_synthetic_benchmark(num_train=num_train, num_validation_balanced=settings.num_validation_balanced,
                                    num_test=settings.num_test, seed=seed, p_cue=settings.p_cue,
                                    label_noise=settings.label_noise, splits=("train", "validation_balanced"))
    return (pretrained_tiny_model().eval(), data, training_arguments(settings, seed, folder),
            training_config(settings, recipe=recipe))


def real_run(name: str, recipe: str, num_train: int, epochs: float, seed: int, folder: str):
    """(model, data, TrainingArguments, MMEJDTrainingConfig) of `bench/real_data.py`'s settings on
    the first `num_train` training rows and 300 validation rows of a real dataset."""
    from transformers import TrainingArguments

    from mme_jd.data.sources import load_data
    from mme_jd.minilm import minilm_mme_jd
    from mme_jd.training import MMEJDTrainingConfig

    data = load_data(name, splits=["train", "validation"])
    data["train"] = data["train"].select(range(min(num_train, len(data["train"]))))
    data["validation"] = data["validation"].select(range(min(300, len(data["validation"]))))
    task = "sentiment" if name == "mvsa_single" else "sarcasm"
    args = TrainingArguments(output_dir=folder, per_device_train_batch_size=8, num_train_epochs=epochs,
                             learning_rate=1e-3, warmup_steps=0.06, save_strategy="no", report_to="none",
                             use_cpu=True, seed=seed, disable_tqdm=True, logging_steps=50)
    config = MMEJDTrainingConfig(recipe=recipe, router_split="validation", mid_split="validation",
                                 inference_batch_size=64)
    return minilm_mme_jd(task, head="linear").eval(), data, args, config


def profile_recipe(recipe: str, num_train: int, epochs: float, seed: int, data_name: str = "synthetic") -> dict:
    """Train `recipe` under cProfile in this process; its parts, stages and peak memory."""
    import torch

    from mme_jd.training import train

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        if data_name == "synthetic":
            model, data, args, config = synthetic_run(recipe, num_train, epochs, seed, folder)
        else:
            model, data, args, config = real_run(data_name, recipe, num_train, epochs, seed, folder)
        profiler = cProfile.Profile()
        started = time.perf_counter()
        profiler.enable()
        report = train(model, data, args, config)
        profiler.disable()
        wall = time.perf_counter() - started
    parts = part_seconds(pstats.Stats(profiler))
    stages = {stage["stage"] + (" (skipped)" if stage.get("skipped") else ""): stage["seconds_total"]
              for stage in report["stages"]}
    return {"recipe": recipe, "wall_seconds_profiled": round(wall, 2), "parts": parts, "stages": stages,
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def markdown(results: dict) -> str:
    runs = results["runs"]
    names = [run["recipe"] for run in runs]
    erm = runs[0]["parts"]["total"] or 1.0
    lines = [f"# Training profile ({results['name']})", "",
             (f"Synthetic benchmark, {results['num_train']} training rows, {results['epochs']} epochs, batch 64, "
              if results.get("data", "synthetic") == "synthetic" else
              f"{results['data']}, MiniLM-LLaVA, {results['num_train']} training rows, {results['epochs']} epochs, "
              "batch 8, ") +
             f"1 torch thread, seed {results['seed']}, under cProfile (`bench/profile_training.py`; its module "
             "docstring defines the parts). Seconds; × ERM: over the ERM run's total.", "",
             "| Part | " + " | ".join(names) + " | " + " | ".join(f"{n} share" for n in names) + " |",
             "|---|" + "---:|" * (2 * len(names))]
    for part in [p for p, _, _ in PARTS] + ["other", "total"] + [p for p, _, _ in ACROSS]:
        values = [run["parts"].get(part, 0.0) for run in runs]
        shares = [f"{v / (run['parts']['total'] or 1.0):.0%}" for v, run in zip(values, runs)]
        label = f"**{part}**" if part == "total" else part
        lines.append(f"| {label} | " + " | ".join(f"{v:.1f}" for v in values) + " | " + " | ".join(shares) + " |")
        if part == "total":
            lines.append("| total × ERM | " + " | ".join(f"{run['parts']['total'] / erm:.2f}" for run in runs)
                         + " |" + " |" * len(runs))
    lines += ["", "| Stage | seconds |", "|---|---:|"]
    for run in runs:
        for stage, seconds in run["stages"].items():
            lines.append(f"| {run['recipe']}: {stage} | {seconds:.1f} |")
    lines += ["", "| Peak resident memory | MiB |", "|---|---:|"]
    lines += [f"| {run['recipe']} | {run['peak_rss_mib']:.0f} |" for run in runs]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-train", type=int, default=6000, help="training rows (default: the full bench's)")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recipes", default="general,mme_jd", help="the first is the ERM reference")
    parser.add_argument("--data", default="synthetic", choices=["synthetic", "mmsd", "mmsd2", "mvsa_single"])
    parser.add_argument("--name", default="before", help="results file: profile_training_<name>.json/.md")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # run one recipe here, print JSON
    cli = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if cli.one:
        print(json.dumps(profile_recipe(cli.one, cli.num_train, cli.epochs, cli.seed, cli.data)))
        return 0
    from mme_jd.files import atomic_write_text
    from mme_jd.provenance import run_environment

    runs = []
    for recipe in [r.strip() for r in cli.recipes.split(",") if r.strip()]:
        # a fresh process per recipe: its peak memory is its own
        done = subprocess.run([sys.executable, __file__, "--one", recipe, "--num-train", str(cli.num_train),
                               "--epochs", str(cli.epochs), "--seed", str(cli.seed), "--data", cli.data],
                              check=True, capture_output=True, text=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"[profile] {recipe}: {runs[-1]['parts']['total']} s", flush=True)
    results = {"name": cli.name, "data": cli.data, "num_train": cli.num_train, "epochs": cli.epochs, "seed": cli.seed, "runs": runs,
               "environment": run_environment()}
    text = markdown(results)
    atomic_write_text(RESULTS / f"profile_training_{cli.name}.json", json.dumps(results, indent=2) + "\n",
                      make_parents=True)
    atomic_write_text(RESULTS / f"profile_training_{cli.name}.md", text, make_parents=True)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
