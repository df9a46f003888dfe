"""See what the model sees: a gallery of counterfactuals and predictions, one HTML file.

The paper's advice for a new dataset is to look at 50-100 counterfactuals before trusting
them: are the masked words and patches really the spurious context? `write_gallery` (the
`mme-jd inspect MODEL DATA` command) runs a model over some rows and writes `gallery.html`,
one self-contained page (images embedded as data URIs, no script, a Content-Security-Policy
that forbids every network load), and `gallery.json`, the same content as data.

    rows ──► collect_outputs (mode, every expert)       ─► scores, strategy, router
        └──► collect_outputs (general expert on both     ─► counterfactual scores, and from the
             counterfactuals, keep_metadata=True)            collator: changed words, masked patches
                                                             and the image-token grid
    per row: one card = original image | model input with the masked patches shaded
                        text with changed / kept / cue words marked, the text counterfactual
                        label, prediction (right or wrong), strategy, router and class scores

Nothing here builds a counterfactual of its own: the collator (`CounterfactualTripleCollator`)
that training and evaluation use builds them, so every builder works (`lexical`, `saliency`,
`given`, `swap`, `cue_only`, `cue_removed`; images `attention`, `gradient`, `given`,
`cue_only`), and rows without an image (MMSD's grey stand-in) too.

Cards come in sections, each row in the first that applies:
    conflict  cue-conflicting rows: a cue points the wrong way (`diagnostics.wrong_way_rows`).
              Cues are the declared ones (`cues=`, `--cue`), else the synthetic benchmark's
              `text_cue` / `image_cue` columns (the label each cue points to);
    routed    the router sent the row to a debias expert (mode "mme_jd");
    error     the prediction is wrong;
    other     the rest.
A summary on top gives the accuracy per group (``label × cue presence`` groups of declared
cues, the synthetic benchmark's groups, else per label), the routing shares and the counts.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..modeling.routing_mme_jd import ROUTED_STRATEGY_NAMES, STRATEGY_NAMES

__all__ = ["GALLERY_FILE", "SECTIONS", "InspectedExample", "gallery_summary", "inspect_examples",
           "model_input_image", "render_card", "render_gallery", "write_gallery"]

GALLERY_FILE = "gallery.html"
#: (key, heading, what the section holds), in page order.
SECTIONS = (
    ("conflict", "Cue-conflicting rows", "a cue points to another label than the true one: a model that "
                                         "follows the cue gets these wrong"),
    ("routed", "Routed rows", "the router sent these rows to a debias expert"),
    ("error", "Errors", "the prediction is wrong"),
    ("other", "Other rows", "none of the above"),
)
#: How a text builder changes the words it picks (the marks of the text view).
_CHANGE_KIND = {"swap": "swapped", "cue_removed": "removed"}
_DISPLAY_SIDE = 224  # px, the longest side of each image on a card
_SYNTHETIC_CUE_COLUMNS = ("text_cue", "image_cue")


@dataclass
class InspectedExample:
    """Everything one gallery card shows about one row.

    `changed_words` index `text.split()` (what the text builder masked, swapped or removed),
    `cue_words` the words of the declared text cues; `masked_patches` index the row-major
    `grid` (rows, cols) of image tokens. `scores` maps a source ("final (mme_jd)", "general",
    "text counterfactual", ...) to {class: probability}. `cues`: {cue: what it says for this
    row}; `conflicting_cues`: the cues pointing the wrong way. Images are PIL images (None:
    the row has no image); they are not part of `to_dict()`.
    """

    row: int
    text: str
    text_counterfactual: str
    text_builder: str
    changed_words: list[int]
    cue_words: list[int]
    image_builder: str
    masked_patches: list[int]
    grid: tuple[int, int]
    prediction: str
    strategy: str
    scores: dict[str, dict[str, float]]
    label: str | None = None
    router_scores: dict[str, float] | None = None
    cues: dict[str, str] = field(default_factory=dict)
    conflicting_cues: list[str] = field(default_factory=list)
    group: str | None = None
    section: str = "other"
    image_description: str = ""
    row_id: str | None = None
    image: Any = None
    model_view: Any = None

    @property
    def correct(self) -> bool | None:
        """Whether the prediction is right (None without a label)."""
        return None if self.label is None else self.prediction == self.label

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able fields (no images), with `correct` and `has_image`."""
        values = {k: v for k, v in asdict(self).items() if k not in ("image", "model_view")}
        return {**values, "grid": list(self.grid), "correct": self.correct, "has_image": self.image is not None}


