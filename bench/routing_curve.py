"""How much of a trained MME-JD's shortcut recovery is its routing? The routing curve of one
saved real-data run, and how the router stage's choice moves with the router's initialisation.

    python bench/routing_curve.py --model OUT/mmsd-to-mmsd2/mme_jd_told/final \
        --results bench/results/real_mmsd-to-mmsd2_full.json [--inits 5]

For a model saved by `bench/real_data.py`, told or untold (its experts and router, its
`training_report.json`, and the run's `run_settings.json` one folder up), on the run's own data
(`--results`' rows and seed), with the validation split read as the router stage reads it
(`training.run.router_split_passes`: the cue-only passes, the declared or inferred selection
groups, every trained expert's logits) and the rules it was trained with:

* the curve: every routing the router stage could choose (the router's own strategy, or every
  routed row to the text expert where the router could choose more; one row per 5% of
  validation routed), each with its validation share, accuracy and worst-group accuracy
  (out-of-fold router scores, as the stage tunes on: `router_labels.routing_candidates`), and, at
  the same threshold, the share routed, MMSD2.0 F1 and recovery ratio, and MMSD-test accuracy on
  the test splits (the router refitted on every validation row, as the stage does);
* the choice under `--inits` router initialisations (seeded `reset_parameters`; the folds and
  the fit are the run's): what the router stage keeps each time (`cheapest_routing` within the
  run's accuracy budget and cost tolerance) and its test figures. The run's own choice came from
  one initialisation that cannot be replayed; its figures are in `--results` and, as
  `saved_routing`, here.

Nothing is trained but the router (seconds a fit, on cached pooled states). Writes
routing_curve_<dataset><suffix>.json and .md beside `--results`, and prints the table. Choices
are read on validation only; the test columns say what each would have given.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import torch

from real_data import CUE_FREE_REFERENCE, _configure, load_data, load_saved_model, recovery_references

from mme_jd.files import atomic_write_text

#: Validation shares routed at which the curve has a row (the candidate nearest each).
CURVE_SHARES = tuple(round(0.05 * k, 2) for k in range(21))


def _split_outputs(model, rows, batch_size: int, **kwargs) -> dict:
    """Labels, pooled states and the general and text experts' logits of every row (one pass)."""
    from mme_jd.inference import collect_outputs

    out = collect_outputs(model, model.processor, rows, batch_size=batch_size, mode="mme_jd", return_experts=True,
                          progress=True, **kwargs)
    return {key: out[key] for key in ("labels", "pooled_hidden_state", "general_logits", "text_debias_logits",
                                      "image_debias_logits", *(("groups",) if "groups" in out else ()))}


def _experts(out: dict) -> dict[str, torch.Tensor]:
    return {"general": out["general_logits"], "image_debias": out["image_debias_logits"],
            "text_debias": out["text_debias_logits"]}


def _test_figures(model, router_logits: torch.Tensor, out: dict, routed: str | None, threshold: float,
                  references: tuple[float, float] | None) -> dict[str, float]:
    """Share routed, accuracy, F1 and (with `recovery_references`) recovery ratio of one routing
    on one test split."""
    from mme_jd.evaluation.metrics import classification_metrics, recovery_ratio
    from mme_jd.modeling.routing_mme_jd import Strategy, combine, route

    strategy = route(router_logits, threshold, routed, model.config.skipped_experts)
    temperatures = {name: model.config.expert_temperature(name) for name in _experts(out)}
    predictions = combine(strategy, _experts(out), model.config.both_combination, temperatures).argmax(-1)
    metrics = classification_metrics(predictions.tolist(), out["labels"].tolist(), num_labels=2)
    figures = {"routed_share": round(float((strategy != Strategy.NONE).float().mean()), 4),
               "accuracy": round(metrics["accuracy"], 4), "f1": round(metrics["f1"], 4)}
    if references is not None:
        figures["recovery_ratio"] = round(recovery_ratio(metrics["f1"], *references), 4)
    return figures


