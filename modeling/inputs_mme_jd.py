"""Turn what users and datasets hold (paths, PIL images, arrays, None, text) into model inputs.

The one place that normalises inputs: the training collator (`mme_jd.data.images` re-exports
`load_image`), the evaluation code and the `multimodal-debias` pipeline all use these
functions, so training and inference see the same pixels.

Hub remote code: imports only torch, transformers and the standard library. PIL is reached
through `transformers.image_utils`, which imports it for every image processor (the base
models' processors need Pillow anyway).

Rules (each violation is a `ValueError` naming the input's index and what to do):

image
    a path (str / os.PathLike; relative paths are relative to the working directory), a PIL
    image, a numpy/torch array (H×W, H×W×3, H×W×4 or C×H×W; uint8 0-255, or floats 0-1 /
    0-255), bytes of an image file, a file object, or a `datasets.Image` dict
    ({"bytes": ..., "path": ...}). Colour modes (L, LA, RGBA, P, CMYK, YCbCr, 1, I;16, I, F
    ...) become RGB (transparent pixels on white); images larger than `MAX_IMAGE_SIDE` on
    a side are shrunk (the processor resizes anyway). `None` gives a flat grey stand-in in
    `load_image` (rows without images); the pipeline rejects it.
    Errors: missing file, a folder, a URL (not fetched), unreadable or corrupt file, an image
    above the pixel limit (below), an empty image, an array of the wrong shape or of
    non-numeric / non-finite values, any other type.
text
    a non-empty string. Errors: None, another type, empty or blank text, text that is not
    valid Unicode (a lone surrogate such as "\\udcff", which JSON can carry but no tokenizer
    takes), text that holds the model's image placeholder (it would add an image slot to the
    prompt).

Pixel limit: an image file (or a PIL image not yet decoded) with more pixels than
`PIL.Image.MAX_IMAGE_PIXELS` (89,478,485 unless the user changed it) is refused from its
header, before any decoding. Pillow itself only warns up to twice that limit and decodes such
"decompression bombs" (a 20 KB PNG of 13000×13000 pixels costs 1.3 GB); here its warning is
the error, and `_too_large` the one message, stating the limit it applies.
"""

from __future__ import annotations

import io
import os
import warnings
from typing import Any

import torch
from transformers.utils import is_vision_available

MAX_IMAGE_SIDE = 2048  # larger images are shrunk first: the processor resizes anyway
STAND_IN_SIZE = 64
_READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError)


def _pil():
    """The `PIL` package, through transformers (see the module docstring)."""
    if not is_vision_available():
        raise ImportError("image inputs need Pillow: pip install pillow")
    from transformers.image_utils import PIL

    return PIL


def _where(index: int | None) -> str:
    return f"input {index}: " if index is not None else ""


def short_repr(value: Any, limit: int = 120) -> str:
    """repr(value) for a message, cut in the middle to about `limit` characters (both ends
    kept: a path's file name is at its end): a row's values can be megabytes long."""
    try:
        text = repr(value)
    except ValueError:  # an int of more than 4300 digits has no repr
        return f"<{type(value).__name__} too large to print>"
    if len(text) <= limit:
        return text
    half = (limit - 5) // 2
    return f"{text[:half]} ... {text[-half:]}"


def _too_large(where: str, name: str, pixels: int | None) -> ValueError:
    """The one message for an image above the pixel limit; it states the limit it applies."""
    limit = _pil().Image.MAX_IMAGE_PIXELS
    size = f" ({pixels:,} pixels)" if pixels else ""
    return ValueError(
        f"{where}{name} is too large to decode safely{size}: the limit is {int(limit or 0):,} pixels "
        "(PIL.Image.MAX_IMAGE_PIXELS); shrink the image below it, or raise the limit if you trust the file."
    )


def _check_pixel_limit(size: tuple[int, int], where: str, name: str) -> None:
    """Refuse, before decoding, an image of `size` (width, height) above Pillow's
    `MAX_IMAGE_PIXELS` (no limit when the user set it to None)."""
    limit = _pil().Image.MAX_IMAGE_PIXELS
    pixels = max(1, size[0]) * max(1, size[1])
    if limit is not None and pixels > limit:
        raise _too_large(where, name, pixels)


