"""How much of the synthetic shortcut is the learning rate? ERM, MID and MME-JD across lr × p_cue.

    python bench/lr_sensitivity.py [--learning-rates 1e-3,2e-3,5e-3] [--p-cues 0.9,0.97] [--seeds 0]

For every (learning rate, p_cue, seed): one `mme_jd` run on the pretrained tiny base (ERM is its
general expert; MID with λ fitted on validation_balanced; each debias expert; routed MME-JD),
and per (learning rate, seed) the oracle (general on the cue-free train split, which does not
depend on p_cue). 6000 training rows, 3 epochs, batch 64, as `make bench`. Writes
bench/results/lr_sensitivity.json and .md (atomically) and prints the table.

Why: at lr 5e-3 (the bench's setting) ERM takes the shortcut, but on seed 0 ERM trained at
1e-3 already reached worst-group accuracy 0.96 at p_cue 0.9, the oracle's level. A debiasing
claim on this benchmark must say at which learning rate it holds.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from mme_jd.bench import recipe_figures
from mme_jd.files import atomic_write_text

METHODS = ("ERM (general expert)", "MID (λ fitted on validation_balanced)", "text_debias expert alone",
           "image_debias expert alone", "MME-JD routed", "oracle (cue-free train)")


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def run(learning_rate: float, p_cue: float, seed: int, recipe: str, output: Path) -> dict:
    from transformers import TrainingArguments, set_seed

    from mme_jd.data.synthetic import make_synthetic_benchmark
    from mme_jd.tiny import pretrained_tiny_model
    from mme_jd.training import MMEJDTrainingConfig, train

    data = make_synthetic_benchmark(num_train=6000, num_test=1000, seed=seed, p_cue=p_cue,
                                    splits=["train", "train_cue_free", "validation_balanced", "test_id",
                                            "test_ood", "test_balanced"])
    set_seed(seed)
    model = pretrained_tiny_model()
    args = TrainingArguments(output_dir=str(output), per_device_train_batch_size=64, num_train_epochs=3.0,
                             learning_rate=learning_rate, warmup_steps=10, logging_steps=100, save_strategy="no",
                             report_to="none", use_cpu=True, seed=seed, disable_tqdm=True)
    config = MMEJDTrainingConfig(recipe="general" if recipe == "oracle" else recipe,
                                 train_split="train_cue_free" if recipe == "oracle" else "train")
    started = time.perf_counter()
    report = train(model, data, args, config)
    figures = recipe_figures(model, data, recipe)
    return {"seconds": round(time.perf_counter() - started, 1), "methods": figures,
            "stages": [{k: v for k, v in s.items() if k in ("stage", "train_loss", "threshold", "routed_strategy",
                                                             "lambda_text", "lambda_image")}
                       for s in report["stages"]]}


def markdown(results: list[dict]) -> str:
    lines = ["| lr | p_cue | seed | method | ID acc | OOD acc | Bal. acc | WGA |", "|---:|---:|---:|---|---:|---:|---:|---:|"]
    for entry in results:
        for method in METHODS:
            figures = entry["methods"].get(method)
            if figures is None:
                continue
            p_cue = "–" if method.startswith("oracle") else f"{entry['p_cue']:g}"
            cells = [f"{figures[s]['accuracy']:.3f}" for s in ("test_id", "test_ood", "test_balanced")]
            lines.append(f"| {entry['learning_rate']:g} | {p_cue} | {entry['seed']} | {method} | "
                         + " | ".join(cells) + f" | {figures['test_balanced']['worst_group_accuracy']:.3f} |")
    return "\n".join(lines)


README_START, README_END = "<!-- bench:lr:start -->", "<!-- bench:lr:end -->"


def compact(results: list[dict]) -> str:
    """Worst-group accuracy on test_balanced per (lr, p_cue, seed): the README's table."""
    lines = ["| lr | p_cue | seed | ERM | MID | MME-JD routed | oracle (cue-free train, 3 epochs) |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    oracle = {(e["learning_rate"], e["seed"]): e["methods"]["oracle (cue-free train)"]
              for e in results if "oracle (cue-free train)" in e["methods"]}

    def wga(figures) -> str:
        return f"{figures['test_balanced']['worst_group_accuracy']:.3f}" if figures else "–"

    for e in results:
        m = e["methods"]
        lines.append(f"| {e['learning_rate']:g} | {e['p_cue']:g} | {e['seed']} | {wga(m['ERM (general expert)'])} | "
                     f"{wga(m['MID (λ fitted on validation_balanced)'])} | {wga(m['MME-JD routed'])} | "
                     f"{wga(oracle.get((e['learning_rate'], e['seed'])))} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--learning-rates", type=_floats, default=[1e-3, 2e-3, 5e-3])
    parser.add_argument("--p-cues", type=_floats, default=[0.9, 0.97])
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default="outputs/lr_sensitivity")
    parser.add_argument("--results", default=str(Path(__file__).resolve().parent / "results" / "lr_sensitivity.json"))
    parser.add_argument("--readme", default=str(Path(__file__).resolve().parent.parent / "README.md"),
                        help="README whose learning-rate table is rewritten ('' : none)")
    cli = parser.parse_args()
    from mme_jd.training import MMEJDTrainingConfig

    torch.set_num_threads(cli.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results_path = Path(cli.results)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    done = json.loads(results_path.read_text())["runs"] if results_path.exists() else []
    key = lambda e: (e["learning_rate"], e["p_cue"], e["seed"])  # noqa: E731
    finished = {key(e) for e in done}
    started = time.perf_counter()
    for seed in cli.seeds:
        for learning_rate in cli.learning_rates:
            for p_cue in cli.p_cues:
                if (learning_rate, p_cue, seed) in finished:
                    continue  # rerunning the command resumes: finished configurations are kept
                entry = {"learning_rate": learning_rate, "p_cue": p_cue, "seed": seed}
                entry.update(run(learning_rate, p_cue, seed, "mme_jd", Path(cli.output) / f"{learning_rate}_{p_cue}_{seed}"))
                if p_cue == cli.p_cues[0]:  # the oracle's data has no cue correlation: once per lr and seed
                    oracle = run(learning_rate, p_cue, seed, "oracle", Path(cli.output) / f"oracle_{learning_rate}_{seed}")
                    entry["methods"].update(oracle["methods"])
                    entry["oracle_seconds"] = oracle["seconds"]
                done.append(entry)
                payload = {"settings": {"num_train": 6000, "epochs": 3.0, "batch_size": 64, "label_noise": 0.1,
                                        "router_cost_tolerance": MMEJDTrainingConfig.router_cost_tolerance},
                           "runs": sorted(done, key=key)}
                atomic_write_text(results_path, json.dumps(payload, indent=2, default=str))
                print(markdown([entry]), flush=True)
    done = sorted(done, key=key)
    table = markdown(done)
    atomic_write_text(results_path.with_suffix(".md"), "# Learning-rate sensitivity (synthetic benchmark)\n\n"
           "Worst-group accuracy (WGA) on test_balanced:\n\n" + compact(done) + "\n\nEvery figure:\n\n" + table + "\n")
    if cli.readme:
        from mme_jd.bench import update_readme

        update_readme(Path(cli.readme), compact(done) + f"\n\nFrom `python bench/lr_sensitivity.py` ({results_path.name}; "
                      "6000 training rows, 3 epochs, batch 64, label noise 0.1; worst-group accuracy on test_balanced).",
                      README_START, README_END)
    print(table)
    print(f"wrote {results_path} ({(time.perf_counter() - started) / 60:.1f} min)")


if __name__ == "__main__":
    main()
