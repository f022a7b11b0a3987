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


def _umask() -> int:
    """The process's umask, without changing it where Linux reports it (/proc/self/status)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o077)  # elsewhere: read by setting it; a file made meanwhile gets the stricter mask
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None], mode: int | None = None) -> Path:
    """Write `path` through `write(handle)` so that it is either the old file or the complete new one.

    The file's permissions: `mode` when given (e.g. 0o600 for a site's private state or a secret key); otherwise
    those of the file it replaces, or for a new file what a plain open() gives (0o666 less the umask), not the
    owner-only mode of the temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode is None:
        try:
            mode = path.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
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
    return json.dumps(
        jsonable(obj), indent=indent, allow_nan=False, separators=None if indent is not None else (",", ":")
    )


def atomic_write_text(path: str | Path, text: str, mode: int | None = None) -> Path:
    data = text.encode("utf-8")
    return atomic_write(path, lambda handle: handle.write(data), mode)


def atomic_write_json(path: str | Path, obj: Any, mode: int | None = None) -> Path:
    return atomic_write_text(path, to_json(obj), mode)


def atomic_torch_save(path: str | Path, obj: Any, mode: int | None = None) -> Path:
    import torch  # only where torch state is saved (sites), never on the server

    return atomic_write(path, lambda handle: torch.save(obj, handle), mode)
