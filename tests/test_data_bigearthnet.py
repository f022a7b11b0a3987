"""The real BigEarthNet sample (../shared/data/bigearthnet-sample): partition, preview, features, bad patches."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from fedrsclip.data import DataError, build_manifest, list_dataset, load_rgb, site_counts_table
from fedrsclip.data.bigearthnet import CLASSES_19, NOMENCLATURE_19
from fedrsclip.data.composite import image_settings
from fedrsclip.data.manifest import site_split

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared/data/bigearthnet-sample"

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not SAMPLE.is_dir(), reason=f"real BigEarthNet sample not found at {SAMPLE}"),
]


def test_nomenclature_has_19_classes_from_distinct_corine_names():
    from fedrsclip.data.bigearthnet import DROPPED_CORINE

    olds = [o for group in NOMENCLATURE_19.values() for o in group]
    # BigEarthNet's 43 CORINE classes: 32 merged into the 19, 11 dropped (glaciers are listed but never occur)
    assert len(CLASSES_19) == 19 and len(olds) == len(set(olds)) == 32
    assert len(DROPPED_CORINE - {"Glaciers and perpetual snow"}) == 11 and not DROPPED_CORINE & set(olds)


@pytest.mark.parametrize("dataset,patches", [("bigearthnet-s2", 3), ("bigearthnet-s1", 6)])
def test_sample_partitions_multi_label(dataset, patches):
    listing = list_dataset(dataset, SAMPLE, progress=False)
    assert len(listing.records) == patches and listing.skipped == []
    assert listing.classes == list(CLASSES_19) and listing.modality == dataset[-2:]
    manifest = build_manifest(listing, 2, "uniform", seed=0)
    assert manifest["multi_label"] is True and manifest["modality"] == dataset[-2:]
    labels = {Path(p).name: lab for site in manifest["sites"].values() for p, lab in site["train"] + site["test"]}
    pasture = next(k for k in labels if k.endswith("_4_55"))
    assert labels[pasture] == [CLASSES_19.index("Pastures")]
    mixed = next(k for k in labels if k.endswith("_56_35"))  # includes "Transitional woodland/shrub"
    assert CLASSES_19.index("Transitional woodland, shrub") in labels[mixed]
    assert "site-1" in site_counts_table(manifest)


def _smoothness(image: np.ndarray) -> float:
    """Correlation of horizontally neighbouring pixels (grey): near 1 for scenes, near 0 for noise."""
    grey = image.astype(np.float64).mean(-1)
    return float(np.corrcoef(grey[:, :-1].ravel(), grey[:, 1:].ravel())[0, 1])


@pytest.mark.parametrize("modality", ["s2", "s1"])
def test_previews_show_land_not_noise(modality):
    settings = image_settings(modality)
    for patch in sorted((SAMPLE / modality.upper()).iterdir()):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no dynamic-range warning with the defaults
            image = np.asarray(load_rgb(patch, settings))
        assert image.shape == (120, 120, 3)
        assert 20 < image.mean() < 200 and image.std() > 8
        # Measured: S2 0.89-0.95, S1 (speckle) 0.79-0.94; noise scores about 0.
        assert _smoothness(image) > (0.8 if modality == "s2" else 0.6), patch.name
    noise = np.random.default_rng(0).integers(0, 255, (120, 120, 3))
    assert abs(_smoothness(noise)) < 0.05


def test_features_extract_through_the_same_path(tiny_backbone, tmp_path):
    from fedrsclip.features import cached_features

    listing = list_dataset("bigearthnet-s2", SAMPLE, progress=False)
    manifest = build_manifest(listing, 1, "uniform", seed=0)
    items = site_split(manifest, "site-1", "train", multi_label=True)
    settings = image_settings(dataset_modality=manifest["modality"])
    fs = cached_features(
        tiny_backbone, items, tmp_path, "train", progress=False, image=settings, num_classes=len(manifest["classes"])
    )
    assert len(fs) == len(items) and fs.labels.shape == (len(items), 19)
    assert fs.labels.sum(1).tolist() == [float(len(lab)) for _, lab in items]
    assert torch.isfinite(fs.global_feats.float()).all()
    # a different composite is a different cache entry (the key covers the image settings)
    other = cached_features(
        tiny_backbone,
        items,
        tmp_path,
        "train",
        progress=False,
        image=image_settings("s2", "false-color"),
        num_classes=19,
    )
    assert not torch.equal(other.global_feats, fs.global_feats)


def test_single_label_path_refuses_a_multi_label_manifest(tmp_path):
    from conftest import tiny_config
    from fedrsclip.algorithms import get_algorithm
    from fedrsclip.site import PromptSite as Site
    from fedrsclip.site import label_kind

    manifest = build_manifest(list_dataset("bigearthnet-s1", SAMPLE, progress=False), 2, "uniform", seed=0)
    with pytest.raises(DataError, match="multi-label.*single-label"):
        site_split(manifest, "site-1", "train")
    # the full-model baseline refuses it naming the algorithms that train label sets; a prompt site reads label sets
    with pytest.raises(DataError, match="is multi-label .* algorithm fedavg-full trains single-label data only"):
        label_kind(tiny_config("algorithm=fedavg-full"), manifest, get_algorithm("fedavg-full"), "site-1")
    site = Site(tiny_config(cache_dir=tmp_path), "site-1", manifest, progress=False)
    assert site.multi_label and site.train_set.labels.ndim == 2


def test_bad_patches_are_skipped_and_counted_by_reason(tmp_path):
    root = tmp_path / "S2"
    shutil.copytree(SAMPLE / "S2", root)
    patches = sorted(root.iterdir())
    (patches[0] / f"{patches[0].name}_B04.tif").unlink()  # a band the true-colour composite needs
    label_file = patches[1] / f"{patches[1].name}_labels_metadata.json"
    meta = json.loads(label_file.read_text())
    label_file.write_text(json.dumps({**meta, "labels": ["Airports", "Port areas"]}))  # none in the 19 classes
    with pytest.warns(UserWarning, match="B04"):
        listing = list_dataset("bigearthnet-s2", root, progress=False)
    assert len(listing.records) == 1
    reasons = dict(listing.skipped)
    assert reasons[patches[0].name].startswith("missing band: band B04 missing")
    assert reasons[patches[1].name].startswith("no usable label")
    table = site_counts_table(build_manifest(listing, 1, "uniform", seed=0))
    assert "skipped files: 2 (" in table and "missing band 1" in table and "no usable label 1" in table
    # a composite without B04 can use that patch: the check follows the composite
    listing = list_dataset("bigearthnet-s2", root, progress=False, image=image_settings("s2", "B08,B03,B02"))
    assert patches[0].name in {p for p, _ in listing.records}
