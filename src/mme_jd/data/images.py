"""Turn what users and datasets hold (paths, PIL images, arrays, None) into RGB PIL images."""

from __future__ import annotations

import os
from typing import Any

MAX_IMAGE_SIDE = 2048  # larger images are shrunk first: the processor resizes anyway
STAND_IN_SIZE = 64


def load_image(value: Any, index: int | None = None):
    """An RGB PIL image from a path, a PIL image, a numpy/torch array or a datasets Image dict.

    None gives a flat grey stand-in (rows without images). Colour modes (L, RGBA, P, CMYK, I;16
    ...) are converted to RGB; images larger than MAX_IMAGE_SIDE are shrunk. Errors are
    `ValueError`s naming the input's index and what to do.
    """
    from PIL import Image, UnidentifiedImageError

    where = f"input {index}: " if index is not None else ""
    if value is None:
        return Image.new("RGB", (STAND_IN_SIZE, STAND_IN_SIZE), (128, 128, 128))
    if isinstance(value, dict) and ("bytes" in value or "path" in value):  # datasets.Image undecoded
        if value.get("bytes"):
            import io

            value = io.BytesIO(value["bytes"])
        else:
            value = value.get("path")
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        if not os.path.isfile(path):
            raise ValueError(f"{where}image file not found: {path!r}; give an existing path or a PIL image.")
        try:
            with Image.open(path) as opened:
                opened.load()
                image = opened.copy()
        except (UnidentifiedImageError, OSError, SyntaxError) as error:
            raise ValueError(f"{where}cannot read image {path!r} ({error}); is the file a valid image?") from None
    elif hasattr(value, "read"):
        try:
            image = Image.open(value)
            image.load()
        except (UnidentifiedImageError, OSError, SyntaxError) as error:
            raise ValueError(f"{where}cannot read image data ({error}).") from None
    elif isinstance(value, Image.Image):
        image = value
    elif hasattr(value, "__array__") or hasattr(value, "numpy"):
        import numpy as np

        array = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)
        if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
            array = np.moveaxis(array, 0, -1)  # CHW → HWC
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)) or 0 in array.shape:
            raise ValueError(
                f"{where}an image array must be H×W, H×W×3 or H×W×4 (or C×H×W), got shape {tuple(array.shape)}."
            )
        if array.dtype != np.uint8:
            array = array.astype(np.float64)
            if not np.isfinite(array).all():
                raise ValueError(f"{where}the image array holds NaN or infinite values.")
            if array.max() <= 1.0:
                array = array * 255.0
            array = np.clip(array, 0, 255).astype(np.uint8)
        image = Image.fromarray(array)
    else:
        raise ValueError(
            f"{where}unsupported image type {type(value).__name__}; give a file path, a PIL image or an array."
        )
    if image.width == 0 or image.height == 0:
        raise ValueError(f"{where}the image is empty (0 pixels).")
    if image.mode != "RGB":
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            background = Image.new("RGB", rgba.size, (255, 255, 255))
            background.paste(rgba, mask=rgba.getchannel("A"))
            image = background
        elif image.mode.startswith("I;16") or image.mode in ("I", "F"):
            import numpy as np

            array = np.asarray(image, dtype=np.float64)
            span = max(array.max() - array.min(), 1e-9)
            image = Image.fromarray(((array - array.min()) / span * 255).astype(np.uint8)).convert("RGB")
        else:
            image = image.convert("RGB")
    if max(image.size) > MAX_IMAGE_SIDE:
        image = image.copy()
        image.thumbnail((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE))
    return image
