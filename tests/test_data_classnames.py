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
