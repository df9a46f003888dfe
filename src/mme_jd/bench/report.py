"""The steps after the seeds ran: mean ± std over seeds (`aggregate`), the Markdown tables and
report (`markdown_report`, its prose in `report_template.md` beside this file) and the README
section (`readme_section`, `readme_template.md`; written between markers by `update_readme`)."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from string import Template

from ..files import atomic_write_text
from ..provenance import describe_environment
from .methods import METHODS
from .settings import TEST_SPLITS, BenchSettings

README_START = "<!-- bench:synthetic:start -->"
README_END = "<!-- bench:synthetic:end -->"
#: Routed MME-JD's inference cost target, as a multiple of one general forward.
ROUTED_COST_TARGET = 1.25
#: The mme_jd run's timed variants with a cost breakdown, and their names in the tables.
MIXTURE_VARIANTS = {"mme_jd_routed": "MME-JD routed", "mme_jd_all": "MME-JD all experts",
                    "mme_jd_budget": "MME-JD routed (budget)", "mme_jd_best_wga": "MME-JD routed (best WGA)"}
TIMED_VARIANTS = {"general": "one general forward", **MIXTURE_VARIANTS, "mid": "MID (3 rows per sample)"}
_TEMPLATES = Path(__file__).parent


def _template(name: str) -> Template:
    return Template((_TEMPLATES / name).read_text(encoding="utf-8"))


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
            "skipped_seeds": sum(bool(e.get("skipped")) for e in entries),
        }
    timings = [r["timing"]["mme_jd"] for r in seed_results]
    timing = {}
    for key in ("ratio_to_general", "end_to_end_ratio_to_general", "seconds_per_1000", "samples_per_second"):
        timing[key] = {v: _mean_std([t[key][v] for t in timings]) for v in timings[0].get(key, {})}
    breakdown = {}
    for variant in MIXTURE_VARIANTS:
        parts: dict[str, list[float]] = {}
        for t in timings:
            entry = t["breakdown"].get(variant)
            if not entry:
                continue
            batches = math.ceil(t["rows"] / t["batch_size"])
            for expert, values in entry["experts"].items():
                parts.setdefault(f"{expert} share", []).append(values["share"])
                parts.setdefault(f"{expert} rows per sample", []).append(values["rows"] / t["rows"])
                parts.setdefault(f"{expert} calls per batch", []).append(values["calls"] / batches)
            parts.setdefault("rest (router, heads, switches) share", []).append(entry["other_share"])
        breakdown[variant] = {k: _mean_std(v) for k, v in parts.items()}
    timing["breakdown"] = breakdown
    for key, name in (("routed_away_test_balanced", "MME-JD routed"),
                      ("budget_routed_away_test_balanced", "MME-JD routed (budget)")):
        timing[key] = _mean_std([1 - r["methods"][name]["routed_shares"]["test_balanced"]["none"]
                                 for r in seed_results if name in r["methods"]])
    for key in ("rows", "batch_size", "repeats", "threads"):
        timing[key] = timings[0][key]
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
    """The inference-cost table and where each mixture's time goes."""
    timing = summary["timing"]
    lines = ["| Inference | s / 1000 samples | × general forward | samples/s | end to end × general |",
             "|---|---:|---:|---:|---:|"]
    for variant, label in TIMED_VARIANTS.items():
        if variant not in timing["ratio_to_general"]:
            continue
        lines.append(f"| {label} | {_cell(timing['seconds_per_1000'][variant], 3)} | "
                     f"{_cell(timing['ratio_to_general'][variant], 2)} | "
                     f"{_cell(timing['samples_per_second'][variant], 0)} | "
                     f"{_cell(timing['end_to_end_ratio_to_general'].get(variant), 2)} |")
    columns = [v for v in MIXTURE_VARIANTS if timing["breakdown"].get(v)]
    lines += ["", "| Where the time goes | " + " | ".join(MIXTURE_VARIANTS[v] for v in columns) + " |",
              "|---|" + "---:|" * len(columns)]
    rows = list(dict.fromkeys(row for v in columns for row in timing["breakdown"][v]))
    for row in rows:
        lines.append(f"| {row} | " + " | ".join(_cell(timing["breakdown"][v].get(row), 2) for v in columns) + " |")
    return "\n".join(lines)


