"""Federated partitions: the paper's Table I counts, label-skew and Dirichlet invariants."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from fedrsclip.data import DataError, partition, site_names, split_train_test

# Table I of the FedRSCLIP paper: images per client (train / test) for each
# dataset and number of clients. Copied from the paper.
TABLE_I = {
    # dataset: (total train, total test, {clients: (train per client, test per client)})
    "ucmerced": (1050, 1050, {2: (525, 525), 5: (210, 210), 10: (105, 105), 15: (70, 70), 20: (52, 52), 40: (26, 26)}),
    "optimal31": (930, 930, {2: (465, 465), 5: (186, 186), 10: (93, 93), 15: (62, 62), 20: (46, 46), 40: (23, 23)}),
    "nwpu": (
        6300,
        25200,
        {2: (3150, 12600), 5: (1260, 5040), 10: (630, 2520), 15: (420, 1680), 20: (315, 1260), 40: (158, 630)},
    ),
}
SIZES = {"ucmerced": (21, 100, 0.5), "optimal31": (31, 60, 0.5), "nwpu": (45, 700, 0.2)}


def _records(num_classes: int, per_class: int) -> list[tuple[str, int]]:
    return [(f"c{c:02d}/img{i:04d}.jpg", c) for c in range(num_classes) for i in range(per_class)]


def _check_cover(parts, train, test):
    """Sites' lists are disjoint and together hold exactly the input."""
    all_train = [r for p in parts.values() for r in p["train"]]
    all_test = [r for p in parts.values() for r in p["test"]]
    assert sorted(all_train) == sorted(train)
    assert sorted(all_test) == sorted(test)


@pytest.fixture(scope="module")
def splits():
    out = {}
    for name, (k, n, frac) in SIZES.items():
        out[name] = split_train_test(_records(k, n), frac, seed=0)
    return out


