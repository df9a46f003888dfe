"""Training stages of MME-JD on the Hugging Face Trainer (METHOD §5).

`train(model, dataset, TrainingArguments(...), MMEJDTrainingConfig(recipe=...))` runs every
stage of a recipe and saves one checkpoint that reloads through `AutoModel`.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "train": "mme_jd.training.run",
    "MMEJDTrainingConfig": "mme_jd.training.run",
    "RECIPES": "mme_jd.training.run",
    "precompute_image_masks": "mme_jd.training.run",
    "refit_router": "mme_jd.training.run",
    "saved_training_config": "mme_jd.training.run",
    "fit_lambdas": "mme_jd.training.mid",
    "train_router": "mme_jd.training.router_labels",
    "copy_expert": "mme_jd.training.stages",
    "run_expert_stage": "mme_jd.training.stages",
    "train_jtt": "mme_jd.training.peers",
    "train_group_dro": "mme_jd.training.peers",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mme_jd.training' has no attribute {name!r}")


__all__ = list(_LAZY)
