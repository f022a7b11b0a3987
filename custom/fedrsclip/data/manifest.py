"""The Fed-RSIC manifest: which images each site trains and tests on.

Format (read by other tools, so keep it stable):

    {"version": 1, "dataset": str, "root": str (absolute), "classes": [readable names],
     "class_folders": [folder names] (absent where classes are not folders), "seed": int, "scheme": str,
     "train_fraction": float, "modality": "rgb" | "s2" | "s1" (absent: rgb), "multi_label": bool (absent: false),
     "multi_modal": bool (absent: false; then "modality" is "multi" and each site declares its own:
     fedrsclip.data.multimodal),
     "sites": {"site-1": {"train": [[relative_path, label], ...], "test": [...]}, ...},
     "skipped": [[relative_path, "<kind>: <detail>"], ...]}

Paths are posix and relative to "root" (a file, or a patch folder); labels index "classes". In a multi-label
manifest (BigEarthNet) each label is a list of class indices. A site reads only paths inside its data root
(symlinks resolved): `site_split` refuses any other entry by name.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from ..atomic import atomic_write
from .composite import MODALITIES
from .errors import DataError
from .partition import partition
from .readers import DatasetListing
from .split import DEFAULT_TRAIN_FRACTION, split_train_test

MANIFEST_VERSION = 1
REQUIRED_KEYS: tuple[str, ...] = ("dataset", "root", "classes", "seed", "scheme", "sites")
SPLITS: tuple[str, ...] = ("train", "test")
_SCHEME_OPTIONS = frozenset({"classes_per_site", "dirichlet_beta"})


def build_manifest(
    listing: DatasetListing,
    num_clients: int,
    scheme: str,
    seed: int,
    train_fraction: float | None = None,
    **scheme_kwargs: Any,
) -> dict[str, Any]:
    """Split a listing into train/test, partition it over sites and return the manifest.

    train_fraction defaults to DEFAULT_TRAIN_FRACTION for the listing's dataset;
    scheme_kwargs are partition()'s classes_per_site and dirichlet_beta.
    """
    unknown = sorted(set(scheme_kwargs) - _SCHEME_OPTIONS)
    if unknown:
        raise DataError(f"unknown partition options {unknown}; valid ones are {sorted(_SCHEME_OPTIONS)}")
    fraction = DEFAULT_TRAIN_FRACTION.get(listing.name, 0.5) if train_fraction is None else train_fraction
    train, test = split_train_test(listing.records, fraction, seed)
    sites = partition(train, test, num_clients, scheme, seed, **scheme_kwargs)
    sets = listing.label_sets

    def label(path: str, first: int) -> int | list[int]:
        # Multi-label records are split and partitioned by their first label and keep all of them.
        return list(sets[path]) if sets is not None else int(first)

    manifest: dict[str, Any] = {
        "version": MANIFEST_VERSION,
        "dataset": listing.name,
        "root": str(Path(listing.root).resolve()),
        "classes": list(listing.classes),
        "class_folders": list(listing.class_folders) if listing.class_folders is not None else None,
        "seed": int(seed),
        "scheme": scheme,
        "train_fraction": float(fraction),
        "modality": listing.modality,
        "multi_label": sets is not None,
        "sites": {
            name: {split: [[path, label(path, first)] for path, first in parts[split]] for split in SPLITS}
            for name, parts in sites.items()
        },
        "skipped": [[path, reason] for path, reason in listing.skipped],
    }
    if manifest["class_folders"] is None:
        del manifest["class_folders"]
    return manifest


# A two-element JSON list of [string, number-or-string] as json.dumps(indent=2)
# spreads it over four lines; collapsed to one line so records read as rows.
_PAIR = re.compile(r'\[\n\s*("(?:[^"\\\n]|\\.)*"),\n\s*(-?\d+|"(?:[^"\\\n]|\\.)*")\n\s*\]')
# A list of integers (a multi-label record's labels), likewise collapsed.
_INTS = re.compile(r"\[\n\s*(-?\d+(?:,\n\s*-?\d+)*)\n\s*\]")
_MULTI = re.compile(r'\[\n\s*("(?:[^"\\\n]|\\.)*"),\n\s*(\[[-\d, ]*\])\n\s*\]')


def dumps_manifest(manifest: Mapping[str, Any]) -> str:
    """The manifest as JSON text, one record per line."""
    text = json.dumps(manifest, indent=2, ensure_ascii=False)
    text = _INTS.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text)
    text = _MULTI.sub(r"[\1, \2]", text)
    return _PAIR.sub(r"[\1, \2]", text) + "\n"


def write_manifest(manifest: Mapping[str, Any], path: str | Path) -> Path:
    """Write the manifest atomically: readers never see a half-written file, even if the process is killed."""
    data = dumps_manifest(manifest).encode("utf-8")
    return atomic_write(path, lambda handle: handle.write(data))


def load_manifest(path: str | Path) -> dict[str, Any]:
    """Read and validate a manifest; DataError says what is wrong and where."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest not found: {path}; create it with `fedrsclip data partition ... --out {path}`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(
            f"manifest {path} is not valid JSON ({exc}); regenerate it with `fedrsclip data partition`"
        ) from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"manifest {path} is not UTF-8 text; regenerate it") from exc
    validate_manifest(manifest, source=str(path))
    return manifest


