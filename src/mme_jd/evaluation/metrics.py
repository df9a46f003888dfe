"""Task metrics: accuracy, binary/macro/weighted F1, precision and recall; worst-group
accuracy and F-beta, the two figures validation-based choices in training also score with;
the recovery ratio of the real-data benchmark (METHOD §8).

A leaf module: it imports no other `mme_jd` module, so training may import it (the one import
from training into evaluation).

There is one implementation of the classification math, in the `evaluate` metric script
`metric/mme_jd_metrics.py` (it must stand alone there, because `evaluate.load` copies the
script into a cache folder where imports of `mme_jd` would not resolve). This module loads
that file by path with importlib, under a module name that tells the script to skip its
`evaluate` wrapper: `classification_metrics` needs numpy only and never pays the seconds
that `import evaluate` costs. `load_metric()` gives the `evaluate` front end of the same code.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

METRIC_MODULE_PATH: Path = Path(__file__).resolve().parent / "metric" / "mme_jd_metrics.py"
"""Path of the `evaluate` metric script; pass it to `evaluate.load`."""

_NUMPY_CORE_MODULE_NAME = "mme_jd.evaluation._metric_core"  # must match the script's constant


@functools.lru_cache(maxsize=1)
def _metric_core() -> ModuleType:
    """The metric script imported as a plain module, without its `evaluate` wrapper."""
    if _NUMPY_CORE_MODULE_NAME in sys.modules:
        return sys.modules[_NUMPY_CORE_MODULE_NAME]
    spec = importlib.util.spec_from_file_location(_NUMPY_CORE_MODULE_NAME, METRIC_MODULE_PATH)
    if spec is None or spec.loader is None:
        raise ImportError(
            f"Cannot load the metric script {METRIC_MODULE_PATH}; is the package installed "
            "with its package data (evaluation/metric/*.py)?"
        )
    module = importlib.util.module_from_spec(spec)
    sys.modules[_NUMPY_CORE_MODULE_NAME] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(_NUMPY_CORE_MODULE_NAME, None)
        raise
    return module


def classification_metrics(
    predictions,
    references,
    num_labels: int | None = None,
    pos_label: int = 1,
    average: str | None = None,
) -> dict[str, float]:
    """Accuracy, precision, recall and F1 of integer `predictions` against `references`.

    Formulas, per class c with TP/FP/FN counted one-vs-rest:
    `precision_c = TP_c/(TP_c+FP_c)`, `recall_c = TP_c/(TP_c+FN_c)`,
    `f1_c = 2·TP_c/(2·TP_c+FP_c+FN_c)`, each 0.0 when its denominator is 0 (a class never
    predicted or never present). `macro_*` = unweighted mean over the classes present in
    references or predictions; `weighted_f1` = Σ_c support_c·f1_c / N. The binary figures
    `precision`, `recall`, `f1` (of `pos_label` against the rest) are included when there
    are 2 classes (`num_labels`, or inferred as max(largest id + 1, 2)) or when
    `average="binary"`. Empty input raises ValueError.

    Returns a dict of Python floats with keys `accuracy`, `macro_precision`,
    `macro_recall`, `macro_f1`, `weighted_f1` (+ `precision`, `recall`, `f1`).
    """
    return _metric_core().classification_metrics(
        predictions, references, num_labels=num_labels, pos_label=pos_label, average=average
    )


def _array(values):
    """`values` as a numpy array; torch tensors (any device) are detached and copied to the CPU
    (duck-typed: this module does not import torch)."""
    import numpy as np

    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def worst_group_accuracy(predictions, labels, groups=None) -> float:
    """The lowest per-group accuracy: `min_g |{i ∈ g : pred_i = label_i}| / |g|` over the groups
    present in `groups` (one group id per sample); without groups, the plain accuracy.

    Arguments are 1-D sequences, numpy arrays or torch tensors (of any device). For named
    groups, empty groups and group-average accuracy, see `diagnostics.group_accuracy`.
    """
    import numpy as np

    correct = _array(predictions) == _array(labels)
    if correct.size == 0:
        raise ValueError("Cannot compute worst-group accuracy on empty input.")
    if groups is None:
        return float(correct.mean())
    groups = _array(groups)
    if groups.shape != correct.shape:
        raise ValueError(f"groups has shape {groups.shape}, the predictions {correct.shape}: give one group per sample.")
    return float(min(correct[groups == group].mean() for group in np.unique(groups)))


def reliance_beyond_chance(original_predictions, counterfactual_predictions) -> float:
    """How often the prediction on the original equals the prediction on the cue-only input
    (`diagnostics.reliance`), minus the agreement two independent predictors with the same class
    rates would reach, Σ_k P(pred(x) = k)·P(pred(x*) = k): 0 when the prediction on the original
    owes nothing to what the cue-only input says, whatever the class balance (the numerator of
    Cohen's kappa). A model that predicts one class everywhere, or a cue-only input read as one
    class everywhere, gets 0; a model that goes against the cue, below 0."""
    import numpy as np

    original = _array(original_predictions).astype(np.int64).ravel()
    counterfactual = _array(counterfactual_predictions).astype(np.int64).ravel()
    if original.shape != counterfactual.shape or original.size == 0:
        raise ValueError(f"need one cue-only prediction per prediction, and at least one: got {original.size} and "
                         f"{counterfactual.size}.")
    size = int(max(original.max(), counterfactual.max())) + 1
    chance = float(np.dot(np.bincount(original, minlength=size), np.bincount(counterfactual, minlength=size)))
    return float((original == counterfactual).mean()) - chance / original.size ** 2


def f_beta(precision: float, recall: float, beta: float = 1.0) -> float:
    """F_β = (1+β²)·P·R / (β²·P + R) of a precision P and a recall R; 0.0 when P = R = 0.
    β < 1 weighs precision more (β = 0.5: the router's threshold), β > 1 recall."""
    beta2 = beta * beta
    denominator = beta2 * precision + recall
    return float((1.0 + beta2) * precision * recall / denominator) if denominator else 0.0


def recovery_ratio(f1_method: float, f1_erm_biased: float, f1_erm_clean: float) -> float:
    """The share of what a shortcut costs that a method wins back (METHOD §8):

        (F1_method − F1_ERM,biased) / (F1_ERM,clean − F1_ERM,biased)

    all F1s on the same cue-free test set: `f1_erm_biased` of ERM trained on the data with the
    shortcut (MMSD), `f1_erm_clean` of ERM trained on the cue-free data (MMSD2.0), `f1_method`
    of the method trained on the data with the shortcut; same base, data size, epochs and seed.
    0 is ERM's, 1 is the cue-free reference's; below 0 the method lost ground, above 1 it beat
    the reference. E.g. 0.630 against 0.570 and 0.705: 0.060 / 0.135 = 0.444.

    Returns NaN when ERM on the clean data is not better than ERM on the biased data (a gap
    ≤ 0: there is nothing to recover and no ratio means anything; report the F1s themselves),
    so one such seed does not stop a benchmark. Raises a `ValueError` for an F1 that is not a
    number in [0, 1].
    """
    import math
    import numbers

    for name, value in (("f1_method", f1_method), ("f1_erm_biased", f1_erm_biased), ("f1_erm_clean", f1_erm_clean)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value <= 1.0:
            raise ValueError(f"recovery_ratio: {name}={value!r} must be an F1 score, a number in [0, 1].")
    gap = f1_erm_clean - f1_erm_biased
    if gap <= 0:
        return math.nan
    return float((f1_method - f1_erm_biased) / gap)


def load_metric(**kwargs: Any):
    """The project's `evaluate` metric, loaded by path (works offline).

    `kwargs` go to `evaluate.load` (e.g. `keep_in_memory=True`, `experiment_id=...`);
    `compute(predictions=..., references=..., num_labels=None, pos_label=1, average=None)`
    returns the same dict as `classification_metrics`.
    """
    import evaluate  # slow import (seconds): only when the evaluate front end is asked for

    return evaluate.load(str(METRIC_MODULE_PATH), **kwargs)
