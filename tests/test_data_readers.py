"""list_dataset: layouts, skipped files and the errors that tell the user what to fix."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fedrsclip.data import DATASETS, DataError, list_dataset


def _img(path: Path, value: int = 0, size=(8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, 2 * value % 256, 100)).save(path)
    return path


def _folder(base: Path, classes: dict[str, int], ext: str = ".png") -> Path:
    for name, n in classes.items():
        for i in range(n):
            _img(base / name / f"{name}{i:02d}{ext}", i)
    return base


def test_datasets_names():
    assert set(DATASETS) == {
        "ucmerced",
        "optimal31",
        "nwpu",
        "eurosat",
        "eurosat-ms",
        "bigearthnet-s2",
        "bigearthnet-s1",
        "bigearthnet-mm",
        "imagefolder",
        "synthetic",
    }


def test_ucmerced_with_and_without_images_subfolder(tmp_path):
    classes = {"denseresidential": 3, "agricultural": 2, "parkinglot": 4}
    with_images = _folder(tmp_path / "UCMerced_LandUse" / "Images", classes, ".tif")
    listing = list_dataset("ucmerced", tmp_path / "UCMerced_LandUse", progress=False)
    assert listing.root == with_images.resolve()
    assert listing.class_folders == ["agricultural", "denseresidential", "parkinglot"]
    assert listing.classes == ["agricultural", "dense residential", "parking lot"]
    assert listing.records[0] == ("agricultural/agricultural00.tif", 0)
    assert len(listing.records) == 9 and listing.skipped == []
    assert listing.class_counts() == [2, 3, 4]

    flat = _folder(tmp_path / "flat", classes, ".tif")
    listing2 = list_dataset("ucmerced", flat, progress=False)
    assert listing2.root == flat.resolve() and listing2.records == listing.records


def test_optimal31_nwpu_imagefolder_layouts(tmp_path):
    _folder(tmp_path / "OPTIMAL-31" / "Images", {"baseball_diamond": 2, "golf_field": 2}, ".jpg")
    opt = list_dataset("optimal31", tmp_path / "OPTIMAL-31", progress=False)
    assert opt.classes == ["baseball diamond", "golf field"]

    _folder(tmp_path / "NWPU-RESISC45", {"sea_ice": 2, "thermal_power_station": 3}, ".jpg")
    nwpu = list_dataset("nwpu", tmp_path / "NWPU-RESISC45", progress=False)
    assert nwpu.classes == ["sea ice", "thermal power station"] and len(nwpu.records) == 5

    root = tmp_path / "mixed"
    _img(root / "a" / "x.PNG")
    _img(root / "a" / "y.bmp")
    _img(root / "b" / "z.JPEG")
    Image.new("RGB", (8, 8)).save(root / "b" / "w.webp")
    mixed = list_dataset("imagefolder", root, progress=False)
    assert mixed.records == [("a/x.PNG", 0), ("a/y.bmp", 0), ("b/w.webp", 1), ("b/z.JPEG", 1)]


def test_corrupt_files_are_skipped_counted_and_warned(tmp_path):
    root = _folder(tmp_path / "ds", {"forest": 3, "river": 3})
    trunc = root / "forest" / "broken.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(trunc)
    trunc.write_bytes(trunc.read_bytes()[:150])
    (root / "river" / "fake.jpg").write_text("not a jpeg")
    with pytest.warns(UserWarning) as record:
        listing = list_dataset("imagefolder", root, progress=False)
    messages = " ".join(str(w.message) for w in record)
    assert "broken.png" in messages and "fake.jpg" in messages
    assert [p for p, _ in listing.skipped] == ["forest/broken.png", "river/fake.jpg"]
    assert all(reason for _, reason in listing.skipped)
    assert len(listing.records) == 6
    assert all("broken" not in p and "fake" not in p for p, _ in listing.records)

    # Without verification nothing is opened, so nothing is skipped.
    unverified = list_dataset("imagefolder", root, verify=False, progress=False)
    assert len(unverified.records) == 8 and unverified.skipped == []


def test_hidden_and_readme_files_are_ignored_silently(tmp_path):
    root = _folder(tmp_path / "ds", {"beach": 2, "desert": 2})
    (root / "README.txt").write_text("about")
    (root / "beach" / ".DS_Store").write_bytes(b"\0\1")
    (root / "beach" / "._beach00.png").write_bytes(b"apple double")
    (root / "beach" / "Thumbs.db").write_bytes(b"\0")
    (root / "desert" / "notes.md").write_text("x")
    (root / ".git").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        listing = list_dataset("imagefolder", root, progress=False)
    assert len(listing.records) == 4 and listing.skipped == []


def test_other_files_and_subfolders_are_listed_as_skipped(tmp_path):
    root = _folder(tmp_path / "ds", {"beach": 2, "desert": 2})
    (root / "beach" / "anim.gif").write_bytes(b"GIF89a")
    _img(root / "desert" / "nested" / "deep.png")
    with pytest.warns(UserWarning, match="not images"):
        listing = list_dataset("imagefolder", root, progress=False)
    assert dict(listing.skipped).keys() == {"beach/anim.gif", "desert/nested"}
    assert len(listing.records) == 4


def test_empty_class_folder_is_named(tmp_path):
    root = _folder(tmp_path / "ds", {"beach": 2, "desert": 2})
    (root / "lake").mkdir()
    (root / "lake" / "readme.txt").write_text("images go here")
    with pytest.raises(DataError, match=r"lake.*contains no images"):
        list_dataset("imagefolder", root, progress=False)


def test_class_with_only_unreadable_images_is_an_error(tmp_path):
    root = _folder(tmp_path / "ds", {"beach": 2, "desert": 2})
    (root / "lake").mkdir()
    (root / "lake" / "a.png").write_text("nope")
    with pytest.warns(UserWarning), pytest.raises(DataError, match=r"lake.*no readable images"):
        list_dataset("imagefolder", root, progress=False)


def test_unknown_layout_says_what_was_expected(tmp_path):
    loose = tmp_path / "loose"
    for i in range(3):
        _img(loose / f"img{i}.tif")
    with pytest.raises(DataError, match=r"Images/<class>/\*\.tif") as info:
        list_dataset("ucmerced", loose, progress=False)
    assert "directly" in str(info.value)

    nothing = tmp_path / "nothing"
    (nothing / "docs").mkdir(parents=True)
    with pytest.raises(DataError, match="no class folders with images"):
        list_dataset("nwpu", nothing, progress=False)


def test_root_one_level_too_high_gets_a_hint(tmp_path):
    _folder(tmp_path / "top" / "NWPU-RESISC45", {"a": 1, "b": 1}, ".jpg")
    with pytest.raises(DataError, match=r"Did you mean --root .*NWPU-RESISC45"):
        list_dataset("nwpu", tmp_path / "top", progress=False)


def test_root_missing_unknown_dataset_and_single_class(tmp_path):
    with pytest.raises(DataError, match="root not found"):
        list_dataset("nwpu", tmp_path / "absent", progress=False)
    with pytest.raises(DataError, match="unknown dataset 'eurosat2'.*ucmerced.*nwpu"):
        list_dataset("eurosat2", tmp_path, progress=False)
    root = _folder(tmp_path / "one", {"forest": 3})
    with pytest.raises(DataError, match="at least 2 classes"):
        list_dataset("imagefolder", root, progress=False)


def test_class_names_file_overrides(tmp_path):
    root = _folder(tmp_path / "ds", {"parkinglot": 2, "tenniscourt": 2})
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"parkinglot": "car park", "nosuchfolder": "x"}))
    with pytest.warns(UserWarning, match="nosuchfolder"):
        listing = list_dataset("imagefolder", root, class_names_file=names, progress=False)
    assert listing.classes == ["car park", "tennis court"]
    assert listing.class_folders == ["parkinglot", "tenniscourt"]
