"""Exceptions raised by the Fed-RSIC data layer."""

from __future__ import annotations


class DataError(ValueError):
    """A dataset, split, partition or manifest problem the user can fix.

    Messages name the file or setting at fault and say what to do, so the CLI can
    print them as they are.
    """


class ImageReadError(DataError):
    """An image file or patch is missing, cannot be decoded, is too large, or lacks a band the composite needs.

    `path` is the file, `reason` a short cause without the path (for listings of skipped files) and `kind` the
    category the partition report counts ("unreadable", "not found", "too large", "missing band", ...).
    """

    def __init__(self, message: str, *, path: str | None = None, reason: str | None = None, kind: str = "unreadable"):
        super().__init__(message)
        self.path = path
        self.reason = reason or message
        self.kind = kind
