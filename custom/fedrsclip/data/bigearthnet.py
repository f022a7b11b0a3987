"""BigEarthNet patches: one folder per patch, one GeoTIFF per band, CORINE labels in `<patch>_labels_metadata.json`.

The archive labels each patch with CORINE Land Cover level-3 names (43 classes). The standard 19-class
nomenclature (Sumbul et al., "BigEarthNet Deep Learning Models with a New Class-Nomenclature for Remote Sensing
Image Understanding", 2020) merges 32 of them and drops the 11 that are hard to recognise from a 1.2 km patch
(roads, ports, airports, mines, dumps, construction sites, green urban areas, sport facilities, bare rock, burnt
areas, intertidal flats; CORINE's glaciers class never occurs in the archive). Sentinel-1 patches carry the same
labels and name their Sentinel-2 partner in `corresponding_s2_patch`.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import ImageReadError

LABEL_SUFFIX = "_labels_metadata.json"
PARTNER_KEY = "corresponding_s2_patch"  # in a Sentinel-1 patch's metadata: the name of its Sentinel-2 patch

# The 19 classes, in the nomenclature's order, each with the CORINE names it merges.
NOMENCLATURE_19: dict[str, tuple[str, ...]] = {
    "Urban fabric": ("Continuous urban fabric", "Discontinuous urban fabric"),
    "Industrial or commercial units": ("Industrial or commercial units",),
    "Arable land": ("Non-irrigated arable land", "Permanently irrigated land", "Rice fields"),
    "Permanent crops": (
        "Vineyards",
        "Fruit trees and berry plantations",
        "Olive groves",
        "Annual crops associated with permanent crops",
    ),
    "Pastures": ("Pastures",),
    "Complex cultivation patterns": ("Complex cultivation patterns",),
    "Land principally occupied by agriculture, with significant areas of natural vegetation": (
        "Land principally occupied by agriculture, with significant areas of natural vegetation",
    ),
    "Agro-forestry areas": ("Agro-forestry areas",),
    "Broad-leaved forest": ("Broad-leaved forest",),
    "Coniferous forest": ("Coniferous forest",),
    "Mixed forest": ("Mixed forest",),
    "Natural grassland and sparsely vegetated areas": ("Natural grassland", "Sparsely vegetated areas"),
    "Moors, heathland and sclerophyllous vegetation": ("Moors and heathland", "Sclerophyllous vegetation"),
    "Transitional woodland, shrub": ("Transitional woodland/shrub",),
    "Beaches, dunes, sands": ("Beaches, dunes, sands",),
    "Inland wetlands": ("Inland marshes", "Peatbogs"),
    "Coastal wetlands": ("Salt marshes", "Salines"),
    "Inland waters": ("Water courses", "Water bodies"),
    "Marine waters": ("Coastal lagoons", "Estuaries", "Sea and ocean"),
}
CLASSES_19: tuple[str, ...] = tuple(NOMENCLATURE_19)
DROPPED_CORINE: frozenset[str] = frozenset(
    {
        "Road and rail networks and associated land",
        "Port areas",
        "Airports",
        "Mineral extraction sites",
        "Dump sites",
        "Construction sites",
        "Green urban areas",
        "Sport and leisure facilities",
        "Bare rock",
        "Burnt areas",
        "Intertidal flats",
        "Glaciers and perpetual snow",
    }
)
_CORINE_TO_19: dict[str, int] = {old: i for i, olds in enumerate(NOMENCLATURE_19.values()) for old in olds}


def label_file(folder: Path) -> Path:
    """`<folder>/<folder name>_labels_metadata.json`."""
    return folder / f"{folder.name}{LABEL_SUFFIX}"


def is_patch(folder: Path) -> bool:
    """A folder that holds its BigEarthNet label file."""
    return label_file(folder).is_file()


def read_metadata(folder: Path) -> dict:
    """The patch's metadata JSON; ImageReadError (kind "unreadable labels") naming the file."""
    path = label_file(folder)
    real = folder.resolve()
    if not path.resolve().is_relative_to(real):
        raise ImageReadError(
            f"label file {path} resolves outside its patch folder {real}; replace the symlink",
            path=str(path),
            reason="label file outside its patch folder",
            kind="outside the data root",
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ImageReadError(
            f"cannot read the labels of patch {folder} from {path}: {exc}; restore the file",
            path=str(path),
            reason=str(exc),
            kind="unreadable labels",
        ) from exc
    if (
        not isinstance(meta, dict)
        or not isinstance(meta.get("labels"), list)
        or not all(isinstance(x, str) for x in meta["labels"])
    ):
        raise ImageReadError(
            f"{path} has no 'labels' list of CORINE class names; restore the file",
            path=str(path),
            reason="no 'labels' list",
            kind="unreadable labels",
        )
    return meta


def labels_19(folder: Path) -> list[int]:
    """Indices into CLASSES_19 of a patch's labels, sorted; ImageReadError when none is left or one is unknown."""
    names = read_metadata(folder)["labels"]
    unknown = [n for n in names if n not in _CORINE_TO_19 and n not in DROPPED_CORINE]
    if unknown:
        raise ImageReadError(
            f"patch {folder} has labels that are not CORINE level-3 names: {unknown}; fix {label_file(folder)}",
            path=str(folder),
            reason=f"unknown labels {unknown}",
            kind="unknown label",
        )
    labels = sorted({_CORINE_TO_19[n] for n in names if n in _CORINE_TO_19})
    if not labels:
        raise ImageReadError(
            f"patch {folder}: none of its labels {names} is in the 19-class nomenclature",
            path=str(folder),
            reason="no label in the 19-class nomenclature",
            kind="no usable label",
        )
    return labels


def s2_partner(folder: Path) -> str:
    """The Sentinel-2 patch name a Sentinel-1 patch names in `corresponding_s2_patch`; ImageReadError (kind
    "no partner") when the metadata has none."""
    partner = read_metadata(folder).get(PARTNER_KEY)
    if not isinstance(partner, str) or not partner.strip() or "/" in partner or "\\" in partner:
        raise ImageReadError(
            f"Sentinel-1 patch {folder} names no Sentinel-2 patch in '{PARTNER_KEY}' of "
            f"{label_file(folder)}; restore the file",
            path=str(folder),
            reason=f"no '{PARTNER_KEY}'",
            kind="no partner",
        )
    return partner.strip()
