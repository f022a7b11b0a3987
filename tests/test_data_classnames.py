"""Folder names become readable class names; override files win."""

from __future__ import annotations

import json

import pytest

from fedrsclip.data import DataError, class_names_for, load_class_name_overrides, readable_class_name

UC_MERCED_FOLDERS = {
    "agricultural": "agricultural",
    "airplane": "airplane",
    "baseballdiamond": "baseball diamond",
    "beach": "beach",
    "buildings": "buildings",
    "chaparral": "chaparral",
    "denseresidential": "dense residential",
    "forest": "forest",
    "freeway": "freeway",
    "golfcourse": "golf course",
    "harbor": "harbor",
    "intersection": "intersection",
    "mediumresidential": "medium residential",
    "mobilehomepark": "mobile home park",
    "overpass": "overpass",
    "parkinglot": "parking lot",
    "river": "river",
    "runway": "runway",
    "sparseresidential": "sparse residential",
    "storagetanks": "storage tanks",
    "tenniscourt": "tennis court",
}


@pytest.mark.parametrize("folder,expected", sorted(UC_MERCED_FOLDERS.items()))
def test_uc_merced_concatenated_names(folder, expected):
    assert readable_class_name(folder) == expected


@pytest.mark.parametrize(
    "folder,expected",
    [
        ("baseball_diamond", "baseball diamond"),
        ("ground_track_field", "ground track field"),
        ("ground-track-field", "ground track field"),
        ("GroundTrackField", "ground track field"),
        ("thermal_power_station", "thermal power station"),
        ("sea_ice", "sea ice"),
        ("circular_farmland", "circular farmland"),
        ("rectangular_farmland", "rectangular farmland"),
        ("commercial_area", "commercial area"),
        ("railway_station", "railway station"),
        ("mobile_home_park", "mobile home park"),
        ("snowberg", "snowberg"),
        ("island", "island"),
        ("airport", "airport"),
        ("Industrial Area", "industrial area"),
        ("SAR_ship", "SAR ship"),
        # unknown single words are left as they are
        ("zzyzx", "zzyzx"),
        ("playgroundx", "playgroundx"),
    ],
)
def test_separators_camel_case_and_unknown_words(folder, expected):
    assert readable_class_name(folder) == expected


def test_overrides_json_and_yaml_win(tmp_path):
    j = tmp_path / "names.json"
    j.write_text(json.dumps({"parkinglot": "car park"}))
    y = tmp_path / "names.yaml"
    y.write_text("tenniscourt: tennis courts\n")
    assert load_class_name_overrides(j) == {"parkinglot": "car park"}
    assert load_class_name_overrides(y) == {"tenniscourt": "tennis courts"}
    folders = ["parkinglot", "tenniscourt", "river"]
    assert class_names_for(folders, load_class_name_overrides(j)) == ["car park", "tennis court", "river"]


def test_overrides_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_class_name_overrides(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="bad.json"):
        load_class_name_overrides(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n")
    with pytest.raises(DataError, match="mapping"):
        load_class_name_overrides(lst)
    empty_value = tmp_path / "e.json"
    empty_value.write_text('{"river": ""}')
    with pytest.raises(DataError, match="river"):
        load_class_name_overrides(empty_value)


@pytest.mark.parametrize(
    "folders,expected",
    [
        # RSSCN7: one-letter sort prefixes in alphabetical order
        (
            ["aGrass", "bField", "cIndustry", "dRiverLake", "eForest", "fResident", "gParking"],
            ["grass", "field", "industry", "river lake", "forest", "resident", "parking"],
        ),
        # numbered folders
        (["01_airport", "02_bare_land", "10-storage-tanks"], ["airport", "bare land", "storage tanks"]),
        (["1airport", "2beach"], ["airport", "beach"]),
        # EuroSAT CamelCase, digits split off
        (["AnnualCrop", "HerbaceousVegetation", "SeaLake"], ["annual crop", "herbaceous vegetation", "sea lake"]),
        (["tank2", "tank10"], ["tank 2", "tank 10"]),
        (["bField", "aGrass", "dRiverLake"], ["field", "grass", "river lake"]),  # a subset of RSSCN7
        # a prefix is a sort prefix only when every folder has one, a different one for each
        (["aGrass", "Forest"], ["a grass", "forest"]),
        (["aGrass", "aField"], ["a grass", "a field"]),
        (["01_airport", "beach"], ["01 airport", "beach"]),
    ],
)
def test_sort_prefixes_camel_case_and_digits(folders, expected):
    # Issue 13: RSSCN7-style and numbered folders became "a grass", "d river lake", "01 airport".
    assert class_names_for(folders) == expected


def test_overrides_still_win_over_prefix_stripping():
    assert class_names_for(["aGrass", "bField"], {"aGrass": "meadow"}) == ["meadow", "field"]


def _folders(root, names):
    from PIL import Image

    for name in names:
        (root / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (i, 0, 0)).save(root / name / f"{i}.png")
    return root


def test_two_folders_with_one_name_are_refused_naming_both(tmp_path):
    # Issue 13: parkinglot and parking_lot gave one warning, then trained with identical prompts.
    from fedrsclip.data import list_dataset

    root = _folders(tmp_path / "ds", ["parkinglot", "parking_lot", "river"])
    with pytest.raises(DataError, match=r"'parking_lot', 'parkinglot' all get the class name 'parking lot'"):
        list_dataset("imagefolder", root, progress=False)
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"parking_lot": "car park"}))
    assert list_dataset("imagefolder", root, class_names_file=names, progress=False).classes == [
        "car park",
        "parking lot",
        "river",
    ]


def test_name_too_long_for_the_text_encoder_is_refused_at_partition(tmp_path):
    # Issue 13: a 77-token name passed partitioning and failed after feature extraction, listing token ids.
    from fedrsclip.data import list_dataset
    from fedrsclip.data.classnames import name_token_limit, token_count

    long_name = "_".join(["x"] * 77)  # 153 characters: a valid file name
    root = _folders(tmp_path / "ds", [long_name, "river"])
    assert token_count(long_name) == 77 and name_token_limit() == 70
    with pytest.raises(DataError, match=rf"folder '{long_name}'.*77 tokens, more than the 70") as info:
        list_dataset("imagefolder", root, progress=False)
    assert "class-names file" in str(info.value)
    ok = "_".join(["x"] * 70)
    (root / long_name).rename(root / ok)
    assert list_dataset("imagefolder", root, progress=False).classes[1] == " ".join(["x"] * 70)


def test_token_limit_matches_the_prompt_learner(tiny_backbone):
    # The limit is exact: a 70-token name builds prompts, 71 would not fit with 4 context vectors.
    from fedrsclip.config import PromptConfig
    from fedrsclip.data.classnames import name_token_limit
    from fedrsclip.prompts import PromptLearner

    limit = name_token_limit()
    PromptLearner(tiny_backbone, [" ".join(["very"] * limit), "river"], PromptConfig())
    with pytest.raises(ValueError, match="over the text encoder.s limit"):
        PromptLearner(tiny_backbone, [" ".join(["very"] * (limit + 1)), "river"], PromptConfig())
