"""Shared fixtures: tiny random models built offline, and a few real (text, image) samples."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)  # pytest -n 2 runs two workers on two cores

TEXTS = ["the movie was great #irony", "my day is bad", "today is good fun", "awful movie today"]


def random_images(count: int, size: int = 40, seed: int = 0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (size, size + 4, 3), dtype=np.uint8)) for _ in range(count)]


def nudge_experts(model, scale: float = 0.5, seed: int = 0) -> None:
    """Give every LoRA B matrix random values so the experts differ from the base."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.vlm.named_parameters():
            if ".lora_B." in name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)


@pytest.fixture
def tiny_llava_model():
    from families import tiny_llava

    from mme_jd.base import from_base

    base, processor = tiny_llava()
    return from_base(base, processor).eval()


@pytest.fixture
def images():
    return random_images(len(TEXTS))


def write_bomb_png(path, side: int = 13000) -> None:
    """A valid 1-bit greyscale PNG of side×side pixels, all black: about 20 KB on disk for
    13000 (169M pixels, between Pillow's warning limit of 89.5M and its error limit of twice
    that), 1.3 GB once decoded to RGB. Written with zlib, without decoding anything."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + bytes((side + 7) // 8)  # filter byte + packed 1-bit pixels
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(row * side, 9))
    with open(path, "wb") as handle:
        handle.write(data + chunk(b"IEND", b""))
