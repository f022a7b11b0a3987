"""Manifest build / write / load / validation, site_split and the per-site table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from fedrsclip.data import (
    DataError,
    build_manifest,
    list_dataset,
    load_manifest,
    site_counts_table,
    site_split,
    write_manifest,
)

# Table I (per-client train/test counts) for UC Merced, as printed in the paper.
UCM_TABLE_I = {2: 525, 5: 210, 10: 105, 15: 70, 20: 52, 40: 26}


def _folder(base: Path, classes: int, per_class: int, ext: str = ".png") -> Path:
    for c in range(classes):
        d = base / f"class{c:02d}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", (8, 8), (c * 10 % 256, i % 256, 0)).save(d / f"class{c:02d}{i:02d}{ext}")
    return base


@pytest.fixture()
def listing(tmp_path):
    root = _folder(tmp_path / "ds", 3, 6)
    (root / "class00" / "bad.png").write_text("corrupt")
    with pytest.warns(UserWarning):
        return list_dataset("imagefolder", root, progress=False)


def test_uc_merced_sized_folder_reproduces_table_i(tmp_path):
    # 21 classes x 100 tiny TIFFs in the official UCMerced_LandUse/Images layout.
    root = tmp_path / "UCMerced_LandUse"
    _folder(root / "Images", 21, 100, ".tif")
    listing = list_dataset("ucmerced", root, progress=False)
    assert len(listing.records) == 2100 and len(listing.classes) == 21
    for n, paper in UCM_TABLE_I.items():
        m = build_manifest(listing, n, "uniform", seed=0)
        assert m["train_fraction"] == 0.5
        for split in ("train", "test"):
            counts = [len(s[split]) for s in m["sites"].values()]
            assert sum(counts) == 1050
            assert set(counts) <= {1050 // n, -(-1050 // n)}
            assert round(1050 / n) == paper


def test_build_manifest_format(listing):
    m = build_manifest(listing, 2, "uniform", seed=7)
    assert {"dataset", "root", "classes", "seed", "scheme", "sites"} <= set(m)
    assert m["version"] == 1 and m["dataset"] == "imagefolder" and m["seed"] == 7 and m["scheme"] == "uniform"
    assert m["root"] == str(listing.root) and Path(m["root"]).is_absolute()
    assert m["class_folders"] == ["class00", "class01", "class02"]
    assert m["classes"] == ["class 00", "class 01", "class 02"]  # letters and digits split
    assert list(m["sites"]) == ["site-1", "site-2"]
    assert m["skipped"] == [["class00/bad.png", listing.skipped[0][1]]]
    rec = m["sites"]["site-1"]["train"][0]
    assert isinstance(rec, list) and isinstance(rec[0], str) and isinstance(rec[1], int)
    # Plain JSON types only.
    assert json.loads(json.dumps(m)) == m
    with pytest.raises(DataError, match="unknown partition options"):
        build_manifest(listing, 2, "uniform", seed=0, beta=0.1)


def test_round_trip_and_atomic_write(listing, tmp_path):
    m = build_manifest(listing, 3, "dirichlet", seed=1, train_fraction=0.5, dirichlet_beta=1.0)
    path = write_manifest(m, tmp_path / "out" / "manifest.json")
    assert load_manifest(path) == m
    assert [p.name for p in path.parent.iterdir()] == ["manifest.json"]  # no temp file left
    text = path.read_text()
    assert '["class00/class0000.png", 0]' in text or '["class00/class0001.png", 0]' in text
    # Overwriting replaces the file.
    m2 = build_manifest(listing, 2, "uniform", seed=1)
    write_manifest(m2, path)
    assert load_manifest(path)["scheme"] == "uniform"


def _write(tmp_path, obj, name="m.json"):
    p = tmp_path / name
    p.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)
    return p


def test_load_manifest_errors(listing, tmp_path):
    good = build_manifest(listing, 2, "uniform", seed=0)
    with pytest.raises(DataError, match="manifest not found.*fedrsclip data partition"):
        load_manifest(tmp_path / "missing.json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_manifest(_write(tmp_path, "{oops"))
    with pytest.raises(DataError, match="top level"):
        load_manifest(_write(tmp_path, [1, 2]))
    broken = dict(good)
    del broken["sites"], broken["classes"]
    with pytest.raises(DataError, match=r"missing keys \['classes', 'sites'\]"):
        load_manifest(_write(tmp_path, broken))
    bad_label = json.loads(json.dumps(good))
    bad_label["sites"]["site-2"]["test"][0][1] = 3
    with pytest.raises(DataError, match="site 'site-2' test record 0 .* label 3, outside 0..2"):
        load_manifest(_write(tmp_path, bad_label))
    bad_rec = json.loads(json.dumps(good))
    bad_rec["sites"]["site-1"]["train"][0] = ["x.png"]
    with pytest.raises(DataError, match="relative_path, label"):
        load_manifest(_write(tmp_path, bad_rec))
    no_test = json.loads(json.dumps(good))
    del no_test["sites"]["site-1"]["test"]
    with pytest.raises(DataError, match="no 'test' list"):
        load_manifest(_write(tmp_path, no_test))
    newer = json.loads(json.dumps(good))
    newer["version"] = 99
    with pytest.raises(DataError, match="newer"):
        load_manifest(_write(tmp_path, newer))


def test_site_split(listing, tmp_path):
    m = build_manifest(listing, 2, "uniform", seed=0)
    items = site_split(m, "site-1", "train")
    assert items and all(p.is_absolute() and p.is_file() for p, _ in items)
    assert [(p.relative_to(listing.root).as_posix(), y) for p, y in items] == [
        tuple(r) for r in m["sites"]["site-1"]["train"]
    ]
    moved = site_split(m, "site-2", "test", root=tmp_path / "elsewhere")
    assert all(str(p).startswith(str(tmp_path / "elsewhere")) for p, _ in moved)
    with pytest.raises(DataError, match=r"site 'site-9' is not in the manifest.*site-1, site-2"):
        site_split(m, "site-9", "train")
    with pytest.raises(DataError, match="unknown split 'val'"):
        site_split(m, "site-1", "val")


def test_site_counts_table(listing):
    m = build_manifest(listing, 2, "label-skew", seed=0, classes_per_site=2)
    table = site_counts_table(m)
    lines = table.splitlines()
    assert "site" in lines[1] and "train" in lines[1] and "test" in lines[1] and "classes" in lines[1]
    assert any(line.startswith("site-1") and "2/3" in line for line in lines)
    assert any(line.startswith("total") and "3/3" in line for line in lines)
    assert lines[-1] == "skipped files: 1 (unreadable 1)"  # counted by reason


def _with_record(manifest, rel):
    m = json.loads(json.dumps(manifest))
    m["sites"]["site-1"]["train"].append([rel, 0])
    return m


def test_paths_outside_the_data_root_are_refused_naming_the_entry(listing, tmp_path):
    # Issue 11 item 7: manifest paths with '..' or absolute paths outside the data root were trained on.
    m = build_manifest(listing, 2, "uniform", seed=0)
    n = len(m["sites"]["site-1"]["train"])
    secret = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(secret)
    for rel in ("../secret.png", str(secret), "class00/../../secret.png", "/etc/passwd", "C:\\\\x.png"):
        with pytest.raises(DataError, match=rf"manifest entry {n} of site-1/train.*(absolute|outside the data root)"):
            site_split(_with_record(m, rel), "site-1", "train")
    # a symlink inside the root that leads out of it
    link = Path(m["root"]) / "class00" / "link.png"
    link.symlink_to(secret)
    with pytest.raises(DataError, match="outside the data root"):
        site_split(_with_record(m, "class00/link.png"), "site-1", "train")
    # '..' that stays inside is fine, and so is a data root that is itself a symlink
    inside = site_split(_with_record(m, "class01/../class00/class0000.png"), "site-1", "train")
    assert inside[-1][0] == Path(m["root"]).resolve() / "class00" / "class0000.png"
    alias = tmp_path / "alias"
    alias.symlink_to(m["root"])
    assert len(site_split(m, "site-1", "train", root=alias)) == n


def test_partition_skips_symlinks_that_leave_the_root(tmp_path):
    root = _folder(tmp_path / "ds", 2, 3)
    outside = tmp_path / "elsewhere.png"
    Image.new("RGB", (8, 8)).save(outside)
    (root / "class00" / "escape.png").symlink_to(outside)
    (root / "class01" / "inside.png").symlink_to(root / "class00" / "class0000.png")
    with pytest.warns(UserWarning, match="not images"):
        listing = list_dataset("imagefolder", root, progress=False)
    assert dict(listing.skipped)["class00/escape.png"].startswith("outside the data root")
    assert "class01/inside.png" in {p for p, _ in listing.records}


def test_multi_label_records_round_trip(tmp_path):
    from fedrsclip.data import validate_manifest

    m = {
        "version": 1,
        "dataset": "x",
        "root": str(tmp_path),
        "classes": ["a", "b", "c"],
        "seed": 0,
        "scheme": "uniform",
        "multi_label": True,
        "modality": "s2",
        "sites": {"site-1": {"train": [["p1", [0, 2]], ["p2", [1]]], "test": []}},
    }
    path = write_manifest(m, tmp_path / "m.json")
    assert '["p1", [0, 2]]' in path.read_text()  # one record per line
    assert load_manifest(path)["sites"]["site-1"]["train"][0] == ["p1", [0, 2]]
    for bad in ([["p1", 0]], [["p1", []]], [["p1", [3]]]):
        with pytest.raises(DataError, match="record 0"):
            validate_manifest({**m, "sites": {"site-1": {"train": bad, "test": []}}})
    with pytest.raises(DataError, match="modality"):
        validate_manifest({**m, "modality": "radar"})
    assert site_split(m, "site-1", "train", multi_label=True)[0][1] == (0, 2)