def validate_manifest(manifest: Any, source: str = "manifest") -> None:
    """Check the manifest's structure; raise DataError naming `source` on the first problem."""

    def fail(what: str) -> DataError:
        return DataError(f"{source}: {what}; regenerate it with `fedrsclip data partition`")

    if not isinstance(manifest, dict):
        raise fail(f"expected a JSON object at the top level, got {type(manifest).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise fail(f"missing keys {missing}")
    version = manifest.get("version", MANIFEST_VERSION)
    if not isinstance(version, int) or version > MANIFEST_VERSION:
        raise DataError(
            f"{source}: manifest version {version!r} is newer than this fedrsclip understands "
            f"(version {MANIFEST_VERSION}); upgrade fedrsclip or regenerate the manifest"
        )
    for key in ("dataset", "root", "scheme"):
        if not isinstance(manifest[key], str) or not manifest[key]:
            raise fail(f"'{key}' must be a non-empty string")
    if not isinstance(manifest["seed"], int) or isinstance(manifest["seed"], bool):
        raise fail("'seed' must be an integer")
    classes = manifest["classes"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise fail("'classes' must be a non-empty list of class names")
    folders = manifest.get("class_folders")
    if folders is not None and (
        not isinstance(folders, list) or len(folders) != len(classes) or not all(isinstance(f, str) for f in folders)
    ):
        raise fail(f"'class_folders' must list {len(classes)} folder names, one per class")
    sites = manifest["sites"]
    if not isinstance(sites, dict) or not sites:
        raise fail("'sites' must be a non-empty object of site name -> {train, test}")
    multi_modal = manifest.get("multi_modal", False)
    if not isinstance(multi_modal, bool):
        raise fail("'multi_modal' must be true or false")
    if multi_modal and manifest.get("modality") != "multi":
        raise fail(
            f"a multi-modal manifest has 'modality': 'multi' (each site declares its own); got "
            f"{manifest.get('modality')!r}"
        )
    if not multi_modal and manifest.get("modality", "rgb") not in MODALITIES:
        raise fail(f"'modality' must be one of {', '.join(MODALITIES)}, got {manifest.get('modality')!r}")
    multi = manifest.get("multi_label", False)
    if not isinstance(multi, bool):
        raise fail("'multi_label' must be true or false")
    num_classes = len(classes)

    def is_int(x: Any) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    shape = "[relative_path, [labels]]" if multi else "[relative_path, label]"
    for site, parts in sites.items():
        if not isinstance(parts, dict):
            raise fail(f"site '{site}' must be an object with 'train' and 'test' lists")
        for split in SPLITS:
            records = parts.get(split)
            if not isinstance(records, list):
                raise fail(f"site '{site}' has no '{split}' list")
            for i, rec in enumerate(records):
                if not isinstance(rec, list) or len(rec) != 2 or not isinstance(rec[0], str) or not rec[0]:
                    raise fail(f"site '{site}' {split} record {i} must be {shape}, got {rec!r}")
                labels = rec[1] if multi else [rec[1]]
                if not isinstance(labels, list) or not labels or not all(is_int(x) for x in labels):
                    raise fail(f"site '{site}' {split} record {i} must be {shape}, got {rec!r}")
                if not all(0 <= x < num_classes for x in labels):
                    raise fail(
                        f"site '{site}' {split} record {i} ({rec[0]}) has label {rec[1]}, "
                        f"outside 0..{num_classes - 1} for {num_classes} classes"
                    )
    if multi_modal:
        _validate_multi_modal(manifest, fail)
    skipped = manifest.get("skipped", [])
    if not isinstance(skipped, list) or not all(
        isinstance(s, list) and len(s) == 2 and all(isinstance(x, str) for x in s) for s in skipped
    ):
        raise fail("'skipped' must be a list of [relative_path, reason]")


def is_multi_label(manifest: Mapping[str, Any]) -> bool:
    """True for a manifest whose records carry label lists (BigEarthNet)."""
    return bool(manifest.get("multi_label", False))


def confine(root: str | Path, rel: str, what: str) -> Path:
    """`root/rel` with symlinks resolved, refused unless it lies inside `root` (also resolved).

    rel must be relative (no leading "/", drive or "\\"); ".." may appear as long as the result stays inside.
    Raises DataError naming `what` (the manifest entry), the path and the root.
    """
    base = Path(root).expanduser().resolve()
    if PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).is_absolute() or PureWindowsPath(rel).drive:
        raise DataError(
            f"{what}: the path {rel!r} is absolute; manifest paths must be relative to the data root "
            f"{base}; regenerate the manifest with `fedrsclip data partition`"
        )
    full = (base / rel).resolve()
    if not full.is_relative_to(base):
        raise DataError(
            f"{what}: {rel!r} resolves to {full}, outside the data root {base} ('..' or a symlink "
            "leads out of it); a site reads only files under its data root: move the images under "
            "it, or set data.root to the folder that holds them"
        )
    return full


def site_split(
    manifest: Mapping[str, Any],
    site: str,
    split: str,
    root: str | Path | None = None,
    multi_label: bool = False,
) -> list[tuple[Path, Any]]:
    """Absolute image paths and labels of one site's train or test split, every path confined to the data root.

    root replaces the manifest's root, for a site that keeps the dataset somewhere else. Labels are ints; with
    multi_label, tuples of ints (and a multi-label manifest needs multi_label=True: the single-label algorithms
    refuse it). Raises DataError naming the entry whose path leaves the data root.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split '{split}'; use one of {', '.join(SPLITS)}")
    if is_multi_label(manifest) and not multi_label:
        raise DataError(
            f"the manifest of dataset {manifest.get('dataset')} is multi-label (each image has a list of labels) "
            "and is read here as single-label (one class per image): the prompt algorithms train label sets "
            "(fedrsclip.site reads it with multi_label=True); the full-model baseline fedavg-full trains one class "
            "per image only"
        )
    sites = manifest["sites"]
    if site not in sites:
        raise DataError(
            f"site '{site}' is not in the manifest (dataset {manifest.get('dataset')}, "
            f"{len(sites)} sites: {', '.join(sites)}); check the site name or regenerate the "
            "manifest with the right --sites"
        )
    base = root if root is not None else manifest["root"]
    out = []
    for i, (rel, label) in enumerate(sites[site][split]):
        path = confine(base, rel, f"manifest entry {i} of {site}/{split}")
        out.append(
            (
                path,
                tuple(int(x) for x in label)
                if multi_label and isinstance(label, list)
                else (tuple([int(label)]) if multi_label else int(label)),
            )
        )
    return out


def site_counts_table(manifest: Mapping[str, Any]) -> str:
    """A readable table of images and classes per site, with the skipped-file count."""
    num_classes = len(manifest["classes"])
    rows: list[tuple[str, str, str, str]] = []
    all_labels: set[int] = set()
    total_train = total_test = 0
    for site, parts in manifest["sites"].items():
        labels = {
            x for _, label in parts["train"] + parts["test"] for x in (label if isinstance(label, list) else [label])
        }
        all_labels |= labels
        total_train += len(parts["train"])
        total_test += len(parts["test"])
        name = site
        if manifest.get("multi_modal", False):  # a site of a multi-modal federation shows what it holds
            name += f" ({'+'.join([parts.get('modality', '?'), *parts.get('paired', {})])})"
        rows.append((name, str(len(parts["train"])), str(len(parts["test"])), f"{len(labels)}/{num_classes}"))
    rows.append(("total", str(total_train), str(total_test), f"{len(all_labels)}/{num_classes}"))
    header = ("site", "train", "test", "classes")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]

    def fmt(row: tuple[str, str, str, str]) -> str:
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))

    lines = [
        f"dataset {manifest['dataset']}, scheme {manifest['scheme']}, seed {manifest['seed']}, "
        f"{len(manifest['sites'])} sites",
        fmt(header),
        fmt(tuple("-" * w for w in widths)),
        *(fmt(r) for r in rows[:-1]),
        fmt(tuple("-" * w for w in widths)),
        fmt(rows[-1]),
        f"skipped files: {skipped_summary(manifest.get('skipped', []))}",
    ]
    return "\n".join(lines)


def skipped_summary(skipped: Sequence[Sequence[str]]) -> str:
    """ "0", or "5 (unreadable 3, too large 2)": skipped entries counted by the kind their reason starts with."""
    if not skipped:
        return "0"
    kinds = Counter(reason.split(":", 1)[0] if ":" in reason else "other" for _, reason in skipped)
    return f"{len(skipped)} (" + ", ".join(f"{kind} {n}" for kind, n in kinds.most_common()) + ")"


def centralized(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The same data pooled at one site ("site-1"): the centralized reference column.

    DataError for a multi-modal manifest: pooling sites of different modalities would read SAR patches with a
    Sentinel-2 composite (or the reverse).
    """
    if manifest.get("multi_modal", False):
        raise DataError(
            f"the manifest of dataset {manifest.get('dataset')} is multi-modal (sites of "
            f"{', '.join(manifest.get('modalities', []))}); its sites cannot be pooled into one "
            "centralized site of one modality: partition each modality on its own for a centralized "
            "reference"
        )
    pooled: dict[str, list] = {split: [] for split in SPLITS}
    for parts in manifest["sites"].values():
        for split in SPLITS:
            pooled[split].extend(parts[split])
    return {**manifest, "scheme": "centralized", "sites": {"site-1": pooled}}


def _validate_multi_modal(manifest: Mapping[str, Any], fail) -> None:
    """The multi-modal part of manifest validation; `fail(what)` builds the DataError to raise."""
    modalities = manifest.get("modalities")
    if not isinstance(modalities, list) or not modalities or not all(m in MODALITIES for m in modalities):
        raise fail(f"a multi-modal manifest needs 'modalities': a list from {', '.join(MODALITIES)}")
    for site, parts in manifest["sites"].items():
        if parts.get("modality") not in modalities:
            raise fail(f"site '{site}' must declare a 'modality' among {modalities}; got {parts.get('modality')!r}")
        paired = parts.get("paired", {})
        if not isinstance(paired, dict):
            raise fail(f"site '{site}': 'paired' must map a modality to its train and test paths")
        for modality, lists in paired.items():
            if modality not in modalities or modality == parts["modality"] or not isinstance(lists, dict):
                raise fail(f"site '{site}': 'paired' has {modality!r}, not another of the modalities {modalities}")
            for split in SPLITS:
                paths = lists.get(split)
                if (
                    not isinstance(paths, list)
                    or len(paths) != len(parts[split])
                    or not all(isinstance(p, str) and p for p in paths)
                ):
                    raise fail(
                        f"site '{site}': paired {modality} {split} must list one path per {split} record "
                        f"({len(parts[split])})"
                    )