# ---------------------------------------------------------------------------- computing


def _softmax_rows(logits: torch.Tensor | None, names: list[str]) -> list[dict[str, float] | None]:
    """{class: probability} per row; None for rows that were not computed (NaN logits)."""
    if logits is None:
        return []
    probabilities = logits.float().softmax(dim=-1)
    return [None if not torch.isfinite(row).all() else {n: float(p) for n, p in zip(names, row.tolist())}
            for row in probabilities]


def _with_saliency_word_scores(model, processor, rows, batch_size: int):
    """`rows` with the `text_word_scores` column the `saliency` text builder reads (the general
    expert's attention per word, `quality.attention_word_scores`), unless it is there."""
    from ..data.images import load_image
    from ..modeling.counterfactual_mme_jd import call_processor
    from .quality import attention_word_scores

    if "text_word_scores" in rows.column_names:
        return rows
    tokenizer = getattr(processor, "tokenizer", processor)
    device = next(model.parameters()).device
    scores: list[list[float]] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        images = [None if image is None else load_image(image, index=start + i) for i, image in enumerate(chunk["image"])]
        inputs = dict(call_processor(processor, model.config, chunk["text"], images))
        inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}
        with torch.no_grad():
            scores += attention_word_scores(model, inputs, chunk["text"], tokenizer)
    return rows.add_column("text_word_scores", scores)


def model_input_image(processor: Any, image: Any):
    """The image as the model receives it (resized, cropped, then un-normalised back to RGB)
    from the processor's image processor, or None when its `pixel_values` are not one
    [3, H, W] image (Qwen2-VL's flattened patches): callers then show the original."""
    from PIL import Image

    image_processor = getattr(processor, "image_processor", None)
    if image_processor is None:
        return None
    try:
        pixels = image_processor(images=[image], return_tensors="pt")["pixel_values"]
    except Exception:  # noqa: BLE001 - a processor that cannot do this alone: show the original instead
        return None
    while pixels.ndim > 4 and pixels.shape[0] == 1:  # Idefics3: [batch, images, C, H, W]
        pixels = pixels[0]
    if pixels.ndim != 4 or pixels.shape[1] != 3:
        return None
    values = pixels[0].float()
    if getattr(image_processor, "do_normalize", False):
        mean = torch.tensor(image_processor.image_mean, dtype=values.dtype)[:, None, None]
        std = torch.tensor(image_processor.image_std, dtype=values.dtype)[:, None, None]
        values = values * std + mean
    if not getattr(image_processor, "do_rescale", True):
        values = values / 255.0
    array = (values.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array)


def _synthetic_cues(row: dict, label_names: list[str]) -> dict[str, int]:
    """{cue column: the label id it points to} of a synthetic benchmark row."""
    return {c: int(row[c]) for c in _SYNTHETIC_CUE_COLUMNS
            if c in row and row[c] is not None and 0 <= int(row[c]) < len(label_names)}


