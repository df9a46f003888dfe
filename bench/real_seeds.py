"""Mean ± std over seeds of several `bench/real_data.py` results files (one per seed), and a
plot of each method's recovery ratio.

    python bench/real_seeds.py bench/results/real_mmsd-to-mmsd2_seed0.json \\
        bench/results/real_mmsd-to-mmsd2_seed1.json ... --name mmsd-to-mmsd2_rows4000

Writes bench/results/real_<name>_seeds.json, real_<name>_seeds.md and real_<name>_recovery.png
(the README is not touched) and prints the table. The files must share dataset and task and have
different seeds. std is the sample standard deviation (ddof=1; 0.0 for one value); a method
present in only some files is averaged over those (`n`). Importable from tests with the bench
folder on sys.path (this script itself imports `real_data` from its own folder).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import statistics
import unicodedata
from pathlib import Path

from real_data import METHOD_ORDER, SPLIT_NAMES, training_ratios

from mme_jd.files import atomic_write_bytes, atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"
METRICS = ("accuracy", "f1", "weighted_f1", "macro_f1", "recovery_ratio")
#: Settings expected to differ between the runs of one experiment (paths, threads).
_VOLATILE_SETTINGS = {"seed", "output", "readme", "threads", "results"}
MAJORITY = "majority class"


def _stats(values: list[float]) -> dict[str, float | int]:
    """{"mean", "std", "n"} of `values` (sample std, ddof=1; 0.0 for one value), rounded to 6 places."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": round(statistics.fmean(values), 6), "std": round(std, 6), "n": len(values)}


def _method_key(method: str, first_seen: list[str]) -> tuple[int, int]:
    """Sort key: METHOD_ORDER first, then unknown methods in the order the files list them."""
    if method in METHOD_ORDER:
        return (0, METHOD_ORDER.index(method))
    return (1, first_seen.index(method))


def _split_metrics(per_file: list[dict]) -> dict[str, dict[str, dict]]:
    """{split: {metric: stats}} over a list of {split: {metric: value}} (one per file holding it)."""
    splits: dict[str, dict[str, dict]] = {}
    for split in dict.fromkeys(s for values in per_file for s in values):
        metrics = {}
        for metric in METRICS:
            values = [v[split][metric] for v in per_file if v.get(split, {}).get(metric) is not None]
            if values:
                metrics[metric] = _stats([float(x) for x in values])
        if metrics:
            splits[split] = metrics
    return splits


def _check(results: list[dict]) -> list[int]:
    """The files' seeds, after checking they share dataset and task and differ in seed."""
    if not results:
        raise ValueError("no results files to aggregate")
    datasets = [r.get("dataset") for r in results]
    if len(set(datasets)) > 1:
        raise ValueError(f"the results files are of different datasets: {datasets}")
    tasks = [r.get("settings", {}).get("task") for r in results]
    if len(set(tasks)) > 1:
        raise ValueError(f"the results files are of different tasks: {tasks}")
    seeds = [r.get("settings", {}).get("seed") for r in results]
    if any(seed is None for seed in seeds):
        raise ValueError(f"a results file has no settings.seed: {seeds}")
    duplicates = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if duplicates:
        raise ValueError(f"the results files repeat seed(s) {duplicates} (seeds: {seeds}): one file per seed")
    return seeds


def aggregate(results: list[dict]) -> dict:
    """Mean ± std over seeds of every method's figures, router shares and training ratios.

    Raises ValueError when the files differ in dataset or task, repeat a seed or lack one.
    """
    seeds = _check(results)
    first_seen = list(dict.fromkeys(m for r in results for m in r.get("methods", {})))
    methods = sorted(first_seen, key=lambda m: _method_key(m, first_seen))

    aggregated_methods = {}
    router_shares: dict[str, dict[str, dict[str, float]]] = {}
    for method in methods:
        per_file = [r["methods"][method] for r in results if method in r.get("methods", {})]
        aggregated_methods[method] = _split_metrics(per_file)
        for split in dict.fromkeys(s for values in per_file for s in values):
            shares = [v[split]["router_shares"] for v in per_file if v.get(split, {}).get("router_shares")]
            if shares:
                strategies = dict.fromkeys(k for s in shares for k in s)
                router_shares.setdefault(method, {})[split] = {
                    k: round(statistics.fmean(float(s.get(k, 0.0)) for s in shares), 6) for k in strategies}

    ratios_per_file = []
    for result in results:
        ratios = training_ratios(result)
        ratios.update(result.get("training_ratios") or {})
        ratios_per_file.append(ratios)
    named = list(dict.fromkeys(first_seen + [m for ratios in ratios_per_file for m in ratios]))
    ratio_stats = {}
    for method in sorted(named, key=lambda m: _method_key(m, named)):
        values = [float(r[method]) for r in ratios_per_file if r.get(method) is not None]
        if values:
            ratio_stats[method] = _stats(values)

    settings = [r.get("settings", {}) for r in results]
    differing = sorted(k for k in dict.fromkeys(k for s in settings for k in s)
                       if k not in _VOLATILE_SETTINGS and len({json.dumps(s.get(k), sort_keys=True) for s in settings}) > 1)
    return {
        "dataset": results[0].get("dataset"),
        "task": settings[0].get("task"),
        "seeds": seeds,
        "settings": {k: v for k, v in settings[0].items() if k != "seed"},
        "differing_settings": differing,
        "methods": aggregated_methods,
        "majority_baseline": _split_metrics([r["majority_baseline"] for r in results if r.get("majority_baseline")]),
        "router_shares": router_shares,
        "training_ratios": ratio_stats,
        "seconds": [r.get("seconds") for r in results],
    }


