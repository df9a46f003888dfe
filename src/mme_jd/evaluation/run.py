"""The `evaluate` entry point: a saved model (or a model object) and a dataset → report files.

    results = evaluate_model("my-mme-jd", data["test_balanced"], "eval/", mode="mme_jd")

What runs (all through `mme_jd.inference.collect_outputs`, batched, with a progress bar):

1. the model in `mode` (default: the model's `config.mode`) over the rows; mode "mid" builds
   both counterfactuals, mode "mme_jd" runs with `return_experts=True` so that the report
   shows each expert next to the routed mixture (the routed predictions are the same);
2. the general expert on the cue-only counterfactuals (a mode "mid" pass: the text with its
   content words masked, the image with its salient patches masked), for reliance — skipped
   when step 1 already was that pass.

What is computed (`mme_jd.evaluation.diagnostics.Evaluator`): task metrics, per-group accuracy
(worst-group and group-average) when the rows have `group`, reliance = share of samples whose
prediction equals the general expert's prediction on the cue-only counterfactual (one figure
per counterfactual, "text" and "image"), calibration (ECE and the reliability bins), and in
mode "mme_jd" the router's shares, its precision and recall against the targets it was trained
for (`routing_mme_jd.strategy_targets`, METHOD §4: the cheapest strategy that is right) and each
expert's figures. `write_report` writes `report.json`, `report.md` and plots.

With declared cues (`cues=[mme_jd.cues.Cue(...)]`, `mme-jd evaluate --cue ...`) the report gets
a `cues` section: per cue, the ``label × cue presence`` groups' accuracy (worst-group and
group-average), the accuracy where the cue points the wrong way, and reliance: on the rows with
the cue, how often the prediction equals the general expert's prediction on that cue's
`cue_only` input (one extra pass per cue); for the mixture and, in mode "mme_jd", each expert.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

__all__ = ["cue_points_to", "evaluate_model", "headline_figures", "load_model", "per_cue_figures", "prediction_figures",
           "synthetic_group_names"]

#: Text builders the general expert can run on any input; the others are training-only
#: (`swap` changes the label, `given` needs a dataset's core spans) and fall back to lexical.
INFERENCE_TEXT_COUNTERFACTUALS = ("lexical", "saliency")


def load_model(model_folder_or_model, trust_remote_code: bool = False):
    """(model, processor): a folder (or hub id) through `AutoModel` / `AutoProcessor`, or a
    model object with its `processor` attached.

    trust_remote_code: run Python code the folder ships (its own `auto_map` classes). Off by
        default: a saved MME-JD folder needs none, its model class is registered by `mme_jd`
        and its processor is a standard transformers class.
    """
    if isinstance(model_folder_or_model, (str, os.PathLike)):
        from transformers import AutoModel, AutoProcessor

        folder = os.fspath(model_folder_or_model)
        model = AutoModel.from_pretrained(folder, trust_remote_code=trust_remote_code)
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=trust_remote_code)
        model.processor = processor
        return model.eval(), processor
    processor = getattr(model_folder_or_model, "processor", None)
    if processor is None:
        raise ValueError("evaluate_model needs the model's processor: attach it (model.processor = processor) or "
                         "pass the folder the model was saved to.")
    return model_folder_or_model, processor


def synthetic_group_names(rows, num_labels: int) -> list[str] | None:
    """Names of the synthetic benchmark's (label × text cue × image cue) groups, when the rows'
    `group` column follows its coding (`mme_jd.data.synthetic.group_id`); else None."""
    from ..data import synthetic

    needed = {"group", "label", "text_cue", "image_cue"}
    if not needed <= set(rows.column_names) or num_labels not in (2, 3):
        return None
    group, label, text_cue, image_cue = (np.asarray(rows[c]) for c in ("group", "label", "text_cue", "image_cue"))
    if not np.array_equal(group, synthetic.group_id(label, text_cue, image_cue, num_labels)):
        return None
    return [synthetic.group_description(g, num_labels) for g in range(synthetic.num_groups(num_labels))]


def cue_points_to(cue: Any, config: Any, labels, flags) -> tuple[int | None, str]:
    """(the class id a cue points to, where it comes from): the cue's declared label, checked
    against the model's labels (`config.label2id`, or a class id), else the class whose rate the
    cue raises most on these rows (`diagnostics.cue_label`; None when no row has the cue)."""
    from .diagnostics import cue_label

    num_labels = int(config.num_labels)
    if cue.label is None:
        return cue_label(labels, flags, num_labels), "estimated on these rows"
    known = {**{str(k): int(v) for k, v in (config.label2id or {}).items()}, **{str(i): i for i in range(num_labels)}}
    if str(cue.label) not in known:
        raise ValueError(f"cue {cue.name!r} points to label {cue.label!r}, which the model does not have; "
                         f"use one of {sorted(known)} (e.g. --cue {cue.name}:{next(iter(known))}=...).")
    return known[str(cue.label)], "declared"


def per_cue_figures(model, processor, rows, cues: Sequence[Any], predictions: dict[str, np.ndarray],
                    batch_size: int = 64, progress: bool = False) -> dict[str, Any]:
    """{cue name: figures} for declared cues (`diagnostics.cue_figures`), each with the figures of
    every method in `predictions` ({method: class ids}) under "methods". The first method's
    figures are also the cue's top-level ones. The cue-only input of a text cue is its
    `cue_only` text (the image per `other_modality`), of an image cue its `cue_only` image."""
    from ..cues import add_cue_columns, cue_column
    from ..inference import collect_outputs
    from .diagnostics import cue_figures

    rows = add_cue_columns(rows, cues)
    labels = np.asarray(rows["label"], dtype=np.int64)
    num_labels = int(model.config.num_labels)
    label_names = [model.config.id2label[i] for i in range(num_labels)] if model.config.id2label else None
    figures: dict[str, Any] = {}
    for cue in cues:
        flags = np.asarray(rows[cue_column(cue)], dtype=bool)
        points_to, source = cue_points_to(cue, model.config, labels, flags)
        part = "text" if cue.kind == "text" else "image"
        cue_only = collect_outputs(
            model, processor, rows, batch_size=batch_size, mode="general", counterfactual_parts=(part,),
            text_counterfactual="cue_only", image_counterfactual="cue_only", cues=[cue], progress=progress,
            description=f"evaluate (cue-only input of {cue.name})",
        )[f"{part}_counterfactual_logits"].argmax(-1).numpy()
        methods = {name: cue_figures(values, labels, flags, points_to, cue_only, label_names, num_labels)
                   for name, values in predictions.items()}
        first = next(iter(methods.values()))
        figures[cue.name] = {"kind": cue.kind, "spec": {k: v for k, v in cue.to_spec().items() if k != "name"},
                             "points_to_source": source, **first,
                             "methods": {name: {k: v for k, v in f.items() if k != "groups"}
                                         for name, f in methods.items()}}
    return figures


def _inference_text_counterfactual(config, requested: str | None) -> str:
    if requested is not None:
        return requested
    builder = getattr(config, "text_counterfactual", "lexical")
    return builder if builder in INFERENCE_TEXT_COUNTERFACTUALS else "lexical"


def prediction_figures(
    evaluator,
    logits: torch.Tensor,
    counterfactual_logits: dict[str, torch.Tensor] | None = None,
    strategies: torch.Tensor | None = None,
    target_strategies: torch.Tensor | None = None,
) -> dict[str, Any]:
    """`Evaluator.evaluate` of class logits: predictions = argmax, probabilities = softmax,
    reliance against the argmax of each counterfactual's logits."""
    logits = logits.float()
    counterfactuals = None
    if counterfactual_logits:
        counterfactuals = {name: value.argmax(-1).numpy() for name, value in counterfactual_logits.items()}
    return evaluator.evaluate(
        logits.argmax(-1).numpy(),
        probabilities=logits.softmax(-1).numpy(),
        counterfactual_predictions=counterfactuals,
        strategies=strategies.numpy() if strategies is not None else None,
        target_strategies=target_strategies.numpy() if target_strategies is not None else None,
    )


