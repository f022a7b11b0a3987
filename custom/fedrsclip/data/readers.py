"""List the images of a remote-sensing scene dataset as (relative path, label) records."""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from .classnames import class_names_for, load_class_name_overrides
from .errors import DataError, ImageReadError
from .images import IMAGE_EXTENSIONS, check_image


@dataclass(frozen=True)
class _Layout:
    images_subdir: str | None  # folder between the root and the class folders, if any
    expected: str  # shown in error messages


_LAYOUTS: dict[str, _Layout] = {
    "ucmerced": _Layout(
        "Images",
        "<root>/Images/<class>/*.tif (the official UCMerced_LandUse.zip unpacks to "
        "UCMerced_LandUse/Images/; <root>/<class>/*.tif is accepted too)",
    ),
    "optimal31": _Layout(
        "Images",
        "<root>/Images/<class>/*.jpg (OPTIMAL-31 unpacks to OPTIMAL-31/Images/; "
        "<root>/<class>/*.jpg is accepted too)",
    ),
    "nwpu": _Layout(
        None,
        "<root>/<class>/*.jpg (NWPU-RESISC45 unpacks to NWPU-RESISC45/<class>/)",
    ),
    "imagefolder": _Layout(None, "<root>/<class>/<image files>"),
    "synthetic": _Layout(
        None,
        "<root>/<class>/*.png (create one with `fedrsclip data synth --out DIR`)",
    ),
}

DATASETS: tuple[str, ...] = tuple(_LAYOUTS)

# Files that commonly sit next to images and are not images: ignored silently.
_QUIET_SUFFIXES = frozenset(
    {".txt", ".md", ".rst", ".json", ".yaml", ".yml", ".csv", ".tsv", ".xml", ".html",
     ".htm", ".pdf", ".tfw", ".jgw", ".pgw", ".wld", ".prj", ".aux", ".ovr", ".ini",
     ".db", ".log", ".ds_store"}
)
_QUIET_NAMES = frozenset({"thumbs.db", "desktop.ini", "license", "readme", "__macosx"})

_PROGRESS_THRESHOLD = 200  # below this many files a progress bar is just noise
_MAX_FILE_WARNINGS = 20  # individual warnings before switching to one summary


@dataclass
class DatasetListing:
    """What list_dataset found.

    `root` is the folder whose children are the class folders; `records` hold
    paths relative to it (posix) with the index into `classes`/`class_folders`.
    """

    name: str
    root: Path
    class_folders: list[str]
    classes: list[str]
    records: list[tuple[str, int]]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def class_counts(self) -> list[int]:
        """Number of records per class, indexed by label."""
        counts = [0] * len(self.classes)
        for _, label in self.records:
            counts[label] += 1
        return counts


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name.lower() in _QUIET_NAMES


def _is_quiet(name: str) -> bool:
    low = name.lower()
    return _is_hidden(name) or Path(low).suffix in _QUIET_SUFFIXES or low.startswith("readme")


def _class_dirs(base: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(base) if e.is_dir() and not _is_hidden(e.name))


