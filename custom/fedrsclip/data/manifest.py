"""The Fed-RSIC manifest: which images each site trains and tests on.

Format (read by other tools, so keep it stable):

    {"version": 1, "dataset": str, "root": str (absolute), "classes": [readable names],
     "class_folders": [folder names], "seed": int, "scheme": str, "train_fraction": float,
     "sites": {"site-1": {"train": [[relative_path, label], ...], "test": [...]}, ...},
     "skipped": [[relative_path, reason], ...]}

Paths are posix and relative to "root"; labels index "classes".
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..atomic import atomic_write
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
        raise DataError(
            f"unknown partition options {unknown}; valid ones are {sorted(_SCHEME_OPTIONS)}"
        )
    fraction = DEFAULT_TRAIN_FRACTION.get(listing.name, 0.5) if train_fraction is None else train_fraction
    train, test = split_train_test(listing.records, fraction, seed)
    sites = partition(train, test, num_clients, scheme, seed, **scheme_kwargs)
    return {
        "version": MANIFEST_VERSION,
        "dataset": listing.name,
        "root": str(Path(listing.root).resolve()),
        "classes": list(listing.classes),
        "class_folders": list(listing.class_folders),
        "seed": int(seed),
        "scheme": scheme,
        "train_fraction": float(fraction),
        "sites": {
            name: {split: [[path, int(label)] for path, label in parts[split]] for split in SPLITS}
            for name, parts in sites.items()
        },
        "skipped": [[path, reason] for path, reason in listing.skipped],
    }


# A two-element JSON list of [string, number-or-string] as json.dumps(indent=2)
# spreads it over four lines; collapsed to one line so records read as rows.
_PAIR = re.compile(
    r'\[\n\s*("(?:[^"\\\n]|\\.)*"),\n\s*(-?\d+|"(?:[^"\\\n]|\\.)*")\n\s*\]'
)


def dumps_manifest(manifest: Mapping[str, Any]) -> str:
    """The manifest as JSON text, one record per line."""
    return _PAIR.sub(r"[\1, \2]", json.dumps(manifest, indent=2, ensure_ascii=False)) + "\n"


def write_manifest(manifest: Mapping[str, Any], path: str | Path) -> Path:
    """Write the manifest atomically: readers never see a half-written file, even if the process is killed."""
    data = dumps_manifest(manifest).encode("utf-8")
    return atomic_write(path, lambda handle: handle.write(data))


def load_manifest(path: str | Path) -> dict[str, Any]:
    """Read and validate a manifest; DataError says what is wrong and where."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"manifest not found: {path}; create it with "
            f"`fedrsclip data partition ... --out {path}`"
        )
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
        not isinstance(folders, list) or len(folders) != len(classes)
        or not all(isinstance(f, str) for f in folders)
    ):
        raise fail(f"'class_folders' must list {len(classes)} folder names, one per class")
    sites = manifest["sites"]
    if not isinstance(sites, dict) or not sites:
        raise fail("'sites' must be a non-empty object of site name -> {train, test}")
    num_classes = len(classes)
    for site, parts in sites.items():
        if not isinstance(parts, dict):
            raise fail(f"site '{site}' must be an object with 'train' and 'test' lists")
        for split in SPLITS:
            records = parts.get(split)
            if not isinstance(records, list):
                raise fail(f"site '{site}' has no '{split}' list")
            for i, rec in enumerate(records):
                if (
                    not isinstance(rec, list) or len(rec) != 2
                    or not isinstance(rec[0], str) or not rec[0]
                    or not isinstance(rec[1], int) or isinstance(rec[1], bool)
                ):
                    raise fail(f"site '{site}' {split} record {i} must be [relative_path, label], got {rec!r}")
                if not 0 <= rec[1] < num_classes:
                    raise fail(
                        f"site '{site}' {split} record {i} ({rec[0]}) has label {rec[1]}, "
                        f"outside 0..{num_classes - 1} for {num_classes} classes"
                    )
    skipped = manifest.get("skipped", [])
    if not isinstance(skipped, list) or not all(
        isinstance(s, list) and len(s) == 2 and all(isinstance(x, str) for x in s) for s in skipped
    ):
        raise fail("'skipped' must be a list of [relative_path, reason]")


def site_split(
    manifest: Mapping[str, Any], site: str, split: str, root: str | Path | None = None
) -> list[tuple[Path, int]]:
    """Absolute image paths and labels of one site's train or test split.

    root replaces the manifest's root, for a site that keeps the dataset
    somewhere else.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split '{split}'; use one of {', '.join(SPLITS)}")
    sites = manifest["sites"]
    if site not in sites:
        raise DataError(
            f"site '{site}' is not in the manifest (dataset {manifest.get('dataset')}, "
            f"{len(sites)} sites: {', '.join(sites)}); check the site name or regenerate the "
            "manifest with the right --clients"
        )
    base = Path(root if root is not None else manifest["root"]).expanduser()
    return [(base / rel, int(label)) for rel, label in sites[site][split]]


def site_counts_table(manifest: Mapping[str, Any]) -> str:
    """A readable table of images and classes per site, with the skipped-file count."""
    num_classes = len(manifest["classes"])
    rows: list[tuple[str, str, str, str]] = []
    all_labels: set[int] = set()
    total_train = total_test = 0
    for site, parts in manifest["sites"].items():
        labels = {label for _, label in parts["train"]} | {label for _, label in parts["test"]}
        all_labels |= labels
        total_train += len(parts["train"])
        total_test += len(parts["test"])
        rows.append((site, str(len(parts["train"])), str(len(parts["test"])), f"{len(labels)}/{num_classes}"))
    rows.append(("total", str(total_train), str(total_test), f"{len(all_labels)}/{num_classes}"))
    header = ("site", "train", "test", "classes")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]

    def fmt(row: tuple[str, str, str, str]) -> str:
        return "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))
        )

    lines = [
        f"dataset {manifest['dataset']}, scheme {manifest['scheme']}, seed {manifest['seed']}, "
        f"{len(manifest['sites'])} sites",
        fmt(header),
        fmt(tuple("-" * w for w in widths)),
        *(fmt(r) for r in rows[:-1]),
        fmt(tuple("-" * w for w in widths)),
        fmt(rows[-1]),
        f"skipped files: {len(manifest.get('skipped', []))}",
    ]
    return "\n".join(lines)


def centralized(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The same data pooled at one site ("site-1"): the centralized reference column."""
    pooled: dict[str, list] = {split: [] for split in SPLITS}
    for parts in manifest["sites"].values():
        for split in SPLITS:
            pooled[split].extend(parts[split])
    return {**manifest, "scheme": "centralized", "sites": {"site-1": pooled}}
