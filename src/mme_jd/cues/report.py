"""The shortcut finder's report: a plain-text table for the terminal, and `cues.json`,
`cues.md` (and `cues.html`) with the plot `cues.png` (z of the top tokens and statistics).

Rendered with the evaluation report's document model (`mme_jd.evaluation.report`), so the
Markdown and HTML pages cannot drift apart.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..evaluation.report import (_Document, _Heading, _Image, _json_default, _Paragraph, _save_figure, _Table,
                                 _write_document)
from ..files import atomic_write_text

__all__ = ["format_cue_table", "write_cue_report"]


def _p(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _token_rows(report: Mapping[str, Any], top: int | None = None) -> list[list[str]]:
    return [[str(i + 1), t["token"], t["kind"], t["label"], str(t["count"]), _p(t["p_label_given_token"]),
             _p(t["base_rate"]), f"{t['z']:.1f}"] for i, t in enumerate(report.get("tokens", [])[:top])]


_TOKEN_HEADER = ["#", "token", "kind", "points to", "rows", "P(label | token)", "base rate", "z"]
_IMAGE_HEADER = ["#", "statistic", "high points to", "class mean", "rest mean", "P(label | above median)",
                 "base rate", "z"]


def _image_rows(report: Mapping[str, Any], top: int | None = None) -> list[list[str]]:
    return [[str(i + 1), s["statistic"], s["label"], _p(s["label_mean"]), _p(s["rest_mean"]),
             _p(s["p_label_given_high"]), _p(s["base_rate"]), f"{s['z']:.1f}"]
            for i, s in enumerate((report.get("image") or [])[:top])]


def _text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def format_cue_table(report: Mapping[str, Any], top: int | None = None) -> str:
    """The report's top tokens and image statistics as aligned plain-text tables."""
    rates = ", ".join(f"{name} {rate:.3f}" for name, rate in report["base_rates"].items())
    parts = [f"{report.get('dataset') or 'dataset'} {report.get('split') or ''}: {report['num_rows']} rows; "
             f"base rates: {rates}; {report.get('tokens_above_threshold', 0)} of {report.get('num_tokens', 0)} tokens "
             f"with z >= {report['threshold']}",
             _text_table(_TOKEN_HEADER, _token_rows(report, top))]
    if report.get("image"):
        parts.append("image statistics:\n" + _text_table(_IMAGE_HEADER, _image_rows(report, top)))
        probe = report.get("probe")
        if probe:
            parts.append(f"linear probe on the image statistics ({probe['folds']}-fold): accuracy "
                         f"{probe['accuracy']:.3f}, macro F1 {probe['macro_f1']:.3f}, majority class "
                         f"{probe['majority_accuracy']:.3f}")
    else:
        parts.append(f"image statistics: none ({report.get('image_note', 'no images')})")
    return "\n\n".join(parts)


def _draw(report: Mapping[str, Any], path: Path, top: int) -> None:
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    panels = [("tokens", [(t["token"], t["z"], t["label"]) for t in report.get("tokens", [])[:top]])]
    if report.get("image"):
        panels.append(("image statistics", [(s["statistic"], s["z"], s["label"]) for s in report["image"][:top]]))
    figure = Figure(figsize=(6.5 * len(panels), max(3.0, 0.28 * top + 1.2)))
    labels = list(report["label_names"])
    colours = {name: f"C{i}" for i, name in enumerate(labels)}
    for index, (title, items) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), index + 1)
        items = items[::-1]  # best on top
        axes.barh(range(len(items)), [z for _, z, _ in items], color=[colours.get(k, "gray") for _, _, k in items])
        axes.set_yticks(range(len(items)), [name for name, _, _ in items], fontsize=8)
        axes.axvline(float(report["threshold"]), color="gray", linestyle="--", linewidth=1)
        axes.set_xlabel("z (association with the class it points to)")
        axes.set_title(f"Top {title}")
        if index == 0:
            handles = [Patch(color=colours[n], label=n) for n in labels]
            axes.legend(handles=handles, loc="lower right", fontsize=8, title="points to")
    _save_figure(figure, path)


def write_cue_report(report: Mapping[str, Any], out_dir: str | os.PathLike, title: str | None = None,
                     formats: Sequence[str] = ("json", "md"), top: int = 20) -> dict[str, Path]:
    """Write `cues.json`, `cues.md` / `cues.html` and `cues.png` into `out_dir`; returns
    {kind: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if "json" in formats:
        written["json"] = out / "cues.json"
        atomic_write_text(written["json"], json.dumps(report, indent=2, default=_json_default) + "\n")
    if "md" not in formats and "html" not in formats:
        return written
    doc = _Document(title or f"Shortcut finder: {report.get('dataset') or 'dataset'} {report.get('split') or ''}")
    rates = ", ".join(f"{name} {rate:.3f}" for name, rate in report["base_rates"].items())
    doc.add(_Paragraph(f"{report['num_rows']} rows; base rates: {rates}. Statistic: {report['statistic']}. "
                       f"A z of {report['threshold']} or more marks a likely shortcut "
                       f"({report.get('tokens_above_threshold', 0)} of {report.get('num_tokens', 0)} tokens)."))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        doc.add(_Paragraph("The plot was not drawn: matplotlib is not installed."))
    else:
        written["plot"] = out / "cues.png"
        _draw(report, written["plot"], top)
        doc.add(_Image(written["plot"].name, "z of the top tokens and image statistics"))
    doc.add(_Heading("Tokens"))
    doc.add(_Table(_TOKEN_HEADER, _token_rows(report)))
    doc.add(_Heading("Image statistics"))
    if report.get("image"):
        doc.add(_Table(_IMAGE_HEADER, _image_rows(report)))
        probe = report.get("probe")
        if probe:
            doc.add(_Paragraph(f"Linear probe on all statistics ({probe['folds']}-fold cross-validation): accuracy "
                               f"{probe['accuracy']:.3f}, macro F1 {probe['macro_f1']:.3f}; majority class "
                               f"{probe['majority_accuracy']:.3f}."))
    else:
        doc.add(_Paragraph(f"None: {report.get('image_note', 'no images')}."))
    written.update(_write_document(doc, out, "cues", formats))
    return written
