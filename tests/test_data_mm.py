"""BigEarthNet-MM pairing, multi-modal manifests and the synthetic S2/S1 generator (fedrsclip.data)."""

from __future__ import annotations

import json
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from fedrsclip.data import DataError, list_dataset, load_rgb
from fedrsclip.data.bigearthnet import PARTNER_KEY, label_file
from fedrsclip.data.composite import image_settings
from fedrsclip.data.manifest import (
    centralized,
    load_manifest,
    site_counts_table,
    site_split,
    validate_manifest,
    write_manifest,
)
from fedrsclip.data.multimodal import (
    build_mm_manifest,
    paired_split,
    parse_site_modalities,
    site_modalities,
)
from fedrsclip.data.synth_mm import make_synthetic_mm

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared/data/bigearthnet-sample"
requires_sample = pytest.mark.skipif(not SAMPLE.is_dir(), reason=f"real BigEarthNet sample not found at {SAMPLE}")


@pytest.fixture(scope="module")
def synth_mm(tmp_path_factory) -> Path:
    return make_synthetic_mm(tmp_path_factory.mktemp("mm") / "data", scenes=36, size=48, seed=0, progress=False)


def _copy_sample(tmp_path: Path) -> Path:
    root = tmp_path / "ben"
    shutil.copytree(SAMPLE, root, ignore=shutil.ignore_patterns("README.md"))
    return root


def _edit_metadata(folder: Path, **changes) -> None:
    meta = json.loads(label_file(folder).read_text())
    meta.update(changes)
    label_file(folder).write_text(json.dumps(meta))


# ---- the real sample ------------------------------------------------------------------------------------------
@requires_sample
def test_real_sample_pairs_s1_with_the_s2_patch_its_metadata_names():
    listing = list_dataset("bigearthnet-mm", SAMPLE, progress=False)
    assert listing.modality == "s2" and len(listing.records) == 3
    s2_alone = list_dataset("bigearthnet-s2", SAMPLE, progress=False).label_sets
    for scene, partners in listing.partners.items():
        s1_meta = json.loads(label_file(SAMPLE / partners["s1"]).read_text())
        assert scene == f"S2/{s1_meta[PARTNER_KEY]}"
        assert listing.label_sets[scene] == s2_alone[scene.split("/", 1)[1]]  # multi-label kept
    assert any(len(labels) > 1 for labels in listing.label_sets.values())
    # The 3 S1 patches of another acquisition name S2 patches that are not in the sample.
    assert [r for _, r in listing.skipped] == [r for _, r in listing.skipped if r.startswith("no partner")]
    assert len(listing.skipped) == 3


@requires_sample
def test_real_sample_manifest_gives_a_site_both_modalities_paired(tmp_path):
    listing = list_dataset("bigearthnet-mm", SAMPLE, progress=False)
    manifest = build_mm_manifest(listing, 1, "s2+s1", "uniform", seed=0, train_fraction=0.67)
    path = write_manifest(manifest, tmp_path / "mm.json")
    loaded = load_manifest(path)
    assert site_modalities(loaded, "site-1") == ("s2", "s1")
    pairs = paired_split(loaded, "site-1", "train", "s1")
    assert pairs and all(a.parent.name == "S2" and b.parent.name == "S1" for a, b in pairs)
    for s2, s1 in pairs:
        assert json.loads(label_file(s1).read_text())[PARTNER_KEY] == s2.name


