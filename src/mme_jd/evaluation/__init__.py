"""Evaluation: metrics, group diagnostics and reports.

* `metrics`: `classification_metrics` (numpy), `load_metric()` (its `evaluate` front end) and
  `recovery_ratio` (the real-data benchmark's share of the shortcut's cost won back);
* `diagnostics`: group accuracy, reliance, mask quality, router report, calibration and
  the `Evaluator` that gathers them;
* `report`: `write_report` (JSON, Markdown, HTML, PNG plots).

The names below are re-exported lazily: importing this package imports neither numpy nor
matplotlib nor evaluate; each is loaded on first use of a name that needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY_EXPORTS = {
    "METRIC_MODULE_PATH": "metrics",
    "classification_metrics": "metrics",
    "load_metric": "metrics",
    "recovery_ratio": "metrics",
    "DEFAULT_STRATEGY_NAMES": "diagnostics",
    "Evaluator": "diagnostics",
    "cue_figures": "diagnostics",
    "cue_label": "diagnostics",
    "expected_calibration_error": "diagnostics",
    "group_accuracy": "diagnostics",
    "label_cue_groups": "diagnostics",
    "mask_quality": "diagnostics",
    "reliance": "diagnostics",
    "reliance_beyond_chance": "metrics",
    "router_report": "diagnostics",
    "wrong_way_rows": "diagnostics",
    "write_report": "report",
    "evaluate_model": "run",
    "counterfactual_quality": "quality",
}

__all__ = sorted(_LAZY_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from .diagnostics import (
        DEFAULT_STRATEGY_NAMES,
        Evaluator,
        cue_figures,
        cue_label,
        expected_calibration_error,
        group_accuracy,
        label_cue_groups,
        mask_quality,
        reliance,
        router_report,
        wrong_way_rows,
    )
    from .metrics import METRIC_MODULE_PATH, classification_metrics, load_metric, reliance_beyond_chance, recovery_ratio
    from .report import write_report


def __getattr__(name: str) -> Any:
    module_name = _LAZY_EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module_name}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
