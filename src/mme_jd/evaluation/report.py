"""Write an evaluation report: `report.json`, `report.md` (and `report.html`) with plots.

`write_report` takes the dict of `diagnostics.Evaluator.evaluate` (any extra top-level
entries are rendered too, as generic tables) and writes, into `out_dir`:

* `report.json`: the results as given, written atomically (temporary file + `os.replace`);
* `report.md`: task metrics, per-group accuracy, reliance, calibration, router and mask
  tables, with the plots below;
* `report.html` when asked: the same content as one self-contained page (no external
  CSS or scripts; images referenced by relative path);
* PNG plots, each only when its data is present: `groups.png` (per-group accuracy bars),
  `routing.png` (router shares), `reliability.png` (reliability diagram), `cue_groups.png`
  (per declared cue, the accuracy of its ``label × cue presence`` groups).

matplotlib is optional (the `report` extra): it is imported inside `write_report` only,
drawn through the Agg canvas without touching pyplot's global backend; without it the
report is written without plots and says so.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..files import atomic_write_text

__all__ = ["write_report"]

_SUPPORTED_FORMATS = ("json", "md", "html")

# display names of the classification metrics (also used by the model card in mme_jd.hub)
METRIC_LABELS = {
    "accuracy": "Accuracy",
    "f1": "F1 (positive class)",
    "precision": "Precision (positive class)",
    "recall": "Recall (positive class)",
    "macro_f1": "Macro F1",
    "weighted_f1": "Weighted F1",
    "macro_precision": "Macro precision",
    "macro_recall": "Macro recall",
}


# --------------------------------------------------------------------------- document model
# The report is built once as a list of blocks, then rendered to Markdown and to HTML, so
# the two formats cannot drift apart.


@dataclass
class _Heading:
    text: str
    level: int = 2


@dataclass
class _Paragraph:
    text: str


@dataclass
class _Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class _Image:
    path: str  # relative to the report folder
    alt: str


@dataclass
class _Code:
    text: str


@dataclass
class _Document:
    title: str
    blocks: list[Any] = field(default_factory=list)

    def add(self, block: Any) -> None:
        self.blocks.append(block)


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else str(value)
    return str(value)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _render_markdown(document: _Document) -> str:
    lines = [f"# {document.title}", ""]
    for block in document.blocks:
        if isinstance(block, _Heading):
            lines += [f"{'#' * block.level} {block.text}", ""]
        elif isinstance(block, _Paragraph):
            lines += [block.text, ""]
        elif isinstance(block, _Table):
            lines.append("| " + " | ".join(_md_cell(h) for h in block.header) + " |")
            lines.append("|" + "|".join(["---"] + ["---:"] * (len(block.header) - 1)) + "|")
            for row in block.rows:
                lines.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
            lines.append("")
        elif isinstance(block, _Image):
            lines += [f"![{block.alt}]({block.path})", ""]
        elif isinstance(block, _Code):
            lines += ["```json", block.text, "```", ""]
    return "\n".join(lines).rstrip() + "\n"


_HTML_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.75rem; }
td:not(:first-child) { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f3f3f3; }
img { max-width: 100%; }
pre { background: #f6f6f6; padding: 0.75rem; overflow-x: auto; }
"""


def _render_html(document: _Document) -> str:
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{esc(document.title)}</title>",
        f"<style>{_HTML_STYLE}</style>",
        "</head>",
        "<body>",
        f"<h1>{esc(document.title)}</h1>",
    ]
    for block in document.blocks:
        if isinstance(block, _Heading):
            parts.append(f"<h{block.level}>{esc(block.text)}</h{block.level}>")
        elif isinstance(block, _Paragraph):
            parts.append(f"<p>{esc(block.text)}</p>")
        elif isinstance(block, _Table):
            parts.append("<table>")
            parts.append("<tr>" + "".join(f"<th>{esc(h)}</th>" for h in block.header) + "</tr>")
            for row in block.rows:
                parts.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>")
            parts.append("</table>")
        elif isinstance(block, _Image):
            parts.append(f'<p><img src="{esc(block.path)}" alt="{esc(block.alt)}"></p>')
        elif isinstance(block, _Code):
            parts.append(f"<pre><code>{esc(block.text)}</code></pre>")
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------- files


