"""Cheap global image statistics and the built-in image cues.

Both work on a small RGB thumbnail (at most :data:`THUMBNAIL_SIDE` pixels a side), so a pass
over a few thousand tweet images takes seconds: shortcuts worth naming (a tinted background, a
frame, a watermark in a corner) survive the shrinking.

Statistics (:func:`image_statistics`, one float each; the finder tests each for association
with the label):

    mean_red, mean_green, mean_blue   channel means in [0, 1]
    brightness                        mean HSV value (max channel)
    saturation                        mean HSV saturation
    hue_cos, hue_sin                  the saturation-weighted circular mean hue, as cos/sin
                                      (hue is an angle: red 0°, green 120°, blue 240°)
    size                              sqrt(width · height) of the ORIGINAL image, in pixels
    aspect_ratio                      width / height of the original image
    border_uniformity                 −(std of the outer ring's pixels): high = a flat frame
    corner_uniformity                 −(mean std inside the four corner squares): high = flat
                                      corners, low = text or a logo there

Built-in image cues (:data:`IMAGE_CUE_FUNCTIONS`, ``function(image, **params) -> bool``):

    "dominant hue"      at least `min_share` (0.4) of the pixels are saturated (S ≥
                        `min_saturation`, 0.15) and within `tolerance` (30°) of `hue` (0°, red)
    "border"            the outer ring (`width`, 0.06 of the side) is flat (channel std ≤
                        `max_std`, 0.05) and differs from the inside by ≥ `min_contrast` (0.08)
    "corner watermark"  a corner square (`size`, 0.2 of the side) has at least `ratio` (2.0)
                        times the image's mean edge strength and at least `min_edge` (0.03):
                        text or a logo stamped in a corner
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = [
    "IMAGE_CUE_FUNCTIONS",
    "IMAGE_STATISTICS",
    "THUMBNAIL_SIDE",
    "border",
    "corner_watermark",
    "dominant_hue",
    "image_array",
    "image_statistics",
]

#: Longest side of the thumbnail the statistics and the built-in cues look at.
THUMBNAIL_SIDE = 64
#: Names of the statistics of :func:`image_statistics`, in order.
IMAGE_STATISTICS: tuple[str, ...] = (
    "mean_red", "mean_green", "mean_blue", "brightness", "saturation", "hue_cos", "hue_sin", "size",
    "aspect_ratio", "border_uniformity", "corner_uniformity",
)


def image_array(image: Any) -> tuple[np.ndarray, tuple[int, int]]:
    """(RGB float array in [0, 1] of the thumbnail, original (width, height)) of any image
    value the project accepts (PIL, path, bytes, array, `datasets.Image` dict)."""
    from ..data.images import load_image

    pil = load_image(image)
    size = pil.size
    if max(size) > THUMBNAIL_SIDE:
        pil = pil.copy()
        pil.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    return np.asarray(pil, dtype=np.float32) / 255.0, size


def _hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue in degrees [0, 360), saturation and value in [0, 1], per pixel."""
    high, low = rgb.max(axis=-1), rgb.min(axis=-1)
    chroma = high - low
    saturation = np.where(high > 0, chroma / np.maximum(high, 1e-8), 0.0)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    safe = np.maximum(chroma, 1e-8)
    hue = np.where(high == r, ((g - b) / safe) % 6, np.where(high == g, (b - r) / safe + 2, (r - g) / safe + 4))
    return np.where(chroma > 0, hue * 60.0, 0.0), saturation, high


def _ring_and_inside(rgb: np.ndarray, width: float) -> tuple[np.ndarray, np.ndarray]:
    height, wide = rgb.shape[:2]
    band = max(1, round(width * min(height, wide)))
    mask = np.zeros((height, wide), dtype=bool)
    mask[:band], mask[-band:], mask[:, :band], mask[:, -band:] = True, True, True, True
    return rgb[mask], rgb[~mask] if (~mask).any() else rgb.reshape(-1, 3)


def _corners(rgb: np.ndarray, size: float) -> list[np.ndarray]:
    height, wide = rgb.shape[:2]
    h, w = max(1, round(size * height)), max(1, round(size * wide))
    return [rgb[:h, :w], rgb[:h, -w:], rgb[-h:, :w], rgb[-h:, -w:]]


def image_statistics(rgb: np.ndarray, original_size: tuple[int, int]) -> dict[str, float]:
    """The statistics of :data:`IMAGE_STATISTICS` of one thumbnail (see the module docstring)."""
    hue, saturation, value = _hsv(rgb)
    angle = np.deg2rad(hue)
    weight = saturation.sum()
    hue_cos = float((saturation * np.cos(angle)).sum() / weight) if weight > 0 else 0.0
    hue_sin = float((saturation * np.sin(angle)).sum() / weight) if weight > 0 else 0.0
    ring, _ = _ring_and_inside(rgb, 0.06)
    corners = _corners(rgb, 0.125)
    width, height = original_size
    means = rgb.reshape(-1, 3).mean(axis=0)
    return {
        "mean_red": float(means[0]), "mean_green": float(means[1]), "mean_blue": float(means[2]),
        "brightness": float(value.mean()), "saturation": float(saturation.mean()),
        "hue_cos": hue_cos, "hue_sin": hue_sin,
        "size": float(math.sqrt(width * height)), "aspect_ratio": float(width / height),
        "border_uniformity": -float(ring.std(axis=0).mean()),
        "corner_uniformity": -float(np.mean([c.reshape(-1, 3).std(axis=0).mean() for c in corners])),
    }


# ---------------------------------------------------------------------------- built-in cues


def dominant_hue(image: Any, hue: float = 0.0, tolerance: float = 30.0, min_saturation: float = 0.15,
                 min_share: float = 0.4) -> bool:
    """True when at least `min_share` of the pixels are saturated and within `tolerance`
    degrees of `hue` (0 red, 120 green, 240 blue)."""
    rgb, _ = image_array(image)
    pixel_hue, saturation, _ = _hsv(rgb)
    distance = np.abs((pixel_hue - float(hue) + 180.0) % 360.0 - 180.0)
    return bool(((saturation >= min_saturation) & (distance <= tolerance)).mean() >= min_share)


def border(image: Any, width: float = 0.06, max_std: float = 0.05, min_contrast: float = 0.08) -> bool:
    """True when the outer ring is flat and differs from the inside (a frame or letterbox)."""
    rgb, _ = image_array(image)
    ring, inside = _ring_and_inside(rgb, width)
    flat = float(ring.std(axis=0).mean()) <= max_std
    return bool(flat and float(np.abs(ring.mean(axis=0) - inside.mean(axis=0)).mean()) >= min_contrast)


def corner_watermark(image: Any, size: float = 0.2, ratio: float = 2.0, min_edge: float = 0.03) -> bool:
    """True when a corner square holds much more edge strength than the image on average."""
    rgb, _ = image_array(image)
    gray = rgb.mean(axis=-1)
    edges = np.zeros_like(gray)
    edges[:, 1:] += np.abs(np.diff(gray, axis=1))
    edges[1:, :] += np.abs(np.diff(gray, axis=0))
    mean_edge = float(edges.mean())
    strongest = max(float(c.mean()) for c in _corners(edges[..., None], size))
    return bool(strongest >= min_edge and strongest >= ratio * mean_edge)


#: The built-in image cues by name (as `mme_jd.cues.Cue(image=NAME)` takes them).
IMAGE_CUE_FUNCTIONS: dict[str, Callable[..., bool]] = {
    "dominant hue": dominant_hue,
    "border": border,
    "corner watermark": corner_watermark,
}
