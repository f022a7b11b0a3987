"""Split a dataset's train and test records across federated sites."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence

import numpy as np

from .errors import DataError
from .split import Record, as_records, check_seed, group_by_label

SCHEMES: tuple[str, ...] = ("uniform", "label-skew", "dirichlet")

# How many times a Dirichlet draw is repeated before an empty site is patched
# by moving one image to it.
_DIRICHLET_REDRAWS = 20
# Added to the seed so the partition's random stream is independent of the split's.
_STREAM = 0x5EED


def site_names(num_clients: int) -> list[str]:
    """The site names used in manifests: site-1 .. site-N."""
    return [f"site-{i}" for i in range(1, num_clients + 1)]


def partition(
    train: Iterable[Sequence],
    test: Iterable[Sequence],
    num_clients: int,
    scheme: str,
    seed: int,
    *,
    classes_per_site: int | None = None,
    dirichlet_beta: float = 0.5,
) -> dict[str, dict[str, list[Record]]]:
    """Distribute train and test records over sites "site-1".."site-N".

    Schemes:
      uniform     the paper's Fed-RSIC split: each class's shuffled images are dealt
                  round-robin, carrying on from where the previous class stopped,
                  so every site gets floor or ceil of total/N images and about the
                  same number of each class. Train and test alike.
      label-skew  each site holds `classes_per_site` classes (default ceil(K/2));
                  every class is held by at least one site; a class's images are
                  split evenly among its holders; a site's test classes are its
                  train classes.
      dirichlet   per class, site proportions ~ Dirichlet(dirichlet_beta); each
                  site's test share of a class equals its train share, so test and
                  train label distributions match; every site gets >= 1 train image.

    num_clients=1 is centralised training: one site holds everything.
    Site lists are sorted by (label, path).
    """
    if isinstance(num_clients, bool) or not isinstance(num_clients, (int, np.integer)) or num_clients < 1:
        raise DataError(f"number of clients must be an integer >= 1, got {num_clients!r}")
    num_clients = int(num_clients)
    if scheme not in SCHEMES:
        raise DataError(f"unknown partition scheme '{scheme}'; valid schemes are: {', '.join(SCHEMES)}")
    seed = check_seed(seed)
    train_recs = as_records(train)
    test_recs = as_records(test)
    if len(train_recs) < num_clients:
        idle = site_names(num_clients)[len(train_recs) :]
        raise DataError(
            f"only {len(train_recs)} training images for {num_clients} sites: {len(idle)} site"
            f"{'s' if len(idle) > 1 else ''} ({', '.join(idle[:5])}{', ...' if len(idle) > 5 else ''}) would get "
            "none and could never train; use fewer sites (--sites), a larger train fraction (--train-fraction) "
            "or more images"
        )

    if num_clients == 1:
        sites_train, sites_test = [train_recs], [test_recs]
    else:
        rng = np.random.default_rng([seed, _STREAM])
        if scheme == "uniform":
            sites_train = _deal_uniform(train_recs, num_clients, rng)
            sites_test = _deal_uniform(test_recs, num_clients, rng)
        elif scheme == "label-skew":
            sites_train, sites_test = _label_skew(train_recs, test_recs, num_clients, classes_per_site, rng)
        else:
            sites_train, sites_test = _dirichlet(train_recs, test_recs, num_clients, dirichlet_beta, rng)

    names = site_names(num_clients)
    empty = [names[i] for i, recs in enumerate(sites_test) if not recs]
    if empty:  # such a site trains but can never be measured: its evaluation cells stay empty
        warnings.warn(no_test_message(empty, num_clients, len(test_recs), scheme), NoTestImagesWarning, stacklevel=2)
    return {
        name: {"train": sorted(tr, key=_key), "test": sorted(te, key=_key)}
        for name, tr, te in zip(names, sites_train, sites_test)
    }


class NoTestImagesWarning(UserWarning):
    """A partition gives some site no test images: the site trains, but nothing of it is ever measured."""


def no_test_message(empty: Sequence[str], num_sites: int, test_images: int, scheme: str) -> str:
    """What `NoTestImagesWarning` says: the sites (the first 5), why, and what to do."""
    named = f"{', '.join(empty[:5])}{', ...' if len(empty) > 5 else ''}"
    why = (
        "the split left no test images at all (a class with a single image goes to training)"
        if test_images == 0
        else f"{test_images} test images over {num_sites} sites with scheme '{scheme}'"
    )
    return (
        f"{len(empty)} of {num_sites} sites get no test images ({named}): {why}; their evaluation cells will be "
        "empty (no test images, nothing to measure). Use "
        + ("fewer sites (--sites), " if num_sites > 1 else "")
        + "a larger dataset, or a smaller train fraction (--train-fraction)"
        + (", or a milder skew" if scheme != "uniform" else "")
    )


def _key(rec: Record) -> tuple[int, str]:
    return rec[1], rec[0]


def _deal_uniform(records: list[Record], n: int, rng: np.random.Generator) -> list[list[Record]]:
    # One dealing position runs across all classes, so the site that gets a
    # class's remainder rotates from class to class and site totals differ by
    # at most one.
    sites: list[list[Record]] = [[] for _ in range(n)]
    pos = 0
    for items in group_by_label(records).values():
        for i in rng.permutation(len(items)):
            sites[pos % n].append(items[i])
            pos += 1
    return sites


def _check_test_labels(train: list[Record], test: list[Record], scheme: str) -> list[int]:
    labels = sorted({label for _, label in train})
    missing = sorted({label for _, label in test} - set(labels))
    if missing:
        raise DataError(
            f"scheme '{scheme}' needs training images for every class that has test images; "
            f"labels {missing} appear only in the test split"
        )
    return labels


def _label_skew(
    train: list[Record],
    test: list[Record],
    n: int,
    classes_per_site: int | None,
    rng: np.random.Generator,
) -> tuple[list[list[Record]], list[list[Record]]]:
    labels = _check_test_labels(train, test, "label-skew")
    k_total = len(labels)
    k = math.ceil(k_total / 2) if classes_per_site is None else classes_per_site
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= k_total:
        raise DataError(f"classes per site must be an integer from 1 to {k_total} (the number of classes), got {k!r}")
    if n * k < k_total:
        raise DataError(
            f"{n} sites x {k} classes per site cannot cover all {k_total} classes; "
            f"use at least {math.ceil(k_total / n)} classes per site"
        )
    # Walk a shuffled class order in windows of k: consecutive sites get
    # disjoint windows until the order wraps, so every class is covered and
    # each class has floor/ceil(n*k/K) holders.
    order = [labels[i] for i in rng.permutation(k_total)]
    holders: dict[int, list[int]] = {label: [] for label in labels}
    for site in range(n):
        for j in range(k):
            holders[order[(site * k + j) % k_total]].append(site)

    sites_train: list[list[Record]] = [[] for _ in range(n)]
    sites_test: list[list[Record]] = [[] for _ in range(n)]
    train_groups = group_by_label(train)
    test_groups = group_by_label(test)
    for idx, label in enumerate(labels):
        owners = sorted(set(holders[label]))
        start = idx % len(owners)  # rotate who receives the remainder
        got = _deal_among(train_groups[label], owners, start, sites_train, rng)
        # Only sites that actually train on the class are tested on it.
        active = [s for s in owners if got[s]]
        _deal_among(test_groups.get(label, []), active, start % len(active), sites_test, rng)

    empty = [f"site-{i + 1}" for i, recs in enumerate(sites_train) if not recs]
    if empty:
        raise DataError(
            f"label-skew left {', '.join(empty)} without training images (too few images per "
            "class for the number of sites); use fewer clients or more classes per site"
        )
    return sites_train, sites_test


def _deal_among(
    items: list[Record],
    owners: list[int],
    start: int,
    sites: list[list[Record]],
    rng: np.random.Generator,
) -> dict[int, int]:
    got = {s: 0 for s in owners}
    for pos, i in enumerate(rng.permutation(len(items))):
        site = owners[(start + pos) % len(owners)]
        sites[site].append(items[i])
        got[site] += 1
    return got


def _apportion(total: int, weights: np.ndarray) -> np.ndarray:
    """Integer counts summing to total, proportional to weights (largest remainder)."""
    weights = np.asarray(weights, dtype=np.float64)
    share = weights / weights.sum() * total
    counts = np.floor(share).astype(np.int64)
    remainder = int(total - counts.sum())
    if remainder > 0:
        # Ties go to the lower site index (stable sort), keeping it deterministic.
        order = np.argsort(-(share - counts), kind="stable")
        counts[order[:remainder]] += 1
    return counts


def _dirichlet(
    train: list[Record],
    test: list[Record],
    n: int,
    beta: float,
    rng: np.random.Generator,
) -> tuple[list[list[Record]], list[list[Record]]]:
    labels = _check_test_labels(train, test, "dirichlet")
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
        raise DataError(
            f"Dirichlet beta must be a positive number, got {beta!r} "
            "(small values such as 0.1 give strong label skew, large ones such as 100 near-uniform)"
        )
    train_groups = group_by_label(train)
    test_groups = group_by_label(test)
    sizes = np.array([len(train_groups[label]) for label in labels])

    counts = np.zeros((len(labels), n), dtype=np.int64)
    for _ in range(_DIRICHLET_REDRAWS):
        props = rng.dirichlet(np.full(n, float(beta)), size=len(labels))
        counts = np.stack([_apportion(int(m), p) for m, p in zip(sizes, props)])
        if (counts.sum(axis=0) > 0).all():
            break
    else:
        # Strong skew with many sites: give each empty site one image from the
        # site (then the class) with the most. partition() has already checked
        # there are at least n training images, so a donor with >= 2 exists.
        for site in range(n):
            if counts[:, site].sum() == 0:
                donor = int(np.argmax(counts.sum(axis=0)))
                cls = int(np.argmax(counts[:, donor]))
                counts[cls, donor] -= 1
                counts[cls, site] += 1

    sites_train: list[list[Record]] = [[] for _ in range(n)]
    sites_test: list[list[Record]] = [[] for _ in range(n)]
    for row, label in enumerate(labels):
        _slice_out(train_groups[label], counts[row], sites_train, rng)
        test_items = test_groups.get(label, [])
        # Test shares follow the realised train shares, so each site's test
        # label distribution matches its training one.
        _slice_out(test_items, _apportion(len(test_items), counts[row]), sites_test, rng)
    return sites_train, sites_test


def _slice_out(items: list[Record], counts: np.ndarray, sites: list[list[Record]], rng: np.random.Generator) -> None:
    order = rng.permutation(len(items))
    pos = 0
    for site, c in enumerate(counts):
        sites[site].extend(items[i] for i in order[pos : pos + int(c)])
        pos += int(c)