def _cell(stats: dict | None, decimals: int, runs: int) -> str:
    """"0.703 ± 0.012" (with "(n=2)" when fewer files than seeds hold the figure); "" when absent."""
    if not stats:
        return ""
    text = f"{stats['mean']:.{decimals}f} ± {stats['std']:.{decimals}f}"
    return text if stats["n"] == runs else f"{text} (n={stats['n']})"


def markdown(aggregated: dict) -> str:
    """The real-data table (as bench/real_data.py's) with mean ± std cells, and a line of seeds and rows."""
    lines = ["| Test set | Method | Accuracy | F1 (pos.) / weighted F1 | Macro F1 | Recovery | Routed away | Train × ERM |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    runs = len(aggregated["seeds"])
    second = "f1" if aggregated.get("task") == "sarcasm" else "weighted_f1"
    labels = SPLIT_NAMES.get(aggregated.get("dataset"), {})
    methods = aggregated["methods"]
    splits = list(labels) + [s for s in dict.fromkeys(s for m in methods.values() for s in m) if s not in labels]
    for split in splits:
        rows = {MAJORITY: aggregated.get("majority_baseline", {}).get(split)}
        rows.update({method: per_split.get(split) for method, per_split in methods.items()})
        for method, values in rows.items():
            if not values:
                continue
            shares = aggregated["router_shares"].get(method, {}).get(split)
            away = f"{1 - shares['none']:.3f}" if shares and "none" in shares else ""
            ratio = _cell(aggregated["training_ratios"].get(method), 2, runs) if method != MAJORITY else ""
            lines.append(f"| {labels.get(split, split)} | {method} | {_cell(values.get('accuracy'), 3, runs)} | "
                         f"{_cell(values.get(second), 3, runs)} | {_cell(values.get('macro_f1'), 3, runs)} | "
                         f"{_cell(values.get('recovery_ratio'), 2, runs)} | {away} | {ratio} |")
    settings = aggregated.get("settings", {})
    rows_text = ", ".join(f"{k} {v}" for k, v in (settings.get("rows") or {}).items())
    line = (f"Mean ± sample std (ddof=1) over {runs} seed(s) {', '.join(str(s) for s in aggregated['seeds'])} "
            f"of {aggregated.get('dataset')} ({aggregated.get('task')}); rows: {rows_text or 'unknown'}"
            + (f"; {settings['epochs']:g} epoch(s)" if isinstance(settings.get("epochs"), (int, float)) else "")
            + ("; bfloat16 autocast" if settings.get("autocast_dtype") == "bfloat16" else "; float32")
            + ". Routed away: mean share of samples the router sends to a debias expert.")
    if aggregated.get("differing_settings"):
        line += f" Settings that differ between the files: {', '.join(aggregated['differing_settings'])}."
    return "\n".join(lines + ["", line])


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1 or no FreeType: the bitmap font
        return ImageFont.load_default()


#: Pillow's default font draws ASCII and "±" only: other characters of method and split names.
_PLAIN = {"→": "->", "λ": "lambda", "×": "x", "–": "-", "—": "-", "’": "'", "‘": "'"}


def _drawable(text: str) -> str:
    """`text` in the characters Pillow's default font draws (ASCII and "±")."""
    text = "".join(_PLAIN.get(c, c) for c in text)
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return "".join(c if c.isascii() or c == "±" else "?" for c in text)


def recovery_plot(aggregated: dict, path: str | os.PathLike, split: str = "test") -> Path:
    """Draw a horizontal bar chart (PIL only) of each method's mean recovery ratio on `split`,
    with ± std error lines and reference lines at 0 (ERM on MMSD) and 1 (cue-free reference);
    write it atomically as PNG to `path`. Raises ValueError when no method has a recovery ratio."""
    from PIL import Image, ImageDraw

    bars = [(_drawable(method), per_split[split]["recovery_ratio"])
            for method, per_split in aggregated["methods"].items() if per_split.get(split, {}).get("recovery_ratio")]
    if not bars:
        raise ValueError(f"no method has a recovery ratio on split {split!r}")
    font, title_font = _font(14), _font(16)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def width(text: str, which=font) -> int:
        box = measure.textbbox((0, 0), text, font=which)
        return box[2] - box[0]

    runs = len(aggregated["seeds"])
    values = [f"{s['mean']:.2f} ± {s['std']:.2f}" + (f" (n={s['n']})" if s["n"] != runs else "") for _, s in bars]
    name_width = max(width(method) for method, _ in bars)
    value_pad = max(width(v) for v in values) + 12
    row, top, plot_width, margin = 30, 56, 520, 16
    left = margin + name_width + 12
    bottom_axis = top + row * len(bars)
    height = bottom_axis + 76
    image_width = left + value_pad + plot_width + value_pad + margin
    low = min([0.0] + [s["mean"] - s["std"] for _, s in bars])
    high = max([1.0] + [s["mean"] + s["std"] for _, s in bars])
    span = (high - low) or 1.0

    def x(value: float) -> float:
        return left + value_pad + (value - low) / span * plot_width

    image = Image.new("RGB", (image_width, height), "white")
    draw = ImageDraw.Draw(image)
    split_name = SPLIT_NAMES.get(aggregated.get("dataset"), {}).get(split, split)
    title = _drawable(f"Recovery ratio on {split_name} (mean ± std over {runs} seed(s))")
    draw.text((margin, 14), title, fill="black", font=title_font)
    step = 0.25 if span <= 3 else 10 ** math.floor(math.log10(span))
    tick = math.ceil(low / step) * step
    while tick <= high + 1e-9:  # light grid with tick labels below the axis
        draw.line([(x(tick), top - 4), (x(tick), bottom_axis)], fill=(232, 232, 232))
        label = f"{tick:g}"
        draw.text((x(tick) - width(label) / 2, bottom_axis + 4), label, fill=(110, 110, 110), font=font)
        tick += step
    draw.line([(left + value_pad, bottom_axis), (left + value_pad + plot_width, bottom_axis)], fill=(150, 150, 150))
    for index, ((method, stats), text) in enumerate(zip(bars, values)):
        middle = top + row * index + row / 2
        mean, std = stats["mean"], stats["std"]
        colour = (70, 130, 180) if mean >= 0 else (205, 92, 92)
        x0, x1 = sorted((x(0.0), x(mean)))
        draw.rectangle([x0, middle - 9, max(x1, x0 + 1), middle + 9], fill=colour)
        if std > 0:
            draw.line([(x(mean - std), middle), (x(mean + std), middle)], fill="black", width=1)
            for end in (mean - std, mean + std):
                draw.line([(x(end), middle - 5), (x(end), middle + 5)], fill="black", width=1)
        draw.text((left - 8 - width(method), middle - 8), method, fill="black", font=font)
        if mean >= 0:
            draw.text((x(mean + std) + 6, middle - 8), text, fill="black", font=font)
        else:
            draw.text((x(mean - std) - 6 - width(text), middle - 8), text, fill="black", font=font)
    for line, (value, label) in enumerate(((0.0, "ERM on MMSD (0)"), (1.0, "cue-free reference (1)"))):
        draw.line([(x(value), top - 6), (x(value), bottom_axis)], fill=(60, 60, 60), width=2)
        label_x = min(max(x(value) - width(label) / 2, margin), image_width - margin - width(label))
        # one line each: the two marks sit close together when a method's ratio is far below 0
        draw.text((label_x, bottom_axis + 24 + 18 * line), label, fill=(60, 60, 60), font=font)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    target = Path(path)
    atomic_write_bytes(target, buffer.getvalue(), make_parents=True)
    return target


def write_aggregate(files: list[Path], name: str, results_dir: Path = RESULTS, split: str = "test") -> str:
    """Aggregate per-seed results `files`; write real_<name>_seeds.json, real_<name>_seeds.md and
    real_<name>_recovery.png (when a method has a recovery ratio) in `results_dir`. Returns the
    table. Raises ValueError when the files are not seeds of one run (`aggregate`)."""
    aggregated = aggregate([json.loads(Path(path).read_text()) for path in files])
    aggregated["files"] = [str(path) for path in files]
    table = markdown(aggregated)
    stem = Path(results_dir) / f"real_{name}"
    atomic_write_text(f"{stem}_seeds.json", json.dumps(aggregated, indent=2, default=str) + "\n", make_parents=True)
    atomic_write_text(f"{stem}_seeds.md", f"# Real data over seeds: {name}\n\n{table}\n", make_parents=True)
    try:
        table += f"\n\nwrote {recovery_plot(aggregated, f'{stem}_recovery.png', split)}"
    except ValueError as error:
        table += f"\n\nno plot: {error}"
    return table


def main(argv: list[str] | None = None) -> int:
    """Aggregate the given per-seed results files; write the JSON, table and plot; print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path, help="bench/real_data.py results files, one per seed")
    parser.add_argument("--name", required=True, help="output stem: real_<name>_seeds.json/.md, real_<name>_recovery.png")
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="output folder (default: bench/results)")
    parser.add_argument("--split", default="test", help="split of the recovery plot (default: %(default)s)")
    cli = parser.parse_args(argv)
    try:
        print(write_aggregate(cli.files, cli.name, cli.results_dir, cli.split))
    except ValueError as error:
        parser.error(str(error))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
