# Copyright the MME-JD authors. Licensed under the Apache License, Version 2.0.
"""MME-JD classification metrics: an `evaluate` metric module, loadable by path.

    metric = evaluate.load("/path/to/mme_jd_metrics.py")
    metric.compute(predictions=[1, 0, 1, 1], references=[1, 0, 0, 1])

This file is the single implementation of the classification metrics of the project.
It holds two things:

* `classification_metrics`, the numpy implementation (needs numpy only);
* `MmeJdMetrics`, the `evaluate.Metric` wrapper whose `_compute` calls it.

`evaluate.load` copies this script into its module cache before importing it, so the
file must stand alone: it imports nothing from `mme_jd`. The package reaches the same
code the other way round: `mme_jd.evaluation.metrics` loads this file by path under the
module name `_NUMPY_CORE_MODULE_NAME` and skips the `evaluate` wrapper, because
importing `evaluate` costs seconds and the numpy core does not need it.

Conventions (the same as scikit-learn's with `zero_division=0`):

* classes are the integers `0 .. K-1`; `K` is `num_labels` when given, otherwise
  `max(largest label seen + 1, 2)` (a classifier has at least two classes, so a batch of
  all-negative samples is still scored as a binary task);
* per class c: `precision_c = TP_c / (TP_c + FP_c)`, `recall_c = TP_c / (TP_c + FN_c)`,
  `f1_c = 2·TP_c / (2·TP_c + FP_c + FN_c)`; a ratio whose denominator is 0 (a class
  never predicted, or never present) is 0.0;
* macro averages are unweighted means over the classes present in the references or
  in the predictions (a class absent from both is left out, like scikit-learn's
  default `labels=None`);
* weighted F1 = `sum_c support_c · f1_c / N` with `support_c` the count of c in the
  references;
* the binary figures (`precision`, `recall`, `f1`) are those of `pos_label` against
  the rest; they are reported when `K == 2` or when `average="binary"`;
* empty input raises ValueError.
"""

from __future__ import annotations

import numpy as np

_NUMPY_CORE_MODULE_NAME = "mme_jd.evaluation._metric_core"

_DESCRIPTION = """\
Accuracy, binary precision/recall/F1 of the positive class, macro precision/recall/F1 and
weighted F1 for single-label classification, computed with numpy. A ratio with a zero
denominator (a class never predicted or never present) counts as 0.0. Macro averages run
over the classes present in the references or predictions.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted class ids.
    references (`list` of `int`): true class ids.
    num_labels (`int`, optional): number of classes K; inferred as
        max(largest id + 1, 2) when left out.
    pos_label (`int`, default 1): the positive class of the binary figures.
    average (`str`, optional): "binary" to report the binary figures of `pos_label`
        against the rest even when K > 2; None (default) reports them only when K == 2.
Returns:
    accuracy, macro_precision, macro_recall, macro_f1, weighted_f1, and when binary:
    precision, recall, f1 (all Python floats in [0, 1]).
Examples:
    >>> metric = evaluate.load("path/to/mme_jd_metrics.py")
    >>> metric.compute(predictions=[1, 0, 1, 1], references=[1, 0, 0, 1])["f1"]
    0.8
"""

_CITATION = """\
@misc{mme_jd,
  title = {MME-JD: debiasing multimodal classifiers with counterfactual inference and a
           mixture of LoRA experts},
}
"""