@requires_sample
def test_unpaired_and_inconsistent_patches_are_skipped_with_their_reason(tmp_path):
    root = _copy_sample(tmp_path)
    s1 = sorted((root / "S1").iterdir())
    pairs = [p for p in s1 if "20170617" in p.name or "20171221" in p.name]
    _edit_metadata(pairs[0], labels=["Sea and ocean"])  # disagrees with its S2 partner
    meta = json.loads(label_file(pairs[1]).read_text())
    del meta[PARTNER_KEY]
    label_file(pairs[1]).write_text(json.dumps(meta))
    twin = root / "S1" / "S1B_TWIN"  # a second S1 patch naming an S2 patch already paired
    shutil.copytree(pairs[2], twin)
    for f in twin.iterdir():
        f.rename(twin / f.name.replace(pairs[2].name, "S1B_TWIN"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        listing = list_dataset("bigearthnet-mm", root, progress=False)
    reasons = {path: reason for path, reason in listing.skipped}
    assert reasons[f"S1/{pairs[0].name}"].startswith("labels differ")
    assert reasons[f"S1/{pairs[1].name}"].startswith("no partner") and PARTNER_KEY in reasons[f"S1/{pairs[1].name}"]
    assert "already paired" in reasons["S1/S1B_TWIN"]
    assert len(listing.records) == 1
    shutil.rmtree(root / "S1")
    with pytest.raises(DataError, match="no S1 folder"):
        list_dataset("bigearthnet-mm", root, progress=False)


# ---- multi-modal manifests ----------------------------------------------------------------------------------------
def test_site_modalities_spec_repeats_and_refuses_unknown_modalities():
    assert parse_site_modalities("s2,s1", 5, ["s2", "s1"]) == [("s2",), ("s1",), ("s2",), ("s1",), ("s2",)]
    assert parse_site_modalities(["s1+s2"], 2, ["s2", "s1"]) == [("s1", "s2")] * 2
    with pytest.raises(DataError, match="rgb"):
        parse_site_modalities("s2,rgb", 2, ["s2", "s1"])
    with pytest.raises(DataError, match="twice"):
        parse_site_modalities("s2+s2", 1, ["s2", "s1"])
    with pytest.raises(DataError, match="has an empty item"):
        parse_site_modalities("s2,,s1", 2, ["s2", "s1"])


def test_manifest_gives_each_site_its_modalities_with_the_pairing_kept(synth_mm, tmp_path):
    listing = list_dataset("bigearthnet-mm", synth_mm, progress=False)
    manifest = build_mm_manifest(listing, 3, "s2,s1,s2+s1", "uniform", seed=0)
    loaded = load_manifest(write_manifest(manifest, tmp_path / "mm.json"))
    assert loaded["modality"] == "multi" and loaded["modalities"] == ["s2", "s1"] and loaded["multi_label"]
    assert [site_modalities(loaded, s) for s in loaded["sites"]] == [("s2",), ("s1",), ("s2", "s1")]
    s1_site = site_split(loaded, "site-2", "train", multi_label=True)
    assert all(p.parent.name == "S1" for p, _ in s1_site)
    # Every scene appears once across sites; the s1 site's labels are its scenes' labels.
    scenes = {s: listing.label_sets[s] for s in listing.partners}
    by_s1 = {v["s1"]: s for s, v in listing.partners.items()}
    assert all(list(labels) == scenes[by_s1[f"S1/{p.name}"]] for p, labels in s1_site)
    both = paired_split(loaded, "site-3", "test", "s1")
    assert both and all(listing.partners[f"S2/{a.name}"]["s1"] == f"S1/{b.name}" for a, b in both)
    assert "site-3 (s2+s1)" in site_counts_table(loaded)
    with pytest.raises(DataError, match="holds no s1 patches"):
        paired_split(loaded, "site-1", "train", "s1")
    with pytest.raises(DataError, match="multi-label"):
        site_split(loaded, "site-1", "train")  # today's single-label sites refuse it
    with pytest.raises(DataError, match="multi-modal"):
        centralized(loaded)


def test_broken_multi_modal_manifests_are_refused(synth_mm):
    listing = list_dataset("bigearthnet-mm", synth_mm, progress=False)
    manifest = build_mm_manifest(listing, 2, "s1,s2+s1", "uniform", seed=0)
    bad = json.loads(json.dumps(manifest))
    del bad["sites"]["site-1"]["modality"]
    with pytest.raises(DataError, match="site-1.*'modality'"):
        validate_manifest(bad)
    bad = json.loads(json.dumps(manifest))
    bad["sites"]["site-2"]["paired"]["s1"]["train"].pop()
    with pytest.raises(DataError, match="one path per train record"):
        validate_manifest(bad)
    bad = json.loads(json.dumps(manifest))
    bad["modality"] = "s2"
    with pytest.raises(DataError, match="'multi'"):
        validate_manifest(bad)
    single = list_dataset("bigearthnet-s2", synth_mm / "S2", progress=False)
    with pytest.raises(DataError, match="no paired modalities"):
        build_mm_manifest(single, 2, "s2", "uniform", seed=0)


# ---- the synthetic generator ----------------------------------------------------------------------------------
def test_synthetic_scenes_are_multi_label_paired_and_read_by_the_bigearthnet_path(synth_mm):
    listing = list_dataset("bigearthnet-mm", synth_mm, progress=False)  # verify: every patch decoded
    assert len(listing.records) == 36 and listing.skipped == []
    sizes = [len(labels) for labels in listing.label_sets.values()]
    assert max(sizes) >= 2 and min(sizes) >= 1 and np.mean(sizes) > 1.3  # classes co-occur
    assert len({c for labels in listing.label_sets.values() for c in labels}) >= 5
    bands = sorted(p.name.rsplit("_", 1)[1] for p in (synth_mm / "S2" / "SYNTH_S2_00000").glob("*.tif"))
    assert len(bands) == 12
    import rasterio

    with rasterio.open(synth_mm / "S2" / "SYNTH_S2_00000" / "SYNTH_S2_00000_B11.tif") as ds:
        assert (ds.width, ds.dtypes[0]) == (24, "uint16")  # a 20 m band: half the 10 m size
    with rasterio.open(synth_mm / "S1" / "SYNTH_S1_00000" / "SYNTH_S1_00000_VV.tif") as ds:
        assert ds.dtypes[0] == "float32" and -35 < float(ds.read(1).mean()) < 5  # backscatter in dB
    assert "SYNTHETIC" in (synth_mm / "README.txt").read_text()


def _smoothness(image: np.ndarray) -> float:
    grey = image.astype(np.float64).mean(-1)
    return float(np.corrcoef(grey[:, :-1].ravel(), grey[:, 1:].ravel())[0, 1])


@pytest.mark.parametrize("modality,minimum", [("s2", 0.8), ("s1", 0.6)])
def test_synthetic_previews_show_scenes_with_the_default_composites(synth_mm, modality, minimum):
    settings = image_settings(modality)
    for i in range(6):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no dynamic-range warning
            image = np.asarray(load_rgb(synth_mm / modality.upper() / f"SYNTH_{modality.upper()}_{i:05d}", settings))
        assert image.shape == (48, 48, 3) and 15 < image.mean() < 200
        assert _smoothness(image) > minimum  # scenes, not noise (the real sample: S2 0.89-0.95, S1 0.79-0.94)


def test_generator_is_seeded_fast_and_never_overwrites_foreign_folders(tmp_path, synth_mm):
    start = time.perf_counter()
    again = make_synthetic_mm(tmp_path / "again", scenes=36, size=48, seed=0, progress=False)
    assert time.perf_counter() - start < 30  # measured ~1 s on 2 shared cores
    for rel in ("S2/SYNTH_S2_00007/SYNTH_S2_00007_B04.tif", "S1/SYNTH_S1_00007/SYNTH_S1_00007_VH.tif"):
        assert (again / rel).read_bytes() == (synth_mm / rel).read_bytes()
    other = make_synthetic_mm(tmp_path / "again", scenes=4, size=48, seed=1, progress=False)  # its own: replaced
    assert len(list((other / "S2").iterdir())) == 4
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="nothing was written"):
        make_synthetic_mm(foreign, scenes=2, size=48, progress=False)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    mine = other / "S1" / "SYNTH_S1_00001" / "my_calibration.tif"  # a user's file inside its own dataset: kept
    mine.write_bytes(b"keep me")
    with pytest.raises(DataError, match="my_calibration.tif was not written by fedrsclip data synth-mm"):
        make_synthetic_mm(other, scenes=2, size=48, progress=False)
    assert mine.read_bytes() == b"keep me" and len(list((other / "S2").iterdir())) == 4
    with pytest.raises(DataError, match="multiple of 6"):
        make_synthetic_mm(tmp_path / "odd", scenes=2, size=50, progress=False)


# ---- the data commands --------------------------------------------------------------------------------------
def test_synth_mm_partition_show_and_preview_commands(tmp_path, capsys):
    from fedrsclip.data.cli import main

    out = tmp_path / "mm"
    assert main(["data", "synth-mm", "--out", str(out), "--scenes", "12", "--size", "24", "--quiet"]) == 0
    manifest = tmp_path / "m.json"
    assert (
        main(
            [
                "data",
                "partition",
                "--dataset",
                "bigearthnet-mm",
                "--root",
                str(out),
                "--sites",
                "2",
                "--modalities",
                "s2,s1",
                "--out",
                str(manifest),
                "--quiet",
            ]
        )
        == 0
    )
    assert "site-2 (s1)" in capsys.readouterr().out
    loaded = load_manifest(manifest)
    assert [site_modalities(loaded, s) for s in loaded["sites"]] == [("s2",), ("s1",)]
    preview = tmp_path / "p.png"
    assert (
        main(
            [
                "data",
                "preview",
                str(out / "S1" / "SYNTH_S1_00000"),
                str(out / "S2" / "SYNTH_S2_00000"),
                "--manifest",
                str(manifest),
                "--out",
                str(preview),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "modality s1, composite VV,VH,VV-VH" in text and "modality s2, composite B04,B03,B02" in text
    # --modalities belongs to the paired dataset, and the paired dataset needs it
    assert (
        main(
            [
                "data",
                "partition",
                "--dataset",
                "bigearthnet-mm",
                "--root",
                str(out),
                "--sites",
                "2",
                "--out",
                str(tmp_path / "x.json"),
                "--quiet",
            ]
        )
        == 2
    )
    assert "needs --modalities" in capsys.readouterr().err
    assert (
        main(
            [
                "data",
                "partition",
                "--dataset",
                "bigearthnet-s2",
                "--root",
                str(out),
                "--sites",
                "2",
                "--modalities",
                "s2",
                "--out",
                str(tmp_path / "y.json"),
                "--quiet",
            ]
        )
        == 2
    )
    assert "applies only to --dataset bigearthnet-mm" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "y.json").exists()
