"""What a fresh user meets with multi-modal inputs (issue: mmfix): partitions that leave a site nothing to measure,
runs on them, the one --modalities list of every command, and data behind symlinks.

The real BigEarthNet sample (../shared/data/bigearthnet-sample: 3 S2 + 6 S1 patches, 3 complete pairs) where the
finding was made on it (skipped when absent); synthetic S2/S1 scenes and the tiny RANDOM-weight CLIP otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from fedrsclip.cli import main
from fedrsclip.config import ConfigError
from fedrsclip.data import list_dataset
from fedrsclip.data.errors import DataError
from fedrsclip.data.manifest import load_manifest
from fedrsclip.data.modalities import parse_site_modalities
from fedrsclip.data.multimodal import build_mm_manifest
from fedrsclip.data.partition import NoTestImagesWarning, partition
from fedrsclip.data.synth import make_synthetic
from fedrsclip.data.synth_mm import make_synthetic_mm
from fedrsclip.features import FeatureSet
from fedrsclip.inprocess import run_inprocess
from fedrsclip.tools.reporting.run_table import format_table
from fedrsclip.whitening import fit_whitening
from helpers import tiny_config

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared/data/bigearthnet-sample"
needs_sample = pytest.mark.skipif(not SAMPLE.is_dir(), reason=f"real BigEarthNet sample not found at {SAMPLE}")


@pytest.fixture(scope="module")
def mm_root(tmp_path_factory) -> Path:
    return make_synthetic_mm(tmp_path_factory.mktemp("mm") / "data", scenes=12, size=48, seed=0, progress=False)


@pytest.fixture(scope="module")
def sample_manifest(tmp_path_factory) -> Path:
    """The user's manifest: the real sample over 3 sites holding s2, s1 and s2+s1 (1 training scene each)."""
    out = tmp_path_factory.mktemp("ben") / "m.json"
    argv = ["data", "partition", "--dataset", "bigearthnet-mm", "--root", str(SAMPLE), "--sites", "3"]
    assert main([*argv, "--modalities", "s2,s1,s2+s1", "--out", str(out), "--quiet"]) == 0
    return out