def _router_logits(model, pooled: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.router(pooled.to(model.router.hidden.weight.device)).cpu()


def _curve_rows(candidates: list[dict]) -> list[dict]:
    """For each routed strategy, the candidate nearest each of `CURVE_SHARES` (once each)."""
    rows = []
    for routed in dict.fromkeys(c["routed_strategy"] for c in candidates):
        mine = [c for c in candidates if c["routed_strategy"] == routed]
        picked = {id(min(mine, key=lambda c: (abs(c["routed_share"] - share), c["threshold"]))): None
                  for share in CURVE_SHARES}
        rows.extend(sorted((c for c in mine if id(c) in picked), key=lambda c: c["routed_share"]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="a saved MME-JD model of a real-data run")
    parser.add_argument("--results", required=True, type=Path, help="that run's results file")
    parser.add_argument("--inits", type=int, default=5, help="router initialisations to refit (default 5)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--suffix", default=None, help="of the output names (default: the results file's)")
    cli = parser.parse_args()
    if not (cli.model / "config.json").is_file():
        parser.error(f"--model {cli.model}: no config.json there; give the `final` folder of a saved run.")
    settings_path = cli.model.parent / "run_settings.json"
    if not settings_path.is_file():
        parser.error(f"--model {cli.model}: no run_settings.json beside it ({settings_path}); give a model saved by "
                     "bench/real_data.py (OUT/<dataset>/mme_jd[_told]/final).")
    _configure(cli.threads)

    from transformers import TrainingArguments

    from mme_jd.modeling.routing_mme_jd import Strategy, strategy_targets, usable_strategies
    from mme_jd.training.router_labels import (cheapest_routing, fit_router, out_of_fold_router_logits,
                                               routing_candidates)
    from mme_jd.training.mid import accuracy
    from mme_jd.training.run import CueOnlyPasses, router_arguments, router_split_passes, saved_training_config

    results = json.loads(cli.results.read_text())
    run_settings = json.loads(settings_path.read_text())
    optimizer = run_settings["optimizer"]
    if results["dataset"] != "mmsd-to-mmsd2":
        parser.error(f"--results {cli.results}: dataset {results['dataset']!r}; the curve reads MMSD2.0 F1 "
                     "(mmsd-to-mmsd2 runs only).")
    rows, seed = results["settings"]["rows"], results["settings"]["seed"]
    data, _ = load_data(results["dataset"], rows["train"], rows["validation"], rows["test"], seed,
                        not results["settings"]["raw_text"])
    if len(data["validation"]) != run_settings["data_rows"]["validation"]:
        parser.error(f"the run's router split had {run_settings['data_rows']['validation']} rows, these data "
                     f"{len(data['validation'])}: --results is not the run this model was saved by.")
    # recovery on MMSD2.0's test split only: MMSD's test split still carries the cue
    references = {"test": recovery_references(results["methods"], "test"), "test_mmsd": None}
    if references["test"] is None:
        parser.error(f"--results {cli.results}: no ERM or no {CUE_FREE_REFERENCE!r} figures to measure recovery "
                     "from (add them with bench/real_data.py --add-references).")

    model = load_saved_model(cli.model).eval()
    config = saved_training_config(cli.model)
    if config is None:
        parser.error(f"--model {cli.model}: no training_report.json there (the router stage's settings).")
    # the router split as the router stage reads it: its cue-only passes, selection groups (declared
    # or inferred) and every expert's logits (`router_split_passes`)
    val, experts, group_column, group_sizes = router_split_passes(
        model, model.processor, data, config, CueOnlyPasses(model, model.processor, data, config, {}))
    tests = {split: _split_outputs(model, data[split], cli.batch_size, description=split)
             for split in ("test", "test_mmsd")}
    saved = {"threshold": model.config.router_threshold, "routed_strategy": model.config.routed_strategy}
    saved_figures = {split: _test_figures(model, _router_logits(model, out["pooled_hidden_state"]), out,
                                          saved["routed_strategy"], saved["threshold"], references[split])
                     for split, out in tests.items()}

    labels, groups, pooled = val["labels"], val.get("groups"), val["pooled_hidden_state"]
    targets = strategy_targets(labels, experts, model.config.both_combination)
    # the run's optimiser settings, with the router stage's schedule
    args = router_arguments(TrainingArguments(output_dir=str(cli.model.parent), report_to="none", use_cpu=True,
                                              seed=optimizer["seed"], weight_decay=optimizer["weight_decay"],
                                              adam_beta1=optimizer["adam_beta1"], adam_beta2=optimizer["adam_beta2"],
                                              adam_epsilon=optimizer["adam_epsilon"],
                                              max_grad_norm=optimizer["max_grad_norm"]), config)
    general_accuracy = accuracy(experts["general"].argmax(-1), labels)
    budget, tolerance = config.selection_max_accuracy_drop, config.router_cost_tolerance
    # the router's own choice, and every routed row to the text expert unless that is all it can choose
    usable = usable_strategies(model.config.skipped_experts)
    routed_strategies = (None,) if set(usable) <= {Strategy.NONE, Strategy.TEXT} else (None, "text")
    curve, choices = [], []
    for init in range(cli.inits):
        torch.manual_seed(init)
        model.router.reset_parameters()
        selection_logits = out_of_fold_router_logits(model, pooled, targets, args, config.router_selection_folds,
                                                     seed=args.seed)
        fit_router(model, pooled, targets, args, quiet=True)
        test_logits = {split: _router_logits(model, out["pooled_hidden_state"]) for split, out in tests.items()}

        def on_tests(candidate: dict) -> dict:
            return {split: _test_figures(model, test_logits[split], out, candidate["routed_strategy"],
                                         candidate["threshold"], references[split]) for split, out in tests.items()}

        kept = cheapest_routing(model, selection_logits, experts, labels, groups, tolerance,
                                config.router_max_routed_share, budget)
        choices.append({"init": init, **{k: kept[k] for k in ("routed_strategy", "threshold", "routed_share",
                                                              "accuracy", "worst_group_accuracy")},
                        **on_tests(kept)})
        if init == 0:
            candidates = routing_candidates(model, selection_logits, experts, labels, groups, routed_strategies)
            for candidate in _curve_rows(candidates):
                curve.append({**{k: candidate[k] for k in ("routed_strategy", "threshold", "routed_share", "accuracy",
                                                           "worst_group_accuracy")},
                              "within_budget": budget is None or candidate["accuracy"] >= general_accuracy - budget,
                              **on_tests(candidate)})
    payload = {"model": str(cli.model), "results": str(cli.results), "seed": seed, "rows": rows,
               "router_label_shares": {"text": round(float((targets != Strategy.NONE).float().mean()), 4)},
               "validation_general_accuracy": round(general_accuracy, 4), "max_accuracy_drop": budget,
               "cost_tolerance": tolerance, "selection_groups": {"column": group_column, "sizes": group_sizes},
               "saved_routing": {**saved, **saved_figures},
               "curve": curve, "choices": choices}
    suffix = cli.suffix if cli.suffix is not None else cli.results.stem.removeprefix(f"real_{results['dataset']}")
    stem = cli.results.parent / f"routing_curve_{results['dataset']}{suffix}"
    atomic_write_text(stem.with_suffix(".json"), json.dumps(payload, indent=1) + "\n")
    table = markdown(payload)
    atomic_write_text(stem.with_suffix(".md"), table)
    print(table)


def _pct(value: float) -> str:
    return f"{100 * value:.0f}%"


def markdown(payload: dict) -> str:
    """The curve and the choices as markdown tables."""
    general = payload["validation_general_accuracy"]
    lines = [f"# Routing curve of {payload['model']}", "",
             f"Validation: out-of-fold router scores (init 0); general expert's accuracy {general:.4f}, budget "
             f"{payload['max_accuracy_drop']} below it; router labels (text) {_pct(payload['router_label_shares']['text'])} "
             "of validation. Test: the router refitted on every validation row.", "",
             "| routed to | val. share | val. acc | val. WGA | in budget | MMSD2.0 share | MMSD2.0 F1 | recovery "
             "| MMSD share | MMSD-test acc |", "|---|---:|---:|---:|:-:|---:|---:|---:|---:|---:|"]
    for row in payload["curve"]:
        lines.append(f"| {row['routed_strategy'] or 'router'} | {_pct(row['routed_share'])} | {row['accuracy']:.4f} "
                     f"| {row['worst_group_accuracy']:.4f} | {'yes' if row['within_budget'] else 'no'} "
                     f"| {_pct(row['test']['routed_share'])} | {row['test']['f1']:.4f} "
                     f"| {row['test']['recovery_ratio']:.2f} | {_pct(row['test_mmsd']['routed_share'])} "
                     f"| {row['test_mmsd']['accuracy']:.4f} |")
    lines += ["", "What the router stage keeps under each router initialisation:", "",
              "| init | routed to | val. share | val. WGA | MMSD2.0 share | recovery | MMSD-test acc |",
              "|---:|---|---:|---:|---:|---:|---:|"]
    for row in payload["choices"]:
        lines.append(f"| {row['init']} | {row['routed_strategy'] or 'router'} | {_pct(row['routed_share'])} "
                     f"| {row['worst_group_accuracy']:.4f} | {_pct(row['test']['routed_share'])} "
                     f"| {row['test']['recovery_ratio']:.2f} | {row['test_mmsd']['accuracy']:.4f} |")
    # no ratio where ERM on MMSD2.0 is not above ERM on MMSD (`recovery_ratio` is NaN there)
    recoveries = [row["test"]["recovery_ratio"] for row in payload["choices"]
                  if math.isfinite(row["test"]["recovery_ratio"])]
    if len(recoveries) > 1:
        lines += ["", f"Recovery over {len(recoveries)} initialisations: {statistics.mean(recoveries):.2f} ± "
                  f"{statistics.stdev(recoveries):.2f} (min {min(recoveries):.2f}, max {max(recoveries):.2f})."]
    saved = payload["saved_routing"]
    lines += ["", f"The saved model's own routing ({saved['routed_strategy'] or 'router'}, threshold "
              f"{saved['threshold']:.4f}): MMSD2.0 share {_pct(saved['test']['routed_share'])}, recovery "
              f"{saved['test']['recovery_ratio']:.2f}, MMSD-test accuracy {saved['test_mmsd']['accuracy']:.4f}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
