"""The synthetic dataset is deterministic, readable as a dataset and fast."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fedrsclip.data import SYNTH_MAX_CLASSES, DataError, list_dataset, make_synthetic


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_same_seed_same_bytes_different_seed_different(tmp_path):
    a = make_synthetic(tmp_path / "a", classes=4, per_class=3, size=32, seed=5, progress=False)
    b = make_synthetic(tmp_path / "b", classes=4, per_class=3, size=32, seed=5, progress=False)
    c = make_synthetic(tmp_path / "c", classes=4, per_class=3, size=32, seed=6, progress=False)
    fa, fb, fc = _files(a), _files(b), _files(c)
    assert len(fa) == 12 and fa == fb
    assert fa.keys() == fc.keys()
    assert all(fa[k] != fc[k] for k in fa)


def test_layout_readme_and_listing(tmp_path):
    out = make_synthetic(tmp_path / "syn", classes=12, per_class=2, size=24, seed=0, progress=False)
    assert "SYNTHETIC" in (out / "README.txt").read_text()
    listing = list_dataset("synthetic", out, progress=False)
    assert len(listing.classes) == SYNTH_MAX_CLASSES == 12
    assert {"dense residential", "parking lot", "storage tanks", "farmland", "forest", "lake"} <= set(listing.classes)
    assert len(listing.records) == 24 and listing.skipped == []
    im = Image.open(out / listing.records[0][0])
    assert im.mode == "RGB" and im.size == (24, 24)


def test_images_vary_within_a_class_and_differ_between_classes(tmp_path):
    out = make_synthetic(tmp_path / "syn", classes=10, per_class=4, size=32, seed=0, progress=False)
    means = {}
    for d in sorted(p for p in out.iterdir() if p.is_dir()):
        arrs = [np.asarray(Image.open(f), dtype=np.float64) for f in sorted(d.glob("*.png"))]
        assert all(not np.array_equal(arrs[0], x) for x in arrs[1:])
        means[d.name] = np.mean([x.mean(axis=(0, 1)) for x in arrs], axis=0)
    # Classes have different colour statistics (e.g. forest darker than desert).
    assert means["forest"].sum() < means["desert"].sum()
    assert means["lake"][2] > means["farmland"][2] - 40


def test_regenerating_replaces_an_earlier_synthetic_dataset(tmp_path):
    out = make_synthetic(tmp_path / "syn", classes=3, per_class=5, size=16, progress=False)
    make_synthetic(out, classes=2, per_class=2, size=16, progress=False)
    assert len(list(out.rglob("*.png"))) == 4


def test_regenerating_keeps_a_file_it_did_not_write(tmp_path):
    """Only its own images are replaced: a user's file in one of its class folders stops it, and is kept."""
    out = make_synthetic(tmp_path / "syn", classes=2, per_class=2, size=16, progress=False)
    classes = sorted(p.name for p in out.iterdir() if p.is_dir())
    mine = out / classes[0] / "my_labelled_scene.png"
    mine.write_bytes(b"precious")
    with pytest.raises(DataError, match=f"{mine} was not written by fedrsclip data synth.*nothing was written"):
        make_synthetic(out, classes=2, per_class=3, size=16, progress=False)
    assert mine.read_bytes() == b"precious" and len(list(out.rglob("*_0001.png"))) == 2


def test_refuses_a_foreign_non_empty_folder_and_bad_arguments(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(DataError, match="not an empty folder"):
        make_synthetic(foreign, progress=False)
    assert (foreign / "thesis.tex").read_text() == "precious"
    with pytest.raises(DataError, match="from 2 to 12"):
        make_synthetic(tmp_path / "x", classes=13, progress=False)
    with pytest.raises(DataError, match="size"):
        make_synthetic(tmp_path / "y", size=4, progress=False)


def test_default_size_is_fast(tmp_path):
    start = time.perf_counter()
    make_synthetic(tmp_path / "fast", classes=10, per_class=40, size=64, seed=0, progress=False)
    assert len(list((tmp_path / "fast").rglob("*.png"))) == 400
    assert time.perf_counter() - start < 20  # about 1 s on a laptop; generous for slow CI
