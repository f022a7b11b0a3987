"""Seeded stratified train/test split."""

from __future__ import annotations

from collections import Counter

import pytest

from fedrsclip.data import DEFAULT_TRAIN_FRACTION, DataError, split_train_test


def _records(num_classes: int, per_class: int) -> list[tuple[str, int]]:
    return [(f"c{c:02d}/img{i:04d}.jpg", c) for c in range(num_classes) for i in range(per_class)]


@pytest.mark.parametrize(
    "dataset,classes,per_class,n_train",
    [("ucmerced", 21, 100, 50), ("optimal31", 31, 60, 30), ("nwpu", 45, 700, 140)],
)
def test_paper_protocol_counts(dataset, classes, per_class, n_train):
    train, test = split_train_test(_records(classes, per_class), DEFAULT_TRAIN_FRACTION[dataset], seed=0)
    assert Counter(label for _, label in train) == {c: n_train for c in range(classes)}
    assert Counter(label for _, label in test) == {c: per_class - n_train for c in range(classes)}
    assert not set(train) & set(test)
    assert sorted(train + test) == sorted(_records(classes, per_class))


def test_deterministic_for_a_seed_and_independent_of_input_order():
    recs = _records(5, 20)
    a = split_train_test(recs, 0.5, seed=3)
    b = split_train_test(list(reversed(recs)), 0.5, seed=3)
    assert a == b
    c = split_train_test(recs, 0.5, seed=4)
    assert a[0] != c[0]
    # Outputs are sorted by (label, path) for readable manifests.
    assert a[0] == sorted(a[0], key=lambda r: (r[1], r[0]))


def test_accepts_json_style_lists():
    recs = [[p, lab] for p, lab in _records(2, 4)]
    train, test = split_train_test(recs, 0.5, seed=0)
    assert all(isinstance(r, tuple) for r in train + test) and len(train) == 4


def test_small_classes_keep_an_image_in_each_split():
    recs = [("a/1.png", 0), ("a/2.png", 0), ("b/1.png", 1), ("c/1.png", 2), ("c/2.png", 2), ("c/3.png", 2)]
    train, test = split_train_test(recs, 0.2, seed=0)
    tr, te = Counter(y for _, y in train), Counter(y for _, y in test)
    assert tr[0] == 1 and te[0] == 1  # round(0.4) = 0 would leave no training image
    assert tr[1] == 1 and te[1] == 0  # a single image goes to train
    assert tr[2] == 1 and te[2] == 2


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5])
def test_bad_fraction(fraction):
    with pytest.raises(DataError, match="train fraction"):
        split_train_test(_records(2, 4), fraction, seed=0)


def test_bad_seed_and_empty():
    with pytest.raises(DataError, match="seed"):
        split_train_test(_records(2, 4), 0.5, seed=-1)
    with pytest.raises(DataError, match="empty"):
        split_train_test([], 0.5, seed=0)