def _as_label_array(values, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of class ids, got shape {array.shape}.")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        if np.issubdtype(array.dtype, np.bool_):
            array = array.astype(np.int64)
        elif np.issubdtype(array.dtype, np.floating) and np.all(np.mod(array, 1) == 0):
            array = array.astype(np.int64)
        else:
            raise ValueError(
                f"{name} must hold integer class ids (take the argmax of the logits first), "
                f"got dtype {array.dtype}."
            )
    return array.astype(np.int64, copy=False)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Element-wise numerator / denominator, 0.0 where the denominator is 0."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    out = np.zeros(np.broadcast(numerator, denominator).shape, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def classification_metrics(
    predictions,
    references,
    num_labels: int | None = None,
    pos_label: int = 1,
    average: str | None = None,
) -> dict[str, float]:
    """Classification figures of `predictions` against `references` (see module docstring).

    Returns a dict of Python floats: `accuracy`, `macro_precision`, `macro_recall`,
    `macro_f1`, `weighted_f1`, plus `precision`, `recall`, `f1` of `pos_label` when the
    task has 2 classes or `average == "binary"`.
    """
    if average not in (None, "binary"):
        raise ValueError(f'average must be None or "binary", got {average!r}.')
    preds = _as_label_array(predictions, "predictions")
    refs = _as_label_array(references, "references")
    if preds.shape != refs.shape:
        raise ValueError(
            f"predictions and references differ in length ({preds.size} vs {refs.size})."
        )
    if preds.size == 0:
        raise ValueError("Cannot compute metrics on empty input: got 0 predictions.")
    if preds.min() < 0 or refs.min() < 0:
        raise ValueError("Class ids must be non-negative integers.")
    largest = int(max(preds.max(), refs.max()))
    if num_labels is None:
        num_labels = max(largest + 1, 2)
    else:
        num_labels = int(num_labels)
        if num_labels < 1:
            raise ValueError(f"num_labels must be at least 1, got {num_labels}.")
        if largest >= num_labels:
            raise ValueError(
                f"Found class id {largest} but num_labels={num_labels}; "
                "pass the right num_labels or check the label mapping."
            )
    pos_label = int(pos_label)
    binary = num_labels == 2 or average == "binary"
    if binary and not 0 <= pos_label < num_labels:
        raise ValueError(f"pos_label={pos_label} is not a class id in [0, {num_labels}).")

    # confusion[t, p] = number of samples of true class t predicted as p.
    confusion = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(confusion, (refs, preds), 1)
    true_positives = np.diag(confusion)
    predicted = confusion.sum(axis=0)  # TP + FP per class
    support = confusion.sum(axis=1)  # TP + FN per class
    total = preds.size

    precision = _ratio(true_positives, predicted)
    recall = _ratio(true_positives, support)
    f1 = _ratio(2 * true_positives, predicted + support)
    present = (predicted + support) > 0  # classes seen in references or predictions

    results = {
        "accuracy": float(true_positives.sum() / total),
        "macro_precision": float(precision[present].mean()),
        "macro_recall": float(recall[present].mean()),
        "macro_f1": float(f1[present].mean()),
        "weighted_f1": float((f1 * support).sum() / total),
    }
    if binary:
        results["precision"] = float(precision[pos_label])
        results["recall"] = float(recall[pos_label])
        results["f1"] = float(f1[pos_label])
    return results


# The evaluate wrapper. Skipped when `mme_jd.evaluation.metrics` loads this file for the
# numpy core alone (importing evaluate takes seconds); always defined under evaluate.load.
if __name__ != _NUMPY_CORE_MODULE_NAME:
    import datasets
    import evaluate

    class MmeJdMetrics(evaluate.Metric):
        """`evaluate` front end of `classification_metrics`."""

        def _info(self) -> evaluate.MetricInfo:
            return evaluate.MetricInfo(
                description=_DESCRIPTION,
                citation=_CITATION,
                inputs_description=_KWARGS_DESCRIPTION,
                features=datasets.Features(
                    {
                        "predictions": datasets.Value("int32"),
                        "references": datasets.Value("int32"),
                    }
                ),
                reference_urls=[],
            )

        def _compute(
            self,
            predictions,
            references,
            num_labels: int | None = None,
            pos_label: int = 1,
            average: str | None = None,
        ) -> dict[str, float]:
            return classification_metrics(
                predictions,
                references,
                num_labels=num_labels,
                pos_label=pos_label,
                average=average,
            )
