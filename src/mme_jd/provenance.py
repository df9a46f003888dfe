"""What a result was made with: package versions, the lock, threads and the base's weights.

Every results file records `run_environment(model)`, so two runs that disagree can be told
apart by what differed (a library release, the thread count, another base) before anyone
reads the code.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

#: Distributions whose versions a result depends on.
TRACKED_PACKAGES = ("torch", "transformers", "peft", "accelerate", "datasets", "tokenizers", "safetensors",
                    "numpy", "pillow", "huggingface-hub")
#: The lock of tested versions, at the root of a source checkout (absent from an installed wheel).
LOCK_NAME = "requirements.lock"


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str | None]:
    """The installed version of each distribution (None when it is not installed)."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def lock_path() -> Path | None:
    """`requirements.lock` of the source checkout this package runs from, else of the working
    directory; None when neither has one (an installed wheel run elsewhere)."""
    candidates = [Path(__file__).resolve().parents[2] / LOCK_NAME, Path.cwd() / LOCK_NAME]
    return next((path for path in candidates if path.is_file()), None)


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tensors_sha256(named_tensors) -> str:
    """A checksum of named tensors, independent of their order and device: name, dtype, shape
    and the raw bytes of each, sorted by name."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(named_tensors, key=lambda item: item[0]):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}|".encode())
        digest.update(data.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def base_weights_sha256(model: Any) -> str:
    """The checksum of an `MMEJDModel`'s frozen base: every base parameter and buffer but the
    LoRA experts' (the experts are what training changes; the base is what it starts from).
    Names are taken without peft's wrapping prefixes, so a bare base gives the same value."""
    base = model.base_model_with_experts if hasattr(model, "base_model_with_experts") else model
    named = [(name.replace(".base_layer.", "."), tensor) for name, tensor in base.state_dict().items()
             if ".lora_" not in name]
    return tensors_sha256(named)


def run_environment(model: Any | None = None) -> dict[str, Any]:
    """What a results file records about how it was made.

    python, machine, cpu_count, torch_threads, the versions of `TRACKED_PACKAGES`, the lock's
    file name and sha256 (None outside a source checkout) and, given a model, the sha256 of its
    base weights before training (`base_weights_sha256`)."""
    import torch

    lock = lock_path()
    environment: dict[str, Any] = {
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "packages": package_versions(),
        "lock": lock.name if lock else None,
        "lock_sha256": file_sha256(lock) if lock else None,
    }
    if model is not None:
        environment["base_weights_sha256"] = base_weights_sha256(model)
    return environment


def describe_environment(environment: dict[str, Any]) -> str:
    """One Markdown sentence of a `run_environment` record, for a results file's header."""
    packages = environment.get("packages", {})
    versions = ", ".join(f"{name} {packages[name]}" for name in ("torch", "transformers", "peft") if packages.get(name))
    lock = environment.get("lock_sha256")
    base = environment.get("base_weights_sha256")
    parts = [f"Made with {versions}" if versions else "Made with unknown versions",
             f"{environment.get('torch_threads')} torch thread(s)",
             f"lock sha256 `{lock[:12]}`" if lock else "no lock (not a source checkout)"]
    if base:
        parts.append(f"base weights sha256 `{base[:12]}`")
    return "; ".join(parts) + "."


__all__ = ["LOCK_NAME", "TRACKED_PACKAGES", "base_weights_sha256", "describe_environment", "file_sha256", "lock_path", "package_versions",
           "run_environment", "tensors_sha256"]