def _has_images(folder: Path, depth: int = 1) -> bool:
    """True when folder (or, with depth > 1, a sub-folder) directly holds image files."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return False
    if any(e.is_file() and Path(e.name).suffix.lower() in IMAGE_EXTENSIONS for e in entries):
        return True
    return depth > 1 and any(
        e.is_dir() and not _is_hidden(e.name) and _has_images(Path(e.path), depth - 1)
        for e in entries
    )


def _resolve_base(dataset: str, root: Path) -> Path:
    if not root.exists():
        raise DataError(
            f"dataset root not found: {root}; pass --root pointing to the {dataset} folder, "
            f"laid out as {_LAYOUTS[dataset].expected}"
        )
    if not root.is_dir():
        raise DataError(f"dataset root {root} is a file; pass the folder that holds the dataset")
    sub = _LAYOUTS[dataset].images_subdir
    if sub is not None:
        for candidate in (sub, sub.lower()):
            if (root / candidate).is_dir():
                return root / candidate
    return root


def _layout_error(dataset: str, base: Path) -> DataError:
    msg = (
        f"no class folders with images found under {base} for dataset '{dataset}'; "
        f"expected {_LAYOUTS[dataset].expected}"
    )
    loose = sum(
        1 for e in os.scandir(base) if e.is_file() and Path(e.name).suffix.lower() in IMAGE_EXTENSIONS
    )
    if loose:
        msg += f". Found {loose} image files directly in {base}: put each class in its own sub-folder"
    else:
        # A common mistake: pointing at the folder that contains the unpacked dataset.
        for name in _class_dirs(base):
            child = base / name
            sub = _LAYOUTS[dataset].images_subdir
            inner = child / sub if sub and (child / sub).is_dir() else child
            if _has_images(inner, depth=2) and not _has_images(inner, depth=1):
                msg += f". Did you mean --root {child}?"
                break
    return DataError(msg)


def _scan_class(base: Path, folder: str) -> tuple[list[str], list[tuple[str, str]], list[str]]:
    """Images (relative to base, sorted), unsupported files and sub-folders of one class folder.

    Class folders must hold their images directly: the datasets are flat, and
    recursing would silently turn a --root one level too high into a dataset
    whose "classes" are dataset folders.
    """
    images: list[str] = []
    unsupported: list[tuple[str, str]] = []
    subdirs: list[str] = []
    for entry in sorted(os.scandir(base / folder), key=lambda e: e.name):
        rel = f"{folder}/{entry.name}"
        if _is_hidden(entry.name):  # .DS_Store, ._x.png AppleDouble files, Thumbs.db
            continue
        if entry.is_dir():
            subdirs.append(rel)
            continue
        suffix = Path(entry.name).suffix.lower()
        if suffix in IMAGE_EXTENSIONS:
            images.append(rel)
        elif not _is_quiet(entry.name):
            unsupported.append(
                (rel, f"unsupported file type '{suffix or entry.name}' "
                      f"(images must be {', '.join(sorted(IMAGE_EXTENSIONS))})")
            )
    return images, unsupported, subdirs


def _check_all(base: Path, rels: list[str], progress: bool) -> dict[str, str]:
    """Decode every image; return {relative path: reason} for the broken ones."""
    bad: dict[str, str] = {}

    def check(rel: str) -> tuple[str, str | None]:
        try:
            check_image(base / rel)
        except ImageReadError as exc:
            return rel, exc.reason
        return rel, None

    show = progress and len(rels) > _PROGRESS_THRESHOLD
    workers = min(8, os.cpu_count() or 1)
    with tqdm(total=len(rels), desc="checking images", unit="img", disable=not show) as bar:
        if workers > 1 and len(rels) > 64:
            # Pillow releases the GIL while decoding, so threads give a real speed-up.
            with ThreadPoolExecutor(max_workers=workers) as pool:
                results = pool.map(check, rels, chunksize=32)
                for rel, reason in results:
                    if reason is not None:
                        bad[rel] = reason
                    bar.update(1)
        else:
            for rel in rels:
                _, reason = check(rel)
                if reason is not None:
                    bad[rel] = reason
                bar.update(1)
    return bad


def _warn_skipped(base: Path, skipped: list[tuple[str, str]]) -> None:
    for rel, reason in skipped[:_MAX_FILE_WARNINGS]:
        warnings.warn(f"skipping {base / rel}: {reason}", stacklevel=3)
    if len(skipped) > _MAX_FILE_WARNINGS:
        warnings.warn(
            f"skipped {len(skipped) - _MAX_FILE_WARNINGS} more files under {base} "
            "(the manifest's 'skipped' list has all of them)",
            stacklevel=3,
        )


def list_dataset(
    dataset: str,
    root: str | Path,
    class_names_file: str | Path | None = None,
    verify: bool = True,
    progress: bool = True,
) -> DatasetListing:
    """Find the class folders and images of a dataset.

    dataset: one of DATASETS. Each class folder must hold its images directly.
    With verify, every image is decoded once and the unreadable ones are skipped
    (listed in `skipped`, with a warning). Hidden files and README/metadata text
    files are ignored silently; other files and sub-folders are listed in
    `skipped`. class_names_file: JSON/YAML {folder: readable name} overrides.
    """
    if dataset not in _LAYOUTS:
        raise DataError(
            f"unknown dataset '{dataset}'; valid datasets are: {', '.join(DATASETS)}"
        )
    root = Path(root).expanduser().resolve()
    base = _resolve_base(dataset, root)

    folders = _class_dirs(base)
    scanned = {f: _scan_class(base, f) for f in folders}
    if not any(scanned[f][0] for f in folders):
        raise _layout_error(dataset, base)
    for folder in folders:
        images, _, subdirs = scanned[folder]
        if not images:
            hint = (
                f" (it has sub-folders such as {subdirs[0]}: class folders must hold their images "
                "directly; is --root one level too high?)" if subdirs else ""
            )
            raise DataError(
                f"class folder {base / folder} contains no images{hint}; remove it or restore its "
                f"images (expected layout: {_LAYOUTS[dataset].expected})"
            )
    if len(folders) < 2:
        raise DataError(
            f"found only {len(folders)} class folder ({', '.join(folders)}) under {base}; "
            "scene classification needs at least 2 classes"
        )

    other_files = [entry for f in folders for entry in scanned[f][1]]
    other_files += [
        (d, "sub-folder ignored (class folders must hold their images directly)")
        for f in folders for d in scanned[f][2]
    ]
    if other_files:
        warnings.warn(
            f"ignored {len(other_files)} entries that are not images under {base} "
            f"(first: {other_files[0][0]}); they are listed as skipped",
            stacklevel=2,
        )

    all_images = [rel for f in folders for rel in scanned[f][0]]
    bad = _check_all(base, all_images, progress) if verify else {}
    image_skips = sorted(bad.items())
    _warn_skipped(base, image_skips)
    skipped = sorted(other_files + image_skips)

    records: list[tuple[str, int]] = []
    for label, folder in enumerate(folders):
        kept = [rel for rel in scanned[folder][0] if rel not in bad]
        if not kept:
            raise DataError(
                f"class folder {base / folder} has no readable images "
                f"({len(scanned[folder][0])} skipped as unreadable); fix or remove it"
            )
        records.extend((rel, label) for rel in kept)

    overrides = load_class_name_overrides(class_names_file) if class_names_file else {}
    unknown = sorted(set(overrides) - set(folders))
    if unknown:
        warnings.warn(
            f"class-names file {class_names_file} names folders that are not in {base}: "
            f"{', '.join(unknown)}",
            stacklevel=2,
        )
    classes = class_names_for(folders, overrides)
    dupes = sorted({c for c in classes if classes.count(c) > 1})
    if dupes:
        warnings.warn(
            f"several class folders get the same readable name ({', '.join(dupes)}); "
            "give them distinct names with a class-names file",
            stacklevel=2,
        )
    return DatasetListing(
        name=dataset,
        root=base,
        class_folders=folders,
        classes=classes,
        records=records,
        skipped=skipped,
    )
