"""Exceptions raised by the Fed-RSIC data layer."""

from __future__ import annotations


class DataError(ValueError):
    """A dataset, split, partition or manifest problem the user can fix.

    Messages name the file or setting at fault and say what to do, so the CLI can
    print them as they are.
    """


class ImageReadError(DataError):
    """An image file is missing or cannot be decoded (truncated, corrupt, not an image).

    `path` is the file and `reason` a short cause without the path, for listings
    of skipped files.
    """

    def __init__(self, message: str, *, path: str | None = None, reason: str | None = None):
        super().__init__(message)
        self.path = path
        self.reason = reason or message