def headline_figures(figures: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of one expert (the full dicts stay with the mixture)."""
    summary = {key: figures["metrics"][key] for key in ("accuracy", "f1", "macro_f1", "weighted_f1")
               if key in figures["metrics"]}
    if "groups" in figures:
        summary["worst_group_accuracy"] = figures["groups"]["worst_group_accuracy"]
        summary["group_average_accuracy"] = figures["groups"]["group_average_accuracy"]
    for name, value in figures.get("reliance", {}).items():
        summary[f"reliance_{name}"] = value
    if "calibration" in figures:
        summary["ece"] = figures["calibration"]["ece"]
    return summary


def evaluate_model(
    model_folder_or_model,
    dataset,
    output_dir: str | os.PathLike,
    mode: str | None = None,
    batch_size: int = 64,
    formats: Sequence[str] | str = ("json", "md"),
    progress: bool = True,
    split: str | None = None,
    text_counterfactual: str | None = None,
    image_counterfactual: str | None = None,
    title: str | None = None,
    cues: Sequence[Any] | None = None,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Run a model over a dataset and write its evaluation report (see the module docstring).

    Args:
        model_folder_or_model: a saved MME-JD folder (loaded with `AutoModel` /
            `AutoProcessor`) or an `MMEJDModel` with `.processor`.
        dataset: a `datasets.Dataset`, a `DatasetDict` (with `split=`, default its only split
            or "test") or a `save_to_disk` folder; rows have `text`, `image`, `label` and
            optionally `group` (for per-group accuracy).
        output_dir: where `report.json`, `report.md` (and `report.html`) and plots go.
        mode: "general", "mid", "mctd" or "mme_jd" (None: the model's `config.mode`).
        batch_size: rows per forward pass.
        formats: report formats ("json", "md", "html").
        progress: show tqdm progress bars.
        text_counterfactual / image_counterfactual: the builders of the cue-only
            counterfactuals (None: the model's, with the training-only text builders `swap`
            and `given` replaced by `lexical`). Rows with precomputed `text_counterfactual` /
            `image_counterfactual_mask` columns use those.
        cues: declared cues (`mme_jd.cues.Cue`) for the per-cue figures (see the module
            docstring); their flags are computed once (`add_cue_columns`).
        trust_remote_code: let the folder run Python code of its own (see `load_model`).
    Returns the results dict written to `report.json`, plus `"files"`: {kind: path}.
    """
    from ..data.sources import resolve_split
    from ..inference import collect_outputs
    from ..modeling.routing_mme_jd import strategy_targets
    from .diagnostics import Evaluator
    from .report import write_report

    model, processor = load_model(model_folder_or_model, trust_remote_code=trust_remote_code)
    rows, split = resolve_split(dataset, split)
    if "label" not in rows.column_names:
        raise ValueError(f"the rows need a `label` column to be evaluated; they have {rows.column_names}.")
    mode = mode or model.config.mode
    text_builder = _inference_text_counterfactual(model.config, text_counterfactual)
    image_builder = image_counterfactual or model.config.image_counterfactual
    counterfactual_kwargs = dict(counterfactual_parts=("text", "image"), text_counterfactual=text_builder,
                                 image_counterfactual=image_builder)
    started = time.perf_counter()
    outputs = collect_outputs(
        model, processor, rows, batch_size=batch_size, mode=mode, return_experts=mode == "mme_jd",
        progress=progress, description=f"evaluate ({mode})", **(counterfactual_kwargs if mode == "mid" else {}),
    )
    seconds_main = time.perf_counter() - started
    if mode == "mid":
        cue_only = outputs
    else:
        cue_only = collect_outputs(model, processor, rows, batch_size=batch_size, mode="mid", progress=progress,
                                   description="evaluate (cue-only counterfactuals)", **counterfactual_kwargs)
    counterfactual_logits = {"text": cue_only["text_counterfactual_logits"],
                             "image": cue_only["image_counterfactual_logits"]}

    labels = outputs["labels"]
    num_labels = int(model.config.num_labels)
    groups = outputs.get("groups")
    group_names = synthetic_group_names(rows, num_labels) if groups is not None else None
    evaluator = Evaluator(labels.numpy(), groups=groups.numpy() if groups is not None else None,
                          group_names=group_names, num_labels=num_labels)

    strategies = targets = None
    if mode == "mme_jd":  # the router against its training targets (the same rule)
        strategies = outputs["strategy"]
        experts = {name: outputs[f"{name}_logits"] for name in ("general", "image_debias", "text_debias")}
        targets = strategy_targets(labels, experts, model.config.both_combination)
    results: dict[str, Any] = prediction_figures(evaluator, outputs["logits"], counterfactual_logits, strategies,
                                                 targets)
    if mode == "mme_jd":
        results["experts"] = {
            name: headline_figures(prediction_figures(evaluator, outputs[f"{name}_logits"], counterfactual_logits))
            for name in ("general", "image_debias", "text_debias")
        }
    source = os.fspath(model_folder_or_model) if isinstance(model_folder_or_model, (str, os.PathLike)) else None
    results["evaluation"] = {
        "model": source or type(model).__name__,
        "split": split,
        "mode": mode,
        "batch_size": batch_size,
        "cue_only_text_counterfactual": text_builder,
        "cue_only_image_counterfactual": image_builder,
        "reliance_definition": "share of samples whose prediction equals the general expert's prediction on the "
                               "cue-only counterfactual",
        "seconds": round(seconds_main, 3),
        "samples_per_second": round(len(rows) / seconds_main, 2) if seconds_main > 0 else None,
    }
    if cues:
        methods = {"mixture" if mode == "mme_jd" else mode: outputs["logits"].argmax(-1).numpy()}
        if mode == "mme_jd":
            methods.update({name: outputs[f"{name}_logits"].argmax(-1).numpy()
                            for name in ("general", "image_debias", "text_debias")})
        results["cues"] = per_cue_figures(model, processor, rows, cues, methods, batch_size=batch_size,
                                          progress=progress)
    if mode in ("mid", "mme_jd") and hasattr(model.config, "lambda_text"):
        results["evaluation"]["lambda_text"] = float(model.config.lambda_text)
        results["evaluation"]["lambda_image"] = float(model.config.lambda_image)
    title = title or f"MME-JD evaluation ({mode}{', ' + split if split else ''})"
    written = write_report(results, Path(output_dir), title=title, formats=formats)
    return {**results, "files": {kind: str(path) for kind, path in written.items()}}