def inspect_examples(
    model,
    processor,
    rows,
    *,
    mode: str | None = None,
    text_counterfactual: str | None = None,
    image_counterfactual: str | None = None,
    cues: Sequence[Any] | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> list[InspectedExample]:
    """Run `model` over `rows` and gather what each gallery card shows (module docstring).

    Args:
        model, processor: an `MMEJDModel` and its processor.
        rows: a `datasets.Dataset` with `text` and `image` (None: no image), optionally
            `label`, `image_description`, `group`, `text_cue` / `image_cue` and the columns
            the builders read (`core_word_positions`, `core_box`, precomputed counterfactuals).
        mode: the debiasing mode (default: the model's `config.mode`).
        text_counterfactual / image_counterfactual: the builders (default: the model's, with
            the training-only text builders `swap` and `given` replaced by `lexical`, as in
            `evaluate_model`); any builder may be named.
        cues: declared cues (`mme_jd.cues.Cue`): their words are marked, their groups and
            cue-conflicting rows found; also the cues of the `cue_only` / `cue_removed` builders.
    """
    from ..cues import Cue, add_cue_columns, cue_column, cue_group_names
    from ..data.images import load_image
    from ..inference import collect_outputs
    from ..modeling.counterfactual_mme_jd import cue_word_positions
    from .diagnostics import wrong_way_rows
    from .run import _inference_text_counterfactual, cue_points_to, synthetic_group_names

    if len(rows) == 0:
        raise ValueError("no rows to inspect: the dataset (split) is empty.")
    for column in ("text", "image"):
        if column not in rows.column_names:
            raise ValueError(f"the rows need a {column!r} column (None where a row has no image); "
                             f"they have {rows.column_names}.")
    config = model.config
    mode = mode or config.mode
    label_names = [str(config.id2label[i]) for i in range(int(config.num_labels))]
    text_builder = _inference_text_counterfactual(config, text_counterfactual)
    image_builder = image_counterfactual or config.image_counterfactual
    cues = list(cues or [])
    has_labels = "label" in rows.column_names and None not in rows["label"]
    if cues:
        rows = add_cue_columns(rows, cues, progress=progress)
    if text_builder == "saliency":
        rows = _with_saliency_word_scores(model, processor, rows, batch_size)
    vocabulary = None
    if text_builder == "swap":
        from ..data.lexicon import swap_vocabulary

        vocabulary = swap_vocabulary(processor)  # word-level tokenizers: swap only to words they know

    counterfactual_kwargs = dict(counterfactual_parts=("text", "image"), text_counterfactual=text_builder,
                                 image_counterfactual=image_builder, cues=cues or None, vocabulary=vocabulary,
                                 keep_metadata=True)
    # mode "mid" and the linear correction need the counterfactuals in the main pass: one pass
    # then gives everything (the counterfactual logits are the general expert's either way)
    one_pass = mode == "mid" or (mode == "mme_jd" and config.correction == "linear")
    outputs = collect_outputs(model, processor, rows, batch_size=batch_size, mode=mode,
                              return_experts=mode == "mme_jd", progress=progress, description=f"inspect ({mode})",
                              **(counterfactual_kwargs if one_pass else {}))
    counterfactuals = outputs if one_pass else collect_outputs(
        model, processor, rows, batch_size=batch_size, mode="general", progress=progress,
        description="inspect (counterfactuals)", **counterfactual_kwargs)
    metadata = counterfactuals["metadata"]

    final = _softmax_rows(outputs["logits"], label_names)
    sources = {f"final ({mode})": final}
    if mode == "mme_jd":
        for name in ("general", "image_debias", "text_debias"):
            sources[name] = _softmax_rows(outputs.get(f"{name}_logits"), label_names)
    sources["text counterfactual"] = _softmax_rows(counterfactuals.get("text_counterfactual_logits"), label_names)
    sources["image counterfactual"] = _softmax_rows(counterfactuals.get("image_counterfactual_logits"), label_names)
    router = _softmax_rows(outputs.get("router_logits"), list(STRATEGY_NAMES)) if mode == "mme_jd" else []
    strategies = outputs.get("strategy")

    labels = np.asarray(rows["label"], dtype=np.int64) if has_labels else None
    # declared cues: flags, the label each points to, the rows where it points the wrong way
    cue_values: dict[str, list[str]] = {}
    conflicts: dict[str, np.ndarray] = {}
    for cue in cues:
        flags = np.asarray(rows[cue_column(cue)], dtype=bool)
        points_to = cue_points_to(cue, config, labels, flags)[0] if labels is not None else None
        target = f" → {label_names[points_to]}" if points_to is not None else ""
        cue_values[cue.name] = [("present" if flag else "absent") + target for flag in flags]
        if points_to is not None:
            conflicts[cue.name] = wrong_way_rows(labels, flags, points_to)
    text_patterns = [cue.text_pattern for cue in cues if cue.kind == "text"]
    synthetic = not cues and any(c in rows.column_names for c in _SYNTHETIC_CUE_COLUMNS)
    if synthetic:  # the synthetic benchmark's planted text cue tokens (#irony, #fail / #meh / #winning)
        from .quality import _default_cue_tokens

        text_patterns = [Cue("text_cue", tokens=_default_cue_tokens()).text_pattern]
    group_names = None
    if cues and labels is not None:
        group_ids = rows["cue_group"]
        group_names = cue_group_names([c.name for c in cues], label_names)
    elif "group" in rows.column_names and labels is not None:
        group_ids = rows["group"]
        group_names = synthetic_group_names(rows, len(label_names))

    examples = []
    for index in range(len(rows)):
        row = rows[index]
        image = load_image(row["image"], index=index) if row["image"] is not None else None
        view = model_input_image(processor, image) if image is not None else None
        strategy = (STRATEGY_NAMES[int(strategies[index])] if mode == "mme_jd" and strategies is not None
                    else mode)
        scores = {name: values[index] for name, values in sources.items() if values and values[index] is not None}
        prediction = max(final[index], key=final[index].get)
        label = label_names[int(labels[index])] if labels is not None else None
        row_cues = {name: values[index] for name, values in cue_values.items()}
        conflicting = [name for name, flags in conflicts.items() if flags[index]]
        if synthetic and labels is not None:
            for column, points_to in _synthetic_cues(row, label_names).items():
                # 2 classes: the cue is present (value 1) or absent (0); 3: one value per class
                presence = ("present " if points_to == 1 else "absent ") if len(label_names) == 2 else ""
                row_cues[column] = f"{presence}→ {label_names[points_to]}"
                if points_to != labels[index]:
                    conflicting.append(column)
        group = None
        if group_names is not None:
            group = group_names[int(group_ids[index])]
        elif label is not None:
            group = f"label={label}"
        example = InspectedExample(
            row=index, text=row["text"], text_counterfactual=metadata["text_counterfactual"][index],
            text_builder=text_builder, changed_words=[int(p) for p in metadata["text_mask_positions"][index]],
            cue_words=cue_word_positions(row["text"], text_patterns) if text_patterns else [],
            image_builder=image_builder,
            masked_patches=[int(i) for i in np.flatnonzero(np.asarray(metadata["image_mask"][index], dtype=bool))],
            grid=tuple(int(v) for v in metadata["image_grid"][index]), prediction=prediction, strategy=strategy,
            scores=scores, label=label, router_scores=router[index] if router else None, cues=row_cues,
            conflicting_cues=conflicting, group=group, image_description=row.get("image_description") or "",
            row_id=str(row["id"]) if row.get("id") is not None else None,
            image=image, model_view=view,
        )
        example.section = _section_of(example)
        examples.append(example)
    return examples


def _section_of(example: InspectedExample) -> str:
    if example.conflicting_cues:
        return "conflict"
    if example.strategy in ROUTED_STRATEGY_NAMES:
        return "routed"
    if example.correct is False:
        return "error"
    return "other"


def gallery_summary(examples: Sequence[InspectedExample]) -> dict[str, Any]:
    """The figures on top of the gallery: rows and accuracy, per-group accuracy (worst group,
    group average), routing shares, rows per section, and per cue its conflicting rows and
    their accuracy."""
    from .diagnostics import group_accuracy

    count = len(examples)
    summary: dict[str, Any] = {"rows": count, "sections": {key: sum(e.section == key for e in examples)
                                                           for key, _, _ in SECTIONS}}
    strategies = Counter(e.strategy for e in examples)
    summary["strategies"] = {name: {"rows": n, "share": n / count} for name, n in strategies.items()}
    labelled = [e for e in examples if e.label is not None]
    if labelled:
        summary["accuracy"] = float(np.mean([e.correct for e in labelled]))
        summary["errors"] = sum(not e.correct for e in labelled)
        names = sorted({e.group for e in labelled if e.group is not None})
        if names:
            groups = group_accuracy([e.prediction for e in labelled], [e.label for e in labelled],
                                    [e.group for e in labelled])
            summary["groups"] = {name: {"rows": groups["group_counts"][name],
                                        "accuracy": groups["per_group_accuracy"].get(name)}
                                 for name in groups["group_counts"]}
            summary["worst_group_accuracy"] = groups["worst_group_accuracy"]
            summary["group_average_accuracy"] = groups["group_average_accuracy"]
        cue_names = sorted({name for e in examples for name in e.cues})
        summary["cues"] = {}
        for name in cue_names:
            conflicting = [e for e in labelled if name in e.conflicting_cues]
            summary["cues"][name] = {
                "present": sum(e.cues.get(name, "").startswith("present") for e in examples),
                "conflicting_rows": len(conflicting),
                "accuracy_on_conflicting": float(np.mean([e.correct for e in conflicting])) if conflicting else None,
            }
    return summary


# ---------------------------------------------------------------------------- rendering

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem auto; max-width: 78rem; padding: 0 1rem; color: #222; }
h1 { margin-bottom: 0.2rem; }
.settings { color: #555; margin-top: 0; }
table { border-collapse: collapse; margin: 0.4rem 0 1rem; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.15rem 0.5rem; }
th { background: #f3f3f3; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
.summary { display: flex; flex-wrap: wrap; gap: 0 2rem; align-items: flex-start; }
.legend span { margin-right: 0.6rem; }
nav a { margin-right: 1rem; }
article.example { border: 1px solid #ccc; border-left: 6px solid #999; border-radius: 4px; margin: 0.8rem 0;
  padding: 0.5rem 0.8rem; display: grid; grid-template-columns: auto 1fr; gap: 0.3rem 1.2rem; }
article.right { border-left-color: #2e7d32; }
article.wrong { border-left-color: #c62828; }
article header { grid-column: 1 / -1; font-size: 0.95rem; }
.badge { display: inline-block; border-radius: 3px; padding: 0 0.35rem; margin-right: 0.3rem; font-size: 0.85rem;
  background: #eee; }
.badge.right { background: #c8e6c9; } .badge.wrong { background: #ffcdd2; } .badge.conflict { background: #ffe0b2; }
.badge.strategy { background: #bbdefb; }
.images { display: flex; gap: 0.5rem; }
figure { margin: 0; text-align: center; font-size: 0.8rem; color: #555; max-width: 224px; }
figure img { display: block; image-rendering: pixelated; border: 1px solid #ddd; }
.noimage { width: 160px; height: 120px; display: flex; align-items: center; justify-content: center; padding: 0.3rem;
  background: repeating-linear-gradient(45deg, #f4f4f4, #f4f4f4 8px, #e8e8e8 8px, #e8e8e8 16px);
  border: 1px solid #ddd; }
.words { font-size: 1.05rem; line-height: 1.9; margin: 0.2rem 0; overflow-wrap: anywhere; }
.w { padding: 0.05rem 0.15rem; border-radius: 3px; }
.w.changed { background: #ffcdd2; text-decoration: line-through; text-decoration-color: #c62828; }
.w.kept { background: #e8f5e9; }
.w.cue { outline: 2px solid #ef6c00; outline-offset: -1px; font-weight: 600; }
.cf { font-family: ui-monospace, monospace; font-size: 0.85rem; color: #444; margin: 0.2rem 0;
  overflow-wrap: anywhere; }
td.p { text-align: right; font-variant-numeric: tabular-nums; min-width: 4.5rem; }
td.top { font-weight: 700; }
"""


def _escape(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _percent(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"


def _data_uri(image) -> str:
    """A PIL image as a data URI: PNG for small images (crisp patches), JPEG for photos."""
    buffer = io.BytesIO()
    if image.width * image.height <= 160 * 160:
        image.save(buffer, format="PNG", optimize=True)
        kind = "png"
    else:
        image.convert("RGB").save(buffer, format="JPEG", quality=82, optimize=True)
        kind = "jpeg"
    return f"data:image/{kind};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _display_size(image, side: int = _DISPLAY_SIDE):
    """`image` scaled so that its longest side is `side`: small images (the model's input)
    grow by nearest neighbour so that each patch stays a sharp square; large ones shrink."""
    from PIL import Image

    scale = side / max(image.width, image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.NEAREST if scale > 1 else Image.LANCZOS)


def shade_patches(image, masked: Sequence[int], grid: tuple[int, int]):
    """`image` (at display size) with the masked cells of the (rows, cols) token grid shaded
    (darkened, outlined in magenta) and a faint grid: what the image counterfactual fills."""
    from PIL import Image, ImageDraw

    image = _display_size(image.convert("RGB"))
    rows, cols = grid
    overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    cell_w, cell_h = image.width / cols, image.height / rows
    for index in masked:
        r, c = divmod(int(index), cols)
        box = (round(c * cell_w), round(r * cell_h), round((c + 1) * cell_w) - 1, round((r + 1) * cell_h) - 1)
        # darkened and outlined in magenta: visible on any photo, whatever its colours
        draw.rectangle(box, fill=(0, 0, 0, 130), outline=(255, 0, 255, 255), width=max(1, round(cell_w / 24)))
    for c in range(1, cols):
        draw.line([(round(c * cell_w), 0), (round(c * cell_w), image.height)], fill=(255, 255, 255, 60))
    for r in range(1, rows):
        draw.line([(0, round(r * cell_h)), (image.width, round(r * cell_h))], fill=(255, 255, 255, 60))
    return Image.alpha_composite(image.convert("RGBA"), overlay).convert("RGB")


def _text_view(example: InspectedExample) -> str:
    changed, cue = set(example.changed_words), set(example.cue_words)
    kind = _CHANGE_KIND.get(example.text_builder, "masked")
    spans = []
    for position, word in enumerate(example.text.split()):
        classes = ["w", "changed" if position in changed else "kept"] + (["cue"] if position in cue else [])
        title = (kind if position in changed else "kept") + (", cue" if position in cue else "")
        spans.append(f'<span class="{" ".join(classes)}" title="{title}">{_escape(word)}</span>')
    return " ".join(spans)


def _scores_table(example: InspectedExample, label_names: Sequence[str]) -> str:
    header = "".join(f"<th>{_escape(n)}</th>" for n in label_names)
    lines = [f'<table class="scores"><tr><th>scores</th>{header}</tr>']
    for source, values in example.scores.items():
        best = max(values, key=values.get)
        cells = []
        for name in label_names:
            p = values.get(name, float("nan"))
            width = 0 if not math.isfinite(p) else round(100 * p)
            style = f"background: linear-gradient(90deg, #d0e4f7 {width}%, transparent {width}%)"
            cells.append(f'<td class="p{" top" if name == best else ""}" style="{style}">{_percent(p)}</td>')
        lines.append(f"<tr><th>{_escape(source)}</th>{''.join(cells)}</tr>")
    lines.append("</table>")
    return "".join(lines)


def render_card(example: InspectedExample, label_names: Sequence[str], show_row: bool = True) -> str:
    """One example as an `<article class="example">` (see the module docstring); `show_row`:
    name its row (not for a single input of the app)."""
    correct = example.correct
    verdict = "" if correct is None else ("right" if correct else "wrong")
    badges = []
    if show_row:
        badges.append(f'<span class="badge">row {example.row}'
                      f'{f" (id {_escape(example.row_id)})" if example.row_id else ""}</span>')
    if example.label is not None:
        badges.append(f'<span class="badge">label: {_escape(example.label)}</span>')
    mark = {True: " ✓", False: " ✗", None: ""}[correct]
    badges.append(f'<span class="badge {verdict}">predicted: {_escape(example.prediction)}{mark}</span>')
    router = ""
    if example.router_scores:
        router = " (router: " + ", ".join(f"{_escape(k)} {_percent(v)}" for k, v in example.router_scores.items()) + ")"
    badges.append(f'<span class="badge strategy">strategy: {_escape(example.strategy)}{router}</span>')
    for name, value in example.cues.items():
        conflict = name in example.conflicting_cues
        badges.append(f'<span class="badge{" conflict" if conflict else ""}">{_escape(name)}: {_escape(value)}'
                      f'{" (conflicts)" if conflict else ""}</span>')
    if example.group:
        badges.append(f'<span class="badge">group: {_escape(example.group)}</span>')

    rows, cols = example.grid
    patches = (f"{len(example.masked_patches)} of {rows * cols} patches masked "
               f"({_escape(example.image_builder)})")
    if example.image is not None:
        view = example.model_view if example.model_view is not None else example.image
        shaded = shade_patches(view, example.masked_patches, example.grid)
        figures = (f'<figure><img src="{_data_uri(_display_size(example.image))}" alt="original image">'
                   f"<figcaption>original</figcaption></figure>"
                   f'<figure><img class="masked" src="{_data_uri(shaded)}" alt="model input, masked patches shaded">'
                   f"<figcaption>model input: {patches}</figcaption></figure>")
    else:
        stand_in = (f"; stand-in words: {_escape(example.image_description)}" if example.image_description else "")
        figures = (f'<figure><div class="noimage">no image: the model sees a flat grey stand-in{stand_in}</div>'
                   f"<figcaption>{patches}</figcaption></figure>")
    change = _CHANGE_KIND.get(example.text_builder, "masked")
    return (
        f'<article class="example {verdict}" id="row-{example.row}" data-section="{example.section}">'
        f"<header>{''.join(badges)}</header>"
        f'<div class="images">{figures}</div>'
        f'<div class="text"><p class="words">{_text_view(example)}</p>'
        f'<p class="cf">text counterfactual ({_escape(example.text_builder)}, {len(example.changed_words)} '
        f"{change}): {_escape(example.text_counterfactual) or '(empty)'}</p>"
        f"{_scores_table(example, label_names)}</div>"
        "</article>"
    )


def _summary_html(summary: dict[str, Any]) -> str:
    parts = ['<div class="summary">']
    overview = [("rows", str(summary["rows"]))]
    if "accuracy" in summary:
        overview += [("accuracy", _percent(summary["accuracy"])), ("errors", str(summary["errors"]))]
    if summary.get("worst_group_accuracy") is not None:
        overview += [("worst-group accuracy", _percent(summary["worst_group_accuracy"])),
                     ("group-average accuracy", _percent(summary["group_average_accuracy"]))]
    parts.append("<table><tr><th colspan=2>overview</th></tr>"
                 + "".join(f'<tr><td>{k}</td><td class="n">{v}</td></tr>' for k, v in overview) + "</table>")
    if summary.get("groups"):
        parts.append("<table><tr><th>group</th><th>rows</th><th>accuracy</th></tr>" + "".join(
            f'<tr><td>{_escape(g)}</td><td class="n">{v["rows"]}</td><td class="n">{_percent(v["accuracy"])}</td></tr>'
            for g, v in summary["groups"].items()) + "</table>")
    parts.append("<table><tr><th>strategy</th><th>rows</th><th>share</th></tr>" + "".join(
        f'<tr><td>{_escape(s)}</td><td class="n">{v["rows"]}</td><td class="n">{_percent(v["share"])}</td></tr>'
        for s, v in summary["strategies"].items()) + "</table>")
    if summary.get("cues"):
        parts.append("<table><tr><th>cue</th><th>present</th><th>conflicting rows</th><th>accuracy there</th></tr>"
                     + "".join(f'<tr><td>{_escape(c)}</td><td class="n">{v["present"]}</td>'
                               f'<td class="n">{v["conflicting_rows"]}</td>'
                               f'<td class="n">{_percent(v["accuracy_on_conflicting"])}</td></tr>'
                               for c, v in summary["cues"].items()) + "</table>")
    parts.append("</div>")
    return "".join(parts)


LEGEND_HTML = ('<p class="legend"><span class="w kept">kept word</span><span class="w changed">changed word</span>'
               '<span class="w cue kept">cue word</span> Dark squares outlined in magenta: the image patches the '
               "image counterfactual fills. Scores: class probabilities; the counterfactual rows are the general "
               "expert's.</p>")


def page(title: str, body: str, extra_csp: str = "") -> str:
    """A complete, self-contained HTML page: inline style, no script, and a Content-Security-
    Policy that blocks every network load (images only from data URIs)."""
    csp = _CSP + (f"; {extra_csp}" if extra_csp else "")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<link rel="icon" href="data:,">\n'  # no favicon request
        f"<title>{_escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def render_gallery(examples: Sequence[InspectedExample], label_names: Sequence[str], title: str = "MME-JD gallery",
                   settings: dict[str, Any] | None = None, summary: dict[str, Any] | None = None) -> str:
    """The whole gallery page: title, settings line, summary tables, then the sections."""
    summary = summary or gallery_summary(examples)
    body = [f"<h1>{_escape(title)}</h1>"]
    if settings:
        body.append('<p class="settings">' + " · ".join(f"{_escape(k)}: {_escape(v)}" for k, v in settings.items())
                    + "</p>")
    body.append(_summary_html(summary))
    body.append("<nav>" + "".join(f'<a href="#{key}">{_escape(heading)} ({summary["sections"][key]})</a>'
                                  for key, heading, _ in SECTIONS) + "</nav>")
    body.append(LEGEND_HTML)
    for key, heading, description in SECTIONS:
        members = [e for e in examples if e.section == key]
        body.append(f'<section id="{key}"><h2>{_escape(heading)} ({len(members)})</h2>'
                    f'<p class="settings">{_escape(description)}</p>')
        body += [render_card(e, label_names) for e in members]
        body.append("</section>")
    return page(title, "\n".join(body))


# ---------------------------------------------------------------------------- files


def write_gallery(
    model_folder_or_model,
    dataset,
    output_dir: str | os.PathLike,
    rows: int | None = 60,
    split: str | None = None,
    mode: str | None = None,
    text_counterfactual: str | None = None,
    image_counterfactual: str | None = None,
    cues: Sequence[Any] | None = None,
    batch_size: int = 16,
    title: str | None = None,
    progress: bool = True,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Write `gallery.html` and `gallery.json` for the first `rows` rows of a dataset.

    Args:
        model_folder_or_model: a saved MME-JD folder or an `MMEJDModel` with `.processor`.
        dataset: a `datasets.Dataset`, a `DatasetDict` (with `split=`, default its only split
            or "test") or a `save_to_disk` folder (as `evaluate_model`).
        rows: how many rows, from the start of the split (None: all).
        mode, text_counterfactual, image_counterfactual, cues: see `inspect_examples`.
        trust_remote_code: let the model folder run Python code of its own (see
            `evaluation.run.load_model`; a saved MME-JD folder needs none).
    Returns {"html": path, "json": path, "summary": the summary dict}.
    """
    import json

    from ..files import atomic_write_text
    from .report import _json_default
    from ..data.sources import resolve_split
    from .run import load_model

    if rows is not None and rows < 1:
        raise ValueError(f"rows={rows}: inspect at least one row (or None for all).")
    model, processor = load_model(model_folder_or_model, trust_remote_code=trust_remote_code)
    data, split = resolve_split(dataset, split)
    if rows is not None and rows < len(data):
        data = data.select(range(rows))
    examples = inspect_examples(model, processor, data, mode=mode, text_counterfactual=text_counterfactual,
                                image_counterfactual=image_counterfactual, cues=cues, batch_size=batch_size,
                                progress=progress)
    label_names = [str(model.config.id2label[i]) for i in range(int(model.config.num_labels))]
    source = (os.fspath(model_folder_or_model) if isinstance(model_folder_or_model, (str, os.PathLike))
              else getattr(model.config, "_name_or_path", "") or type(model).__name__)
    first = examples[0]
    settings = {"model": source, "split": split or "—", "rows": len(examples),
                "mode": mode or model.config.mode, "text counterfactual": first.text_builder,
                "image counterfactual": first.image_builder, "other modality": model.config.other_modality,
                "cues": ", ".join(c.name for c in cues) if cues else "—"}
    summary = gallery_summary(examples)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    html_path, json_path = output_dir / GALLERY_FILE, output_dir / "gallery.json"
    atomic_write_text(html_path, render_gallery(examples, label_names, title or "MME-JD gallery: what the model sees",
                                                 settings, summary))
    payload = {"settings": settings, "summary": summary, "examples": [e.to_dict() for e in examples]}
    atomic_write_text(json_path, json.dumps(payload, indent=1, default=_json_default) + "\n")
    return {"html": str(html_path), "json": str(json_path), "summary": summary}
