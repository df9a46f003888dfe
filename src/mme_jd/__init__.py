"""mme-jd: MME-JD debiasing for multimodal LLM classifiers, Hugging Face native.

Importing `mme_jd` registers the `mme_jd` model type with `AutoConfig` and `AutoModel`, so a
saved MME-JD folder loads with `AutoModel.from_pretrained(folder)` even without
`trust_remote_code`, and the `multimodal-debias` pipeline task, so
`transformers.pipeline("multimodal-debias", model=folder)` works. Heavier parts (data,
training, evaluation) load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from .modeling.configuration_mme_jd import MME_JD_VERSION as __version__  # one version: the code's own

_LAZY = {
    "MMEJDConfig": "mme_jd.modeling.configuration_mme_jd",
    "MMEJDModel": "mme_jd.modeling.modeling_mme_jd",
    "MMEJDOutput": "mme_jd.modeling.modeling_mme_jd",
    "MultimodalDebiasPipeline": "mme_jd.modeling.pipeline_mme_jd",
    "from_base": "mme_jd.base",
    "native_autocast_dtype": "mme_jd.base",
    "tiny_model": "mme_jd.tiny",
    "build_tiny_base": "mme_jd.tiny",
}


def register_auto_classes() -> None:
    """Register MME-JD with transformers' Auto classes and the `multimodal-debias` pipeline
    task (idempotent)."""
    from transformers import AutoConfig, AutoModel

    from .modeling.configuration_mme_jd import MMEJDConfig
    from .modeling.modeling_mme_jd import MMEJDModel
    from .modeling.pipeline_mme_jd import register_pipeline

    register_pipeline()

    try:
        AutoConfig.register(MMEJDConfig.model_type, MMEJDConfig, exist_ok=True)
        AutoModel.register(MMEJDConfig, MMEJDModel, exist_ok=True)
    except TypeError:  # older transformers without exist_ok
        pass


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mme_jd' has no attribute {name!r}")


register_auto_classes()

__all__ = ["__version__", "register_auto_classes", *_LAZY]