@pytest.mark.parametrize("dataset", sorted(TABLE_I))
def test_uniform_matches_paper_table_i(dataset, splits):
    total_train, total_test, table = TABLE_I[dataset]
    train, test = splits[dataset]
    assert (len(train), len(test)) == (total_train, total_test)
    num_classes = SIZES[dataset][0]
    for n, (paper_train, paper_test) in table.items():
        parts = partition(train, test, n, "uniform", seed=0)
        assert list(parts) == site_names(n)
        for split, total, paper in (("train", total_train, paper_train), ("test", total_test, paper_test)):
            counts = [len(p[split]) for p in parts.values()]
            assert sum(counts) == total
            assert set(counts) <= {total // n, -(-total // n)}, (dataset, n, split, counts)
            # Table I reports total/N rounded half to even (Python's round).
            assert round(total / n) == paper, (dataset, n, split)
            # Each client is close to class-balanced: per class floor or ceil of n_c/N.
            per_class_total = Counter(label for _, label in (train if split == "train" else test))
            for p in parts.values():
                c = Counter(label for _, label in p[split])
                for label in range(num_classes):
                    assert c[label] in {per_class_total[label] // n, -(-per_class_total[label] // n)}
        _check_cover(parts, train, test)


def test_uniform_deterministic_and_seed_dependent(splits):
    train, test = splits["ucmerced"]
    a = partition(train, test, 5, "uniform", seed=1)
    assert a == partition(list(reversed(train)), test, 5, "uniform", seed=1)
    b = partition(train, test, 5, "uniform", seed=2)
    assert a["site-1"]["train"] != b["site-1"]["train"]


def test_single_client_is_centralised(splits):
    train, test = splits["optimal31"]
    for scheme in ("uniform", "label-skew", "dirichlet"):
        parts = partition(train, test, 1, scheme, seed=0)
        assert list(parts) == ["site-1"]
        assert sorted(parts["site-1"]["train"]) == sorted(train)
        assert sorted(parts["site-1"]["test"]) == sorted(test)


@pytest.mark.parametrize("n,k", [(2, None), (5, None), (5, 5), (10, 3), (7, 21), (21, 1)])
def test_label_skew_invariants(splits, n, k):
    train, test = splits["ucmerced"]
    parts = partition(train, test, n, "label-skew", seed=0, classes_per_site=k)
    expected_k = 11 if k is None else k  # default ceil(21 / 2)
    held = {}
    for site, p in parts.items():
        train_classes = {label for _, label in p["train"]}
        test_classes = {label for _, label in p["test"]}
        assert len(train_classes) == expected_k, site
        assert test_classes == train_classes, site
        for label in train_classes:
            held.setdefault(label, []).append(site)
    assert set(held) == set(range(21))  # every class is held by a site
    # A class's images are split evenly among its holders.
    for label, sites in held.items():
        counts = [sum(1 for _, y in parts[s]["train"] if y == label) for s in sites]
        assert max(counts) - min(counts) <= 1
    _check_cover(parts, train, test)
    assert parts == partition(train, test, n, "label-skew", seed=0, classes_per_site=k)


def test_label_skew_errors(splits):
    train, test = splits["ucmerced"]
    with pytest.raises(DataError, match="cannot cover all 21 classes.*at least 5"):
        partition(train, test, 5, "label-skew", seed=0, classes_per_site=4)
    with pytest.raises(DataError, match="from 1 to 21"):
        partition(train, test, 2, "label-skew", seed=0, classes_per_site=22)


@pytest.mark.parametrize("beta,n", [(0.5, 5), (0.1, 10), (100.0, 4), (0.01, 40)])
def test_dirichlet_invariants(splits, beta, n):
    train, test = splits["ucmerced"]
    parts = partition(train, test, n, "dirichlet", seed=0, dirichlet_beta=beta)
    assert list(parts) == site_names(n)
    _check_cover(parts, train, test)
    for site, p in parts.items():
        assert len(p["train"]) >= 1, site
        # Test label distribution follows the train distribution: here both
        # splits have 50 images per class, so counts match within rounding.
        tr = Counter(y for _, y in p["train"])
        te = Counter(y for _, y in p["test"])
        for label in set(tr) | set(te):
            assert abs(tr[label] - te[label]) <= 1, (site, label)
    assert parts == partition(train, test, n, "dirichlet", seed=0, dirichlet_beta=beta)


def test_dirichlet_test_shares_follow_train_shares(splits):
    train, test = splits["nwpu"]  # 140 train / 560 test per class
    parts = partition(train, test, 5, "dirichlet", seed=3, dirichlet_beta=0.3)
    for p in parts.values():
        tr = Counter(y for _, y in p["train"])
        te = Counter(y for _, y in p["test"])
        for label in range(45):
            assert abs(te[label] - 4 * tr[label]) <= 2
    skewed = np.array([len(p["train"]) for p in parts.values()])
    assert skewed.max() > skewed.min()  # it is not uniform


def test_dirichlet_bad_beta(splits):
    train, test = splits["ucmerced"]
    for beta in (0, -1.0, float("nan")):
        with pytest.raises(DataError, match="beta"):
            partition(train, test, 3, "dirichlet", seed=0, dirichlet_beta=beta)


def test_fewer_training_images_than_sites():
    train = [("a/1.png", 0), ("b/1.png", 1), ("b/2.png", 1)]
    with pytest.raises(DataError, match="only 3 training images for 4 sites"):
        partition(train, [], 4, "uniform", seed=0)


def test_unknown_scheme_and_bad_client_count():
    train = [("a/1.png", 0), ("b/1.png", 1)]
    with pytest.raises(DataError, match="unknown partition scheme 'iid'.*uniform.*label-skew.*dirichlet"):
        partition(train, [], 2, "iid", seed=0)
    for n in (0, -3):
        with pytest.raises(DataError, match="clients"):
            partition(train, [], n, "uniform", seed=0)


def test_sites_without_test_images_warn():
    train = [(f"a/{i}.png", 0) for i in range(4)] + [(f"b/{i}.png", 1) for i in range(4)]
    test = [("a/t.png", 0)]
    with pytest.warns(UserWarning, match="no test images"):
        partition(train, test, 4, "uniform", seed=0)