def _open(source: Any, where: str, name: str):
    """Open and fully decode an image file (path or file object), turning every failure
    into a ValueError. JPEGs larger than MAX_IMAGE_SIDE are decoded at a reduced size.

    The pixel limit: Pillow checks every header (and GIF/ICO/TIFF frames and tiles) against
    MAX_IMAGE_PIXELS before decoding, but above it only warns, up to twice the limit, and then
    decodes; its warning is made an error here, so the limit is MAX_IMAGE_PIXELS itself."""
    PIL = _pil()
    try:
        with warnings.catch_warnings():  # process-wide filters, restored on exit; only ever stricter meanwhile
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            with PIL.Image.open(source) as opened:  # reads the header only
                if opened.format == "JPEG":
                    opened.draft("RGB", (MAX_IMAGE_SIDE, MAX_IMAGE_SIDE))
                opened.load()
                return opened.copy()
    except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning) as error:
        # Pillow's message: "Image size (N pixels) exceeds limit of M pixels" (M is 2x the limit for the error)
        count = str(error).split("(", 1)[-1].split(" pixels)", 1)[0]
        raise _too_large(where, name, int(count) if count.isdigit() else None) from None
    except PIL.UnidentifiedImageError:
        raise ValueError(f"{where}{name} is not an image Pillow can read (unknown or corrupt format).") from None
    except PermissionError:
        raise ValueError(f"{where}{name} cannot be read (permission denied).") from None
    except _READ_ERRORS as error:
        raise ValueError(f"{where}cannot read {name} ({type(error).__name__}: {error}); is it a valid image?") from None


def _array_to_image(value: Any, where: str):
    """A PIL image from a numpy/torch array (see the module docstring for the accepted forms)."""
    PIL = _pil()
    try:
        if torch.is_tensor(value):
            tensor = value.detach().cpu()
        else:
            array = value.__array__() if hasattr(value, "__array__") else value.numpy()
            tensor = torch.tensor(array)
    except Exception as error:  # object/string/datetime arrays, broken __array__
        raise ValueError(
            f"{where}cannot read the image array ({type(error).__name__}: {error}); give numbers "
            "(uint8 0-255 or floats 0-1)."
        ) from None
    if tensor.is_complex():
        raise ValueError(f"{where}the image array holds complex numbers; give real pixel values.")
    if tensor.dim() == 3 and tensor.shape[0] in (1, 3, 4) and tensor.shape[-1] not in (1, 3, 4):
        tensor = tensor.permute(1, 2, 0)  # C×H×W → H×W×C
    if tensor.dim() == 3 and tensor.shape[-1] == 1:
        tensor = tensor[..., 0]
    if tensor.dim() not in (2, 3) or (tensor.dim() == 3 and tensor.shape[-1] not in (3, 4)) or 0 in tensor.shape:
        raise ValueError(
            f"{where}an image array must be H×W, H×W×3 or H×W×4 (or C×H×W), got shape {tuple(tensor.shape)}."
        )
    if tensor.dtype != torch.uint8:
        tensor = tensor.double()
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{where}the image array holds NaN or infinite values.")
        if float(tensor.max()) <= 1.0:
            tensor = tensor * 255.0
        tensor = tensor.clamp(0, 255).to(torch.uint8)
    return PIL.Image.fromarray(tensor.contiguous().numpy())


def _to_rgb(image, where: str):
    """RGB copy of any PIL image: transparency onto white, 16/32-bit and float scaled to 0-255."""
    PIL = _pil()
    if image.mode == "RGB":
        return image
    try:
        if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            background = PIL.Image.new("RGB", rgba.size, (255, 255, 255))
            background.paste(rgba, mask=rgba.getchannel("A"))
            return background
        if image.mode.startswith("I") or image.mode == "F":
            image = image.convert("F") if image.mode in ("I", "F") else image.convert("I").convert("F")
            low, high = image.getextrema()
            if low != low or high != high or abs(low) == float("inf") or abs(high) == float("inf"):
                raise ValueError("the image holds NaN or infinite values")
            span = max(high - low, 1e-9)
            return image.point(lambda v: (v - low) * (255.0 / span)).convert("L").convert("RGB")
        return image.convert("RGB")
    except _READ_ERRORS as error:
        raise ValueError(f"{where}cannot convert the {image.mode} image to RGB ({error}).") from None


def _path_of(value: Any, where: str) -> str:
    """The checked file path of a str / os.PathLike image source."""
    path = os.fspath(value)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if path.startswith(("http://", "https://")):
        raise ValueError(f"{where}image URLs are not fetched: download {short_repr(path)} and give the file's path.")
    if not path.strip():
        raise ValueError(f"{where}the image path is empty; give a file path, a PIL image or an array.")
    if "\x00" in path:
        raise ValueError(f"{where}the image path holds a NUL character: {short_repr(path)}.")
    if os.path.isdir(path):
        raise ValueError(f"{where}image path {short_repr(path)} is a folder, not an image file.")
    if not os.path.isfile(path):
        raise ValueError(f"{where}image file not found: {short_repr(path)}; give an existing path or a PIL image.")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{where}image file {short_repr(path)} is empty (0 bytes).")
    return path


