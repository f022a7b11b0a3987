"""Content digests of image files and patch folders, remembered so that an unchanged file is hashed once.

The feature cache is keyed by what the files hold, not by their size and modification time (a file replaced by
another of the same size and mtime, as `cp -p`, `rsync -t` or an unpacked archive leave it, keeps both). Hashing
every file at every start would cost a read of the whole dataset, so each digest is remembered in
`<cache dir>/file-digests.json` together with the file's (size, mtime_ns, ctime_ns, inode, device):

- writing a file changes its mtime and ctime; setting the mtime back (touch -d, cp -p) changes the ctime again,
  and programs cannot set the ctime;
- replacing a file by a rename gives another inode.

So while all five are unchanged the content is, on POSIX file systems with nanosecond timestamps. (Not sound
where that fails: file systems without a real ctime such as FAT, or a system clock set back between two writes
of the same size; delete the cache folder there after replacing images.)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from ..atomic import atomic_write_json

log = logging.getLogger(__name__)

MEMO_NAME = "file-digests.json"
_CHUNK = 1 << 20


def _identity(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def hash_file(path: Path) -> str:
    """sha256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class DigestMemo:
    """sha256 of files and folders, remembered by file identity in `folder/file-digests.json` (None: not kept)."""

    def __init__(self, folder: str | Path | None):
        self.path = Path(folder) / MEMO_NAME if folder is not None else None
        self.entries: dict[str, list] = {}
        self.hashed = 0  # files hashed by this memo (the rest were remembered)
        self._added: set[str] = set()  # keys this memo hashed since it was read or saved
        self.entries = self._read(warn=True)

    def _read(self, warn: bool = False) -> dict[str, list]:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            loaded = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(loaded, dict):
                raise ValueError("not a mapping")
            return {k: v for k, v in loaded.items() if isinstance(v, list) and len(v) == 6 and isinstance(v[5], str)}
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            if warn:
                log.warning("digest memo %s is unreadable (%s): every file is hashed again", self.path, exc)
            return {}

    def file_digest(self, path: str | Path) -> str:
        """The digest of one file: remembered while its identity is unchanged, else hashed."""
        real = Path(path).resolve()
        key = str(real)
        ident = _identity(real.stat())
        known = self.entries.get(key)
        if known is not None and known[:5] == ident:
            return known[5]
        value = hash_file(real)
        self.hashed += 1
        self.entries[key] = [*ident, value]
        self._added.add(key)
        return value

    def digest(self, path: str | Path) -> str:
        """A file's digest, or a folder's: the names and digests of the regular files directly inside it."""
        path = Path(path)
        if not path.is_dir():
            return self.file_digest(path)
        combined = hashlib.sha256()
        for entry in sorted(path.iterdir()):
            if entry.is_file() and not entry.name.startswith("."):
                combined.update(f"{entry.name}\0{self.file_digest(entry)}\n".encode())
        return combined.hexdigest()

    def save(self) -> None:
        """Write the memo (atomically) when a digest was added, merged with what the file holds now: sites that share
        a cache folder (simulated sites with an absolute data.cache_dir) keep each other's digests."""
        if self.path is not None and self._added:
            merged = {**self._read(), **{key: self.entries[key] for key in self._added}}
            atomic_write_json(self.path, merged)
            self.entries = {**merged, **self.entries}
            self._added = set()
