"""Atomic writes: a temp file in the same folder, fsync, rename. A kill at any point leaves the last good file.

JSON is written by `to_json` only: strictly valid JSON (RFC 8259), so NaN and infinities become null (Python's
default would write the bare tokens NaN and Infinity, which other readers refuse).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

from .protocol import jsonable


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write `path` through `write(handle)` so that it is either the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable where the platform allows
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def to_json(obj: Any, indent: int | None = 1) -> str:
    """Strict JSON text of `obj` (numpy values as numbers, NaN and +-inf as null); ValueError if anything else
    cannot be written."""
    return json.dumps(jsonable(obj), indent=indent, allow_nan=False,
                      separators=None if indent is not None else (",", ":"))


def atomic_write_text(path: str | Path, text: str) -> Path:
    data = text.encode("utf-8")
    return atomic_write(path, lambda handle: handle.write(data))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, to_json(obj))


def atomic_torch_save(path: str | Path, obj: Any) -> Path:
    import torch  # only where torch state is saved (sites), never on the server

    return atomic_write(path, lambda handle: torch.save(obj, handle))
