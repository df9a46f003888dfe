"""Name the shortcut: find the cues a label leans on, declare them, get groups from them.

* `finder`: `find_cues` ranks every token and cheap image statistic of a training split by
  association with the label (log-odds ratio with an informative Dirichlet prior, z-scored);
  `mme-jd cues DATA` is its command line.
* `declared`: `Cue` (a text regex / token list, or a function of the image), per-row flags,
  ``label × cue presence`` group ids and the dataset columns that cache them.
* `image`: the image statistics and the built-in image cues ("dominant hue", "border",
  "corner watermark").
* `report`: the finder's terminal table and its JSON / Markdown / HTML report with a plot.

Declared cues feed the `cue_only` / `cue_removed` counterfactual builders
(`MMEJDConfig.cues`), validation-based selection (`MMEJDTrainingConfig.cues`) and per-cue
evaluation (`mme-jd evaluate --cue`).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "CUE_GROUP_COLUMN": "declared",
    "Cue": "declared",
    "add_cue_columns": "declared",
    "cue_column": "declared",
    "cue_flags": "declared",
    "cue_group_ids": "declared",
    "cue_group_names": "declared",
    "load_cues": "declared",
    "parse_cue": "declared",
    "parse_cues": "declared",
    "NO_CUE_Z": "finder",
    "find_cues": "finder",
    "image_associations": "finder",
    "linear_probe": "finder",
    "text_associations": "finder",
    "tokenize": "finder",
    "IMAGE_CUE_FUNCTIONS": "image",
    "IMAGE_STATISTICS": "image",
    "format_cue_table": "report",
    "write_cue_report": "report",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
