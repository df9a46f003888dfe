"""Turn what users and datasets hold (paths, PIL images, arrays, None) into RGB PIL images.

A re-export: the one implementation lives in the Hub remote code,
`mme_jd.modeling.inputs_mme_jd` (modeling/inputs_mme_jd.py), so the training collator and the
`multimodal-debias` pipeline (which must run without this package) normalise images alike.
"""

from __future__ import annotations

from ..modeling.inputs_mme_jd import MAX_IMAGE_SIDE, STAND_IN_SIZE, load_image, normalize_text

__all__ = ["MAX_IMAGE_SIDE", "STAND_IN_SIZE", "load_image", "normalize_text"]
