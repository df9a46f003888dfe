"""Write a file so that no reader ever sees half of it, and an overwrite changes only its text.

`atomic_write_text` (`atomic_write_bytes` for binary files such as plots) is the package's one
writer of result files (evaluation reports, `mme-jd predict` output, bench results, training
logs, publish folders).
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8", make_parents: bool = False) -> None:
    """Write `text` to `path` atomically (`atomic_write_bytes` of its `encoding`). Raises
    OSError (no permission, disk full ...) and UnicodeEncodeError (before anything is written)."""
    atomic_write_bytes(path, text.encode(encoding), make_parents)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, make_parents: bool = False) -> None:
    """Write `data` to `path` atomically: a temporary file in the same folder, flushed to disk,
    then `os.replace`. `make_parents` creates missing parent folders first (results files).

    An existing file keeps its permission bits (a 600 file stays 600: `os.replace` would give
    it the temporary file's); a new file gets the umask's, as `open()` would. A symlink is
    followed: its target is replaced and the link kept. The temporary file is removed on any
    failure. Raises OSError (no permission, disk full ...).
    """
    path = Path(os.path.realpath(path))
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = None
    temporary = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    # os.open with mode 0o666 lets the umask decide the permissions, as a plain open() would.
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise


__all__ = ["atomic_write_bytes", "atomic_write_text"]