def _write_document(document: _Document, out: Path, stem: str, formats: Sequence[str]) -> dict[str, Path]:
    """Write `document` as `out/<stem>.md` and / or `out/<stem>.html`, as `formats` asks;
    returns {format: path} of the files written."""
    written: dict[str, Path] = {}
    for fmt, render in (("md", _render_markdown), ("html", _render_html)):
        if fmt in formats:
            written[fmt] = out / f"{stem}.{fmt}"
            atomic_write_text(written[fmt], render(document))
    return written


def _json_default(value: Any) -> Any:
    """numpy scalars/arrays (and torch tensors) → Python values, without importing numpy."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serialisable.")


# --------------------------------------------------------------------------- plots


def _group_plot_data(results: Mapping[str, Any]) -> tuple[list[str], list[float], float | None] | None:
    groups = results.get("groups")
    if not isinstance(groups, Mapping) or not groups.get("per_group_accuracy"):
        return None
    per_group = groups["per_group_accuracy"]
    return list(per_group), [float(v) for v in per_group.values()], groups.get("group_average_accuracy")


def _routing_plot_data(results: Mapping[str, Any]) -> tuple[list[str], list[float], list[float] | None] | None:
    router = results.get("router")
    if not isinstance(router, Mapping) or not router.get("predicted_share"):
        return None
    names = list(router["predicted_share"])
    predicted = [float(router["predicted_share"][n]) for n in names]
    target_share = router.get("target_share")
    target = [float(target_share.get(n, 0.0)) for n in names] if isinstance(target_share, Mapping) else None
    return names, predicted, target


def _reliability_plot_data(results: Mapping[str, Any]) -> list[Mapping[str, Any]] | None:
    calibration = results.get("calibration")
    if not isinstance(calibration, Mapping) or not calibration.get("bins"):
        return None
    return list(calibration["bins"])


def _save_figure(figure: Any, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=120)


def _draw_plots(results: Mapping[str, Any], out_dir: Path) -> dict[str, Path]:
    """Draw each plot whose data is in `results`; return {plot name: path}."""
    from matplotlib.figure import Figure

    written: dict[str, Path] = {}

    data = _group_plot_data(results)
    if data is not None:
        names, accuracies, average = data
        worst = min(range(len(accuracies)), key=accuracies.__getitem__)
        figure = Figure(figsize=(max(4.0, 0.6 * len(names) + 2.0), 3.5))
        axes = figure.add_subplot()
        colors = ["#d62728" if i == worst else "#1f77b4" for i in range(len(names))]
        axes.bar(range(len(names)), accuracies, color=colors)
        crowded = len(names) > 4
        axes.set_xticks(range(len(names)), names, rotation=30 if crowded else 0, ha="right" if crowded else "center")
        if average is not None:
            axes.axhline(float(average), color="gray", linestyle="--", label="group average")
            axes.legend(loc="lower right")
        axes.set_ylim(0.0, 1.0)
        axes.set_ylabel("accuracy")
        axes.set_title("Per-group accuracy (worst in red)")
        written["groups"] = out_dir / "groups.png"
        _save_figure(figure, written["groups"])

    data = _routing_plot_data(results)
    if data is not None:
        names, predicted, target = data
        figure = Figure(figsize=(5.0, 3.5))
        axes = figure.add_subplot()
        positions = list(range(len(names)))
        width = 0.4 if target is not None else 0.6
        offset = width / 2 if target is not None else 0.0
        axes.bar([p - offset for p in positions], predicted, width=width, label="routed")
        if target is not None:
            axes.bar([p + offset for p in positions], target, width=width, label="target")
            axes.legend()
        axes.set_xticks(positions, names)
        axes.set_ylim(0.0, 1.0)
        axes.set_ylabel("share of samples")
        axes.set_title("Router strategy shares")
        written["routing"] = out_dir / "routing.png"
        _save_figure(figure, written["routing"])

    bins = _reliability_plot_data(results)
    if bins is not None:
        figure = Figure(figsize=(4.5, 4.5))
        axes = figure.add_subplot()
        filled = [b for b in bins if b.get("count")]
        lefts = [float(b["lower"]) for b in filled]
        widths = [float(b["upper"]) - float(b["lower"]) for b in filled]
        axes.bar(lefts, [float(b["accuracy"]) for b in filled], width=widths, align="edge",
                 edgecolor="black", alpha=0.8, label="accuracy")
        axes.plot([float(b["confidence"]) for b in filled], [float(b["accuracy"]) for b in filled],
                  "o", color="#d62728", label="mean confidence")
        axes.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
        axes.set_xlim(0.0, 1.0)
        axes.set_ylim(0.0, 1.0)
        axes.set_xlabel("confidence")
        axes.set_ylabel("accuracy")
        ece = results["calibration"].get("ece")
        has_ece = isinstance(ece, (int, float))
        axes.set_title(f"Reliability diagram (ECE {ece:.4f})" if has_ece else "Reliability diagram")
        axes.legend(loc="upper left")
        written["reliability"] = out_dir / "reliability.png"
        _save_figure(figure, written["reliability"])

    cues = results.get("cues")
    if isinstance(cues, Mapping) and cues:
        figure = Figure(figsize=(max(4.5, 3.2 * len(cues)), 3.8))
        for index, (name, figures) in enumerate(cues.items()):
            axes = figure.add_subplot(1, len(cues), index + 1)
            per_group = figures.get("groups", {}).get("per_group_accuracy", {})
            group_names = list(per_group)
            worst = figures.get("worst_group")
            axes.bar(range(len(group_names)), [float(per_group[g]) for g in group_names],
                     color=["#d62728" if g == worst else "#1f77b4" for g in group_names])
            axes.set_xticks(range(len(group_names)), [g.replace(",", "\n") for g in group_names], fontsize=7)
            axes.set_ylim(0.0, 1.0)
            axes.set_title(f"cue {name}", fontsize=9)
            if index == 0:
                axes.set_ylabel("accuracy")
        figure.suptitle("Per-group accuracy by declared cue (worst in red)", fontsize=10)
        written["cue_groups"] = out_dir / "cue_groups.png"
        _save_figure(figure, written["cue_groups"])

    return written


# --------------------------------------------------------------------------- content


def _scalar_rows(mapping: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> list[list[str]]:
    labels = labels or {}
    return [
        [labels.get(key, key), _fmt(value)]
        for key, value in mapping.items()
        if value is None or isinstance(value, (int, float, str, bool))
    ]


def _build_document(
    results: Mapping[str, Any], title: str, plots: Mapping[str, Path], plot_note: str | None
) -> _Document:
    doc = _Document(title)
    handled = {
        "num_samples", "num_labels", "metrics", "groups", "reliance", "calibration", "router", "mask_quality", "cues"
    }

    # Summary: the figures a reader looks for first.
    summary: list[list[str]] = []
    if "num_samples" in results:
        summary.append(["Samples", _fmt(results["num_samples"])])
    metrics = results.get("metrics") if isinstance(results.get("metrics"), Mapping) else {}
    for key in ("accuracy", "f1", "macro_f1", "weighted_f1"):
        if key in metrics:
            summary.append([METRIC_LABELS[key], _fmt(metrics[key])])
    groups = results.get("groups") if isinstance(results.get("groups"), Mapping) else None
    if groups:
        worst = f"{_fmt(groups.get('worst_group_accuracy'))} ({groups.get('worst_group')})"
        summary.append(["Worst-group accuracy", worst])
        summary.append(["Group-average accuracy", _fmt(groups.get("group_average_accuracy"))])
    reliance = results.get("reliance") if isinstance(results.get("reliance"), Mapping) else None
    if reliance:
        for name, value in reliance.items():
            summary.append([f"Reliance ({name} counterfactual)", _fmt(value)])
    calibration = results.get("calibration") if isinstance(results.get("calibration"), Mapping) else None
    if calibration and "ece" in calibration:
        summary.append(["ECE", _fmt(calibration["ece"])])
    router = results.get("router") if isinstance(results.get("router"), Mapping) else None
    if router and "routed_away_share" in router:
        summary.append(["Routed away from `none`", _fmt(router["routed_away_share"])])
    if summary:
        doc.add(_Heading("Summary"))
        doc.add(_Table(["Figure", "Value"], summary))
    if plot_note:
        doc.add(_Paragraph(plot_note))

    if metrics:
        doc.add(_Heading("Task metrics"))
        doc.add(_Table(["Metric", "Value"], _scalar_rows(metrics, METRIC_LABELS)))

    if groups:
        doc.add(_Heading("Per-group accuracy"))
        per_group = groups.get("per_group_accuracy", {})
        counts = groups.get("group_counts", {})
        rows = []
        for name in counts or per_group:
            accuracy = per_group.get(name)
            marker = " (worst)" if name == groups.get("worst_group") else ""
            rows.append([f"{name}{marker}", _fmt(counts.get(name)), _fmt(accuracy)])
        doc.add(_Table(["Group", "Samples", "Accuracy"], rows))
        doc.add(
            _Paragraph(
                f"Worst-group accuracy: {_fmt(groups.get('worst_group_accuracy'))} "
                f"(group {groups.get('worst_group')}); group-average accuracy: "
                f"{_fmt(groups.get('group_average_accuracy'))} over {groups.get('num_groups')} "
                "non-empty groups."
            )
        )
        if groups.get("empty_groups"):
            empty = ", ".join(map(str, groups["empty_groups"]))
            doc.add(_Paragraph(f"Empty groups (left out of the averages): {empty}."))
        if "groups" in plots:
            doc.add(_Image(plots["groups"].name, "Per-group accuracy"))

    if reliance:
        doc.add(_Heading("Reliance on cue-only counterfactuals"))
        doc.add(
            _Paragraph(
                "Share of samples whose prediction on the cue-only counterfactual equals the "
                "prediction on the original (lower is less reliant on the cue)."
            )
        )
        doc.add(_Table(["Counterfactual", "Reliance"], _scalar_rows(reliance)))

    if calibration:
        doc.add(_Heading("Calibration"))
        doc.add(_Table(["Figure", "Value"], _scalar_rows(calibration)))
        if "reliability" in plots:
            doc.add(_Image(plots["reliability"].name, "Reliability diagram"))

    if router:
        doc.add(_Heading("Router"))
        names = list(router.get("strategy_names") or router.get("predicted_share", {}))
        per_strategy = router.get("per_strategy", {})
        target_share = router.get("target_share", {})
        header = ["Strategy", "Routed share"]
        if target_share:
            header.append("Target share")
        if per_strategy:
            header += ["Precision", "Recall", f"F{float(router.get('beta', 0.5)):g}"]
        rows = []
        for name in names:
            row = [name, _fmt(router.get("predicted_share", {}).get(name))]
            if target_share:
                row.append(_fmt(target_share.get(name)))
            if per_strategy:
                stats = per_strategy.get(name, {})
                row += [_fmt(stats.get("precision")), _fmt(stats.get("recall")), _fmt(stats.get("fbeta"))]
            rows.append(row)
        doc.add(_Table(header, rows))
        doc.add(_Table(["Figure", "Value"], _scalar_rows(router)))
        if "routing" in plots:
            doc.add(_Image(plots["routing"].name, "Router strategy shares"))

    cues = results.get("cues")
    if isinstance(cues, Mapping) and cues:
        doc.add(_Heading("Declared cues"))
        doc.add(_Paragraph(
            "Per cue: groups are label × cue presence; wrong way = rows where the cue is present and the label is "
            "not the one it points to, or absent and the label is that one; reliance = on the rows with the cue, the "
            "share whose prediction equals the general expert's prediction on the cue-only input."))
        rows = []
        for name, figures in cues.items():
            for method, values in (figures.get("methods") or {"": figures}).items():
                rows.append([name, method, str(figures.get("points_to")), _fmt(figures.get("present_share")),
                             f"{_fmt(values.get('worst_group_accuracy'))} ({values.get('worst_group')})",
                             _fmt(values.get("group_average_accuracy")),
                             f"{_fmt(values.get('wrong_way_accuracy'))} (n={values.get('wrong_way_count')})",
                             _fmt(values.get("reliance"))])
        doc.add(_Table(["Cue", "Method", "Points to", "Share with cue", "Worst-group accuracy",
                        "Group-average accuracy", "Wrong-way accuracy", "Reliance"], rows))
        for name, figures in cues.items():
            per_group = figures.get("groups", {})
            counts = per_group.get("group_counts", {})
            doc.add(_Table([f"Group (cue {name})", "Samples", "Accuracy"],
                           [[g, _fmt(counts.get(g)), _fmt(per_group.get("per_group_accuracy", {}).get(g))]
                            for g in counts]))
        if "cue_groups" in plots:
            doc.add(_Image(plots["cue_groups"].name, "Per-group accuracy by declared cue"))

    mask = results.get("mask_quality")
    if isinstance(mask, Mapping):
        doc.add(_Heading("Counterfactual mask quality"))
        doc.add(_Table(["Figure", "Value"], _scalar_rows(mask)))

    for key, value in results.items():
        if key in handled:
            continue
        doc.add(_Heading(str(key).replace("_", " ").capitalize()))
        scalars_only = isinstance(value, Mapping) and all(
            v is None or isinstance(v, (int, float, str, bool)) for v in value.values()
        )
        if scalars_only:
            doc.add(_Table(["Figure", "Value"], _scalar_rows(value)))
        elif value is None or isinstance(value, (int, float, str, bool)):
            doc.add(_Paragraph(_fmt(value)))
        else:
            doc.add(_Code(json.dumps(value, indent=2, default=_json_default)))
    return doc


# --------------------------------------------------------------------------- entry point


def write_report(
    results: Mapping[str, Any],
    out_dir: str | os.PathLike[str],
    title: str = "MME-JD evaluation",
    formats: Sequence[str] | str = ("json", "md"),
) -> dict[str, Path]:
    """Write the report of `results` (the dict of `Evaluator.evaluate`) into `out_dir`.

    `formats` is any of "json", "md", "html". Plots are drawn when "md" or "html" is
    asked for, each only when its data is in `results`: `groups.png` from
    `results["groups"]["per_group_accuracy"]`, `routing.png` from
    `results["router"]["predicted_share"]` (and `target_share`), `reliability.png` from
    `results["calibration"]["bins"]`.

    Returns `{"json"|"md"|"html"|"groups"|"routing"|"reliability": path}` for the files
    written.
    """
    if isinstance(formats, str):
        formats = (formats,)
    unknown = [f for f in formats if f not in _SUPPORTED_FORMATS]
    if unknown:
        raise ValueError(f"Unknown report formats {unknown}; choose from {list(_SUPPORTED_FORMATS)}.")
    if not isinstance(results, Mapping):
        raise TypeError(f"results must be a dict (from Evaluator.evaluate), got {type(results).__name__}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}

    if "json" in formats:
        text = json.dumps(results, indent=2, default=_json_default)
        written["json"] = out / "report.json"
        atomic_write_text(written["json"], text + "\n")

    if "md" in formats or "html" in formats:
        plot_note = None
        plots: dict[str, Path] = {}
        try:
            import matplotlib  # noqa: F401  (optional dependency: the `report` extra)
        except ImportError:
            plot_note = "Plots were not drawn: matplotlib is not installed (pip install 'mme-jd[report]')."
        else:
            plots = _draw_plots(results, out)
        written.update(plots)
        written.update(_write_document(_build_document(results, title, plots, plot_note), out, "report", formats))
    return written