def _unwrap_dict(value: dict, where: str) -> Any:
    """The bytes or path of a `datasets.Image` dict."""
    if "bytes" not in value and "path" not in value:
        keys = sorted(map(str, value))[:5]
        raise ValueError(f"{where}an image dict needs 'bytes' or 'path' (a datasets.Image value), got keys {keys}.")
    inner = value.get("bytes") or value.get("path")
    if inner is None:
        raise ValueError(f"{where}the image dict has neither bytes nor a path.")
    return inner


def check_image_source(value: Any, index: int | None = None) -> None:
    """Cheap checks of an image source without decoding it: its type, and for a path that the
    file exists. `load_image` may still find the file corrupt. Raises a ValueError naming the
    index; None passes (the caller decides whether a missing image is allowed)."""
    where = _where(index)
    if value is None:
        return
    if isinstance(value, dict):
        value = _unwrap_dict(value, where)
    if isinstance(value, (bytes, bytearray, memoryview)):
        if len(value) == 0:
            raise ValueError(f"{where}the image bytes are empty.")
    elif isinstance(value, (str, os.PathLike)):
        _path_of(value, where)
    elif not (hasattr(value, "read") or isinstance(value, _pil().Image.Image) or torch.is_tensor(value)
              or hasattr(value, "__array__") or hasattr(value, "numpy")):
        raise ValueError(
            f"{where}unsupported image type {type(value).__name__}; give a file path, a PIL image or an array."
        )


def load_image(value: Any, index: int | None = None):
    """An RGB PIL image from a path, a PIL image, a numpy/torch array, bytes, a file object or
    a `datasets.Image` dict.

    None gives a flat grey stand-in (rows without images). Colour modes (L, RGBA, P, CMYK,
    I;16 ...) are converted to RGB; images larger than MAX_IMAGE_SIDE are shrunk. Errors are
    `ValueError`s naming the input's index and what to do (see the module docstring).
    """
    PIL = _pil()
    where = _where(index)
    if value is None:
        return PIL.Image.new("RGB", (STAND_IN_SIZE, STAND_IN_SIZE), (128, 128, 128))
    check_image_source(value, index)
    if isinstance(value, dict):
        value = _unwrap_dict(value, where)
    if isinstance(value, (bytes, bytearray, memoryview)):
        image = _open(io.BytesIO(value), where, "the image bytes")
    elif isinstance(value, (str, os.PathLike)):
        path = _path_of(value, where)
        image = _open(path, where, f"image {short_repr(path)}")
    elif hasattr(value, "read"):
        image = _open(value, where, "the image data")
    elif isinstance(value, PIL.Image.Image):
        image = value
        if getattr(image, "tile", None):  # opened lazily by the caller: not decoded yet
            _check_pixel_limit(image.size, where, "the PIL image")
        try:
            image.load()
        except _READ_ERRORS as error:
            raise ValueError(f"{where}the PIL image cannot be decoded ({error}).") from None
    else:
        image = _array_to_image(value, where)
    if image.width == 0 or image.height == 0:
        raise ValueError(f"{where}the image is empty (0 pixels).")
    image = _to_rgb(image, where)
    if max(image.size) > MAX_IMAGE_SIDE:
        image = image.copy()
        image.thumbnail((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE))
    return image


def normalize_text(value: Any, index: int | None = None, forbidden: tuple[str, ...] = ()) -> str:
    """The input text, checked: a non-empty string without any of the `forbidden` markers
    (the model's image placeholder). Raises a ValueError naming the index otherwise."""
    where = _where(index)
    if value is None:
        raise ValueError(f"{where}text is None; give the text that goes with the image (a non-empty string).")
    if not isinstance(value, str):
        raise ValueError(f"{where}text must be a string, got {type(value).__name__}.")
    if not value.strip():
        raise ValueError(f"{where}text is empty; give the text that goes with the image.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:  # a lone surrogate: valid in a JSON escape, fatal to tokenizers
        raise ValueError(
            f"{where}text is not valid Unicode: it holds the lone surrogate {value[error.start]!r} at character "
            f"{error.start} (a broken \\ud800-\\udfff escape or a mis-decoded file?); fix or remove it."
        ) from None
    for marker in forbidden:
        if marker and marker in value:
            raise ValueError(
                f"{where}text contains the model's image placeholder {marker!r}; remove it (the image is "
                "given separately)."
            )
    return value


__all__ = ["MAX_IMAGE_SIDE", "STAND_IN_SIZE", "check_image_source", "load_image", "normalize_text",
           "short_repr"]
