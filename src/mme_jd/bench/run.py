"""Running the bench: one seed (`run_seed`: every registry method in turn), every seed and the
files they make (`run_bench`), and its command line (`add_arguments`, `run_from_args`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..files import atomic_write_text
from ..provenance import run_environment
from .methods import METHODS, REGISTRY, SeedRun, mme_jd_run
from .report import aggregate, markdown_report, readme_section, update_readme
from .settings import BenchSettings


def say(message: str) -> None:
    """The bench's progress line."""
    print(f"[bench] {message}", flush=True)


def write_json(path: Path, value: Any) -> None:
    """`value` as indented JSON at `path`, atomically (parent folders made)."""
    atomic_write_text(path, json.dumps(value, indent=2, default=str) + "\n", make_parents=True)


def run_seed(seed: int, settings: BenchSettings, model_factory: Callable[..., Any], work_dir: Path,
             progress: Callable[[str], None] = say) -> dict:
    """Train and evaluate every registry method (less `settings.skip_methods`) on one seed's
    data. Returns the seed's JSON."""
    unknown = sorted(set(settings.skip_methods) - set(METHODS))
    if unknown:
        raise ValueError(f"skip_methods {unknown}: no such bench methods; the methods are {list(METHODS)}.")
    started = time.perf_counter()
    run = SeedRun(seed, settings, model_factory, work_dir, progress)
    run.say(f"data {', '.join(f'{k}={len(v)}' for k, v in run.data.items())}")
    methods = {method.name: method.run(run).entry() for method in REGISTRY
               if method.name not in settings.skip_methods}
    # ratios to ERM's training (the mme_jd run's general stage) and to one general forward
    reference = run.shared(mme_jd_run)
    erm_seconds = reference.stage_seconds("general")
    general = run.timing["mme_jd"]
    for entry in methods.values():
        seconds, ratio = entry["training_seconds"], entry["inference_ratio"]
        entry["training_ratio"] = None if seconds is None else round(seconds / erm_seconds, 3)
        entry["samples_per_second"] = (round(general["rows"] / (general["seconds"]["general"] * ratio), 1)
                                       if ratio else None)
    return {"seed": seed, "settings": dataclasses.asdict(settings), "methods": methods, "timing": run.timing,
            "training": run.training, "seconds": round(time.perf_counter() - started, 1)}


def run_bench(
    quick: bool = False,
    seeds: Sequence[int] | None = None,
    output_dir: str | os.PathLike = "bench/results",
    model_factory: Callable[..., Any] | None = None,
    readme: str | os.PathLike | None = "README.md",
    work_dir: str | os.PathLike | None = None,
    name: str | None = None,
    resume: bool = False,
    keep_work_dir: bool = False,
    progress: Callable[[str], None] | None = say,
    **overrides: Any,
) -> dict:
    """Run the benchmark (see `mme_jd.bench`) and write its files. Returns the summary.

    Args:
        quick: the quick variant (`settings.QUICK_SETTINGS`).
        seeds: the seeds (default: 0, 1, 2; quick: 0).
        output_dir: where the JSON and Markdown files go.
        model_factory: builds a fresh `MMEJDModel`; config fields as keyword arguments (default:
            `pretrained_tiny_model`).
        readme: the README whose bench section is rewritten (None: leave it).
        work_dir: where checkpoints go (default: `<output_dir>/tmp/<name>`, removed at the end).
        name: file name stem (default: "synthetic", quick: "synthetic_quick").
        resume: reuse a seed's JSON written before with the same settings.
        overrides: `BenchSettings` fields (num_train, num_test, epochs, max_steps, skip_methods, ...).
    """
    progress = progress or (lambda message: None)
    settings = BenchSettings.for_run(quick, seeds=tuple(seeds) if seeds is not None else None, **overrides)
    if settings.num_threads:
        torch.set_num_threads(settings.num_threads)
    if model_factory is None:
        from ..tiny import pretrained_tiny_model as model_factory
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
        write_json(path, result)
        progress(f"seed {seed}: done in {result['seconds'] / 60:.1f} min, wrote {path}")
        seed_results.append(result)
    summary = aggregate(seed_results)
    # a reused seed counts the time it took when it ran
    seconds = time.perf_counter() - started + resumed_seconds
    summary.update(settings=settings_dict, name=name, seconds=round(seconds, 1),
                   methods_description={k: v for k, v in METHODS.items() if k in summary["methods"]},
                   environment=environment,
                   model_factory=getattr(model_factory, "__name__", type(model_factory).__name__))
    write_json(output / f"{name}.json", summary)
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
    parser.add_argument("--quick", action="store_true",
                        help="one seed, 3000 training rows, 3 epochs, the costliest controls left out "
                             "(under 10 minutes)")
    parser.add_argument("--seeds", type=lambda s: tuple(int(x) for x in s.split(",")), default=None,
                        help="comma-separated seeds (default: 0,1,2; quick: 0)")
    parser.add_argument("--output-dir", default="bench/results", help="where results go (default: %(default)s)")
    parser.add_argument("--readme", default="README.md", help="README whose bench section is rewritten ('' : none)")
    parser.add_argument("--num-train", type=int, default=None, help="training rows (default 6000; quick 3000)")
    parser.add_argument("--num-test", type=int, default=None, help="rows per test split (default 1000; quick 500)")
    parser.add_argument("--epochs", type=float, default=None, help="epochs (default 3, also quick)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: 1)")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="learning rate of every method (default 2e-3)")
    parser.add_argument("--p-cue", type=float, default=None,
                        help="training P(cue agrees with the label) (default 0.97)")
    parser.add_argument("--routed-budget", type=float, default=None,
                        help="share of validation samples MME-JD routed (budget) may route (default 0.25)")
    parser.add_argument("--routed-cost-tolerance", type=float, default=None,
                        help="router_cost_tolerance of the MME-JD runs: the validation worst-group accuracy "
                             "their routing may give up for cheaper inference (default: MMEJDTrainingConfig's, 0.01)")
    parser.add_argument("--name", default=None, help="results file stem (default synthetic / synthetic_quick)")
    parser.add_argument("--resume", action="store_true", help="reuse finished seeds with the same settings")
    return parser


def run_from_args(args: argparse.Namespace) -> dict:
    """`run_bench` with the options of `add_arguments`."""
    return run_bench(quick=args.quick, seeds=args.seeds, output_dir=args.output_dir, readme=args.readme or None,
                     resume=args.resume, num_train=args.num_train, num_test=args.num_test, epochs=args.epochs,
                     num_threads=args.threads, learning_rate=args.learning_rate, p_cue=args.p_cue,
                     routed_budget=args.routed_budget, routed_cost_tolerance=args.routed_cost_tolerance,
                     name=args.name)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m mme_jd.bench`."""
    from . import __doc__ as description

    parser = add_arguments(argparse.ArgumentParser(prog="python -m mme_jd.bench", description=description,
                                                    formatter_class=argparse.RawDescriptionHelpFormatter))
    run_from_args(parser.parse_args(argv))
    return 0
