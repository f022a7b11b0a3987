"""Shared fixtures: a small RANDOM-weight CLIP and a synthetic dataset, both built offline."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may download

import pytest

from helpers import REAL_DATA, tiny_config  # noqa: E402,F401  (older tests import them from here)


@pytest.fixture(scope="session")
def tiny_backbone():
    from fedrsclip.backbone import load_backbone

    return load_backbone(tiny_config().model)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    from fedrsclip.data.synth import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("synth"), classes=10, per_class=40, size=64, seed=0, progress=False)


@pytest.fixture(scope="session")
def synth_manifest(synth_root):
    from fedrsclip.data.manifest import build_manifest
    from fedrsclip.data.readers import list_dataset

    return build_manifest(list_dataset("imagefolder", synth_root, progress=False), 3, "uniform", 0)


@pytest.fixture(scope="session")
def feature_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("features")


requires_real_data = pytest.mark.skipif(
    not REAL_DATA.is_dir(), reason=f"real UC Merced sample not found at {REAL_DATA}"
)