def describe_settings(settings: BenchSettings) -> str:
    """One sentence: the run's variant, seeds, data and training budget."""
    kind = "quick" if settings.quick else "full"
    seeds = ", ".join(map(str, settings.seeds))
    epochs = f"{settings.epochs:g} epoch" + ("" if settings.epochs == 1 else "s")
    steps = f"{settings.max_steps} steps" if settings.max_steps > 0 else epochs
    oracle = settings.oracle_epochs
    skipped = f"; left out: {', '.join(settings.skip_methods)}" if settings.skip_methods else ""
    return (f"{kind} run: seeds {seeds}; {settings.num_train} training rows (p_cue {settings.p_cue:g}, label noise "
            f"{settings.label_noise:g}), {steps}, batch {settings.batch_size}, lr {settings.learning_rate:g}"
            + (f" (oracle: {oracle:g} epochs)" if oracle and oracle != settings.epochs else "")
            + f"; {settings.num_validation_balanced} validation_balanced rows; "
            f"{settings.num_test} rows per test split{skipped}")


def _ratio(timing: dict, variant: str) -> str:
    return _cell(timing["ratio_to_general"].get(variant), 2)


def _skipped_note(entry: dict, seeds: int) -> str:
    """What a method's line says when its expert was skipped by the training run's reliance check."""
    skipped = entry.get("skipped_seeds", 0)
    if not skipped:
        return ""
    return (f" (skipped by the training run's reliance check in {skipped} of {seeds} seeds: it then holds the "
            "general expert's weights, and its figures are the general expert's)")


def markdown_report(summary: dict, settings: BenchSettings, seconds: float) -> str:
    """The results Markdown: tables, the registry's method descriptions, the cost breakdown and
    every seed's knobs."""
    timing = summary["timing"]
    routed = timing["ratio_to_general"].get("mme_jd_routed", {}).get("mean")
    within = routed is not None and routed <= ROUTED_COST_TARGET
    verdict = f"{'within' if within else 'above'} the {ROUTED_COST_TARGET:g}× target"
    methods = "\n".join(f"- **{name}**: {METHODS[name]}{_skipped_note(entry, len(summary['seeds']))}"
                        for name, entry in summary["methods"].items())
    knobs = "\n".join(f"- {name}: " + "; ".join(json.dumps(k, default=str) for k in entry["knobs"])
                      for name, entry in summary["methods"].items() if any(entry["knobs"]))
    return _template("report_template.md").substitute(
        description=describe_settings(settings), model_factory=summary.get("model_factory"),
        threads=timing["threads"], minutes=f"{seconds / 60:.1f}",
        environment=describe_environment(summary["environment"]) if summary.get("environment") else "",
        results_table=results_table(summary), methods=methods, timing_rows=timing["rows"],
        timing_batch_size=timing["batch_size"], timing_repeats=timing["repeats"],
        routed_away=_cell(timing["routed_away_test_balanced"], 3), routed_ratio=_ratio(timing, "mme_jd_routed"),
        verdict=verdict, routed_budget=f"{settings.routed_budget:g}",
        budget_routed_away=_cell(timing.get("budget_routed_away_test_balanced"), 3),
        budget_ratio=_ratio(timing, "mme_jd_budget"), best_ratio=_ratio(timing, "mme_jd_best_wga"),
        timing_table=timing_table(summary), knobs=knobs)


def readme_section(summary: dict, settings: BenchSettings, markdown_name: str) -> str:
    """The README's benchmark section: the results table and the routed cost in one paragraph."""
    timing = summary["timing"]
    # the tolerance the runs' router stage used, as recorded with their knobs
    routed = summary["methods"].get("MME-JD routed", {"knobs": []})
    tolerances = {k.get("router_cost_tolerance") for k in routed["knobs"] if k}
    tolerance = ", ".join(f"{t:g}" for t in sorted(t for t in tolerances if t is not None)) or "?"
    return _template("readme_template.md").substitute(
        description=describe_settings(settings), results_table=results_table(summary), tolerance=tolerance,
        routed_away=_cell(timing["routed_away_test_balanced"], 3), routed_ratio=_ratio(timing, "mme_jd_routed"),
        all_ratio=_ratio(timing, "mme_jd_all"), best_ratio=_ratio(timing, "mme_jd_best_wga"),
        routed_budget=f"{settings.routed_budget:g}", budget_ratio=_ratio(timing, "mme_jd_budget"),
        markdown_name=markdown_name).strip()


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