# ---- 1. a partition that leaves sites nothing to measure -----------------------------------------------------------
@needs_sample
def test_the_sample_partition_warns_naming_every_site_without_test_images(tmp_path, capsys):
    argv = ["data", "partition", "--dataset", "bigearthnet-mm", "--root", str(SAMPLE), "--modalities", "s2,s1,s2+s1"]
    assert main([*argv, "--sites", "3", "--out", str(tmp_path / "m.json"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "warning: 3 of 3 sites get no test images (site-1, site-2, site-3)" in err
    assert "evaluation cells will be empty" in err and "fewer sites (--sites)" in err and "--train-fraction" in err
    # a site without training images can never train: refused, naming it
    assert main([*argv, "--sites", "4", "--out", str(tmp_path / "m4.json"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "only 3 training images for 4 sites: 1 site (site-4) would get none" in err
    assert not (tmp_path / "m4.json").exists()


def test_every_partition_path_warns_of_sites_without_test_images(mm_root, tmp_path):
    """The same check for single-label partitions (every scheme), the synthetic multi-modal manifest, and a split
    that has no test image at all (before: warned only when some test images existed)."""
    train = [(f"c{label}/{i}.png", label) for label in range(2) for i in range(3)]
    with pytest.warns(NoTestImagesWarning, match=r"3 of 3 sites get no test images \(site-1, site-2, site-3\)"):
        partition(train, [], 3, "uniform", 0)
    for scheme in ("uniform", "label-skew", "dirichlet"):
        with pytest.warns(NoTestImagesWarning, match=r"1 of 3 sites get no test images \(site-\d\)"):
            partition(train, [("c0/t.png", 0), ("c1/t.png", 1)], 3, scheme, 0)
    listing = list_dataset("bigearthnet-mm", mm_root, progress=False)
    with pytest.warns(NoTestImagesWarning, match="of 6 sites get no test images"):
        build_mm_manifest(listing, 6, "s2,s1", "uniform", 0)


# ---- 2./3. a run on it ---------------------------------------------------------------------------------------------
@needs_sample
def test_a_run_without_test_images_says_so_and_why(sample_manifest, tmp_path):
    """With FW on, every site stops with a message naming multimodal.whitening and what to do; with FW off, the
    run finishes and the table says 'none' (no test images), not a failed task, under a micro F1 header, and gives
    the true reason MIM never acted (site-3 holds s2+s1 but has 1 training scene)."""
    cache = tmp_path / "cache"
    results = run_inprocess(tiny_config("train.rounds=1", cache_dir=cache), load_manifest(sample_manifest))
    assert {e["site"] for e in results["errors"]} == {"site-1", "site-2", "site-3"}
    for error in results["errors"]:
        assert "multimodal.whitening" in error["error"] and "multimodal.whitening=false" in error["error"]
    cfg = tiny_config("train.rounds=2", "multimodal.whitening=false", cache_dir=cache)
    results = run_inprocess(cfg, load_manifest(sample_manifest), state_dir=tmp_path / "state")
    assert results["status"] == "finished" and results["errors"] == []
    table = format_table(results)
    assert "micro F1 (%, multi-label scenes) of the global model" in table and "accuracy (%)" not in table
    rows = [line.split() for line in table.splitlines() if line.split()[:1] in (["init"], ["1"], ["2"])]
    assert [row[1:4] for row in rows] == [["none"] * 3] * 3
    assert "none: the site has no test images" in table and "task failed" not in table
    assert "no site holds paired modalities" not in table
    assert "every site has fewer than 2 training scenes (site-1, site-2, site-3)" in table
    assert "sent per site and round: 9,216 to 17,408 bytes up (by site)" in table


def test_whitening_with_one_training_image_names_the_setting():
    one = FeatureSet(torch.zeros(1, 8), torch.zeros(1, 4, 8), torch.zeros(1, dtype=torch.long), ["a.png"])
    with pytest.raises(ValueError, match=r"multimodal.whitening\) needs at least 2 training images.*has 1: set "):
        fit_whitening(one)


def _status(argv: list[str]) -> int:
    """The CLI's exit status, argparse's refusals (SystemExit) included."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


# ---- 4. the one --modalities list ----------------------------------------------------------------------------------
BAD = {
    "": "--modalities (multimodal.modalities) is empty",
    ",": "--modalities (multimodal.modalities) is empty",
    "s2,,s1": "has an empty item",
    "s2,s1,s2+s1,s1": "has 4 items for 3 sites",
    "rgb": "'rgb' names rgb, which this data does not have (it has s2, s1)",
}


@pytest.mark.parametrize("value", list(BAD))
def test_demo_and_job_refuse_a_bad_modalities_list_naming_the_option(value, tmp_path, capsys):
    """Before: '' ran the single-label demo, ',' blamed an override the user never wrote, a 4th item for 3 sites
    was ignored, rgb failed at every site ~20 s later."""
    out = tmp_path / "job"
    assert _status(["job", "--out", str(out), "--sites", "3", "--modalities", value]) == 2
    assert BAD[value] in capsys.readouterr().err and not out.exists()
    ws = tmp_path / "ws"
    assert _status(["demo", "--workspace", str(ws), "--sites", "3", "--modalities", value]) == 2
    err = capsys.readouterr().err
    assert BAD[value] in err and "override" not in err and not ws.exists()


@pytest.mark.parametrize("value", ["", ",", "s2,s1,s2+s1,s1,s2", "s2+s9"])
def test_data_partition_and_experiment_refuse_a_bad_modalities_list(value, mm_root, tmp_path, capsys):
    argv = ["data", "partition", "--dataset", "bigearthnet-mm", "--root", str(mm_root), "--sites", "3"]
    assert _status([*argv, "--modalities", value, "--out", str(tmp_path / "m.json"), "--quiet"]) == 2
    assert "--modalities (multimodal.modalities)" in capsys.readouterr().err
    assert not (tmp_path / "m.json").exists()
    out = tmp_path / "grid"
    assert _status(["experiment", "--out", str(out), "--sites", "3", "--modalities", value]) == 2
    assert "--modalities (multimodal.modalities)" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_the_modalities_rules_live_in_one_parser():
    assert parse_site_modalities("S2, s1+S2") == [("s2",), ("s1", "s2")]
    assert parse_site_modalities("s2,s1", 3) == [("s2",), ("s1",), ("s2",)]
    with pytest.raises(DataError, match="has 3 items for 2 sites"):
        parse_site_modalities("s2,s1,s2", 2)
    # the settings go through it too: synthetic-mm sites hold s2/s1, at most one item per site
    with pytest.raises(ConfigError, match="'rgb' names rgb, which this data does not have"):
        tiny_config("data.source=synthetic-mm", "data.synthetic_size=48", "multimodal.modalities=s2,rgb")
    with pytest.raises(ConfigError, match="has 3 items for 2 sites"):
        tiny_config(
            "data.source=synthetic-mm",
            "data.synthetic_size=48",
            "data.synthetic_sites=2",
            "multimodal.modalities=s2,s1,s2+s1",
        )
    with pytest.raises(ConfigError, match="has an empty item"):
        tiny_config("multimodal.modalities='s2,,s1'")


# ---- 6. data behind symlinks ---------------------------------------------------------------------------------------
def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, link)


def test_nothing_found_behind_symlinks_says_how_many_were_skipped_and_why(mm_root, tmp_path):
    """The README's rule (symlinks leading out of the data root are skipped) named where nothing is found: patch
    folders as links, an S2 folder as a link, class folders as links, images as links."""
    patches = tmp_path / "patches"
    for patch in sorted((mm_root / "S2").iterdir()) + sorted((mm_root / "S1").iterdir()):
        _link(patch, patches / patch.parent.name / patch.name)
    whole = tmp_path / "whole"
    _link(mm_root / "S2", whole / "S2")
    for root in (patches, whole):
        with pytest.raises(DataError, match=r"no BigEarthNet patches found under .*; 12 entries there were skipped "):
            list_dataset("bigearthnet-s2", root, progress=False)
    with pytest.raises(DataError, match="resolve outside the data root .*give --root the folder the links lead to"):
        list_dataset("bigearthnet-mm", patches, progress=False)
    images = make_synthetic(tmp_path / "rgb", classes=2, per_class=3, size=32, seed=0, progress=False)
    folders, files = tmp_path / "folders", tmp_path / "files"
    for folder in sorted(p for p in images.iterdir() if p.is_dir()):
        _link(folder, folders / folder.name)
        for image in sorted(folder.iterdir()):
            _link(image, files / folder.name / image.name)
    with pytest.raises(DataError, match=r"no class folders with images .*; 2 entries there were skipped because"):
        list_dataset("imagefolder", folders, progress=False)
    with pytest.raises(DataError, match=r"no class folders with images .*; 6 entries there were skipped because"):
        list_dataset("imagefolder", files, progress=False)
