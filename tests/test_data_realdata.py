"""The real UC Merced sample (../shared/data/ucmerced-sample), when present."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedrsclip.data import build_manifest, list_dataset, load_rgb

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared/data/ucmerced-sample"

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not SAMPLE.is_dir(), reason=f"real UC Merced sample not found at {SAMPLE}"),
]


def test_ucmerced_sample_lists_and_loads():
    listing = list_dataset("ucmerced", SAMPLE, progress=False)
    assert len(listing.classes) == 21
    assert "dense residential" in listing.classes and "mobile home park" in listing.classes
    assert len(listing.records) == 210 and listing.skipped == []
    assert listing.class_counts() == [10] * 21
    sizes = set()
    for rel, _ in listing.records:
        im = load_rgb(listing.root / rel)
        assert im.mode == "RGB"
        sizes.add(im.size)
    assert (256, 256) in sizes and len(sizes) > 1  # some are not 256x256
    m = build_manifest(listing, 5, "uniform", seed=0)
    assert sum(len(s["train"]) for s in m["sites"].values()) == 105
