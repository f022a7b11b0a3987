"""The core package on real UC Merced images (skipped when ../shared/data/ucmerced-sample is absent)."""

import pytest

from conftest import requires_real_data
from helpers import REAL_DATA, tiny_config

pytestmark = [pytest.mark.realdata, requires_real_data]


def test_federation_on_real_images(tmp_path):
    from fedrsclip.data.manifest import build_manifest
    from fedrsclip.data.readers import list_dataset
    from fedrsclip.inprocess import run_inprocess

    listing = list_dataset("ucmerced", REAL_DATA, progress=False)
    assert len(listing.classes) == 21 and "dense residential" in listing.classes
    manifest = build_manifest(listing, 2, "uniform", 0)
    cfg = tiny_config("train.rounds=2", "train.lr=0.05", cache_dir=tmp_path / "cache")
    history = run_inprocess(cfg, manifest, progress=False)
    last = history["rounds"][-1]
    assert last["global"]["samples"] == 105  # 21 classes x 5 test images, odd-size TIFFs included
    assert all(0 <= s["accuracy"] <= 100 for s in last["sites"].values())
