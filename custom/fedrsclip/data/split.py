"""Seeded, stratified train/test split of (path, label) records."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

from .errors import DataError

Record = tuple[str, int]

# Fraction of each class used for training. UC Merced and OPTIMAL-31 use the
# common 50/50 protocol, NWPU-RESISC45 the harder 20/80 one (as in the paper),
# EuroSAT the 80/20 of its paper; BigEarthNet is stratified by each patch's first label.
DEFAULT_TRAIN_FRACTION: dict[str, float] = {
    "ucmerced": 0.5,
    "optimal31": 0.5,
    "nwpu": 0.2,
    "eurosat": 0.8,
    "eurosat-ms": 0.8,
    "bigearthnet-s2": 0.5,
    "bigearthnet-s1": 0.5,
    "bigearthnet-mm": 0.5,
    "imagefolder": 0.5,
    "synthetic": 0.5,
}


def check_seed(seed: int) -> int:
    """Seeds must be non-negative integers (numpy's SeedSequence rejects others)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def as_records(records: Iterable[Sequence]) -> list[Record]:
    """Normalise [path, label] lists (as read from JSON) to (str, int) tuples."""
    out: list[Record] = []
    for item in records:
        path, label = item
        out.append((str(path), int(label)))
    return out


def group_by_label(records: Iterable[Record]) -> dict[int, list[Record]]:
    """Records of each label, each list sorted by path so order never depends on input order."""
    groups: dict[int, list[Record]] = defaultdict(list)
    for rec in records:
        groups[rec[1]].append(rec)
    return {label: sorted(groups[label]) for label in sorted(groups)}


def split_train_test(
    records: Iterable[Sequence], train_fraction: float, seed: int
) -> tuple[list[Record], list[Record]]:
    """Split records per class into train and test.

    Each class's records are sorted, shuffled by a numpy Generator seeded with
    `seed`, and the first round(n * train_fraction) go to train (Python's
    round, half to even). A class with at least 2 images keeps at least one in
    each split; a class with a single image puts it in train. Both outputs are
    sorted by (label, path).
    """
    if not 0.0 < float(train_fraction) < 1.0:
        raise DataError(
            f"train fraction must be between 0 and 1 (exclusive), got {train_fraction}; "
            "e.g. 0.5 for UC Merced and OPTIMAL-31, 0.2 for NWPU-RESISC45"
        )
    seed = check_seed(seed)
    groups = group_by_label(as_records(records))
    if not groups:
        raise DataError("cannot split an empty list of images")
    rng = np.random.default_rng(seed)
    train: list[Record] = []
    test: list[Record] = []
    for label, items in groups.items():
        n = len(items)
        order = rng.permutation(n)
        n_train = round(n * train_fraction)
        n_train = min(max(n_train, 1), n - 1) if n >= 2 else n
        train.extend(items[i] for i in order[:n_train])
        test.extend(items[i] for i in order[n_train:])
    return sorted(train, key=_key), sorted(test, key=_key)


def _key(rec: Record) -> tuple[int, str]:
    return rec[1], rec[0]
