"""List the images of a remote-sensing scene dataset as (relative path, label) records."""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from . import bigearthnet
from .classnames import check_class_names, class_names_for, load_class_name_overrides
from .composite import ImageSettings, image_settings
from .errors import DataError, ImageReadError
from .images import IMAGE_EXTENSIONS, check_image


@dataclass(frozen=True)
class _Layout:
    images_subdirs: tuple[str, ...]  # folders between the root and the class (or patch) folders, tried in order
    expected: str  # shown in error messages
    modality: str = "rgb"  # fedrsclip.data.composite.MODALITIES: how its images become the encoder's RGB
    patches: bool = False  # one folder per image with a label file (BigEarthNet), not one folder per class
    paired: bool = False  # Sentinel-1 and Sentinel-2 patches of the same scenes, side by side (BigEarthNet-MM)


_LAYOUTS: dict[str, _Layout] = {
    "ucmerced": _Layout(
        ("Images",),
        "<root>/Images/<class>/*.tif (the official UCMerced_LandUse.zip unpacks to "
        "UCMerced_LandUse/Images/; <root>/<class>/*.tif is accepted too)",
    ),
    "optimal31": _Layout(
        ("Images",),
        "<root>/Images/<class>/*.jpg (OPTIMAL-31 unpacks to OPTIMAL-31/Images/; <root>/<class>/*.jpg is accepted too)",
    ),
    "nwpu": _Layout(
        (),
        "<root>/<class>/*.jpg (NWPU-RESISC45 unpacks to NWPU-RESISC45/<class>/)",
    ),
    "eurosat": _Layout(
        ("2750", "EuroSAT"),
        "<root>/<class>/*.jpg (EuroSAT.zip, the RGB version, unpacks to 2750/<class>/)",
    ),
    "eurosat-ms": _Layout(
        ("ds/images/remote_sensing/otherDatasets/sentinel_2/tif", "EuroSATallBands", "tif"),
        "<root>/<class>/*.tif with 13 Sentinel-2 bands (EuroSATallBands.zip unpacks to "
        "ds/images/remote_sensing/otherDatasets/sentinel_2/tif/<class>/)",
        modality="s2",
    ),
    "bigearthnet-s2": _Layout(
        ("S2", "BigEarthNet-v1.0"),
        "<root>/<patch>/<patch>_B02.tif ... and <patch>_labels_metadata.json (BigEarthNet-S2 v1.0 unpacks to "
        "BigEarthNet-v1.0/<patch>/)",
        modality="s2",
        patches=True,
    ),
    "bigearthnet-s1": _Layout(
        ("S1", "BigEarthNet-S1-v1.0"),
        "<root>/<patch>/<patch>_VV.tif, <patch>_VH.tif and <patch>_labels_metadata.json (BigEarthNet-S1 v1.0 "
        "unpacks to BigEarthNet-S1-v1.0/<patch>/)",
        modality="s1",
        patches=True,
    ),
    "bigearthnet-mm": _Layout(
        (),
        "<root>/S2/<patch>/ (or BigEarthNet-v1.0/) and <root>/S1/<patch>/ (or BigEarthNet-S1-v1.0/), each S1 "
        "patch naming its S2 patch in corresponding_s2_patch (the two BigEarthNet archives unpacked side by side)",
        modality="s2",
        patches=True,
        paired=True,
    ),
    "imagefolder": _Layout((), "<root>/<class>/<image files>"),
    "synthetic": _Layout(
        (),
        "<root>/<class>/*.png (create one with `fedrsclip data synth --out DIR`)",
    ),
}

DATASETS: tuple[str, ...] = tuple(_LAYOUTS)

# Files that commonly sit next to images and are not images: ignored silently.
_QUIET_SUFFIXES = frozenset(
    {
        ".txt",
        ".md",
        ".rst",
        ".json",
        ".yaml",
        ".yml",
        ".csv",
        ".tsv",
        ".xml",
        ".html",
        ".htm",
        ".pdf",
        ".tfw",
        ".jgw",
        ".pgw",
        ".wld",
        ".prj",
        ".aux",
        ".ovr",
        ".ini",
        ".db",
        ".log",
        ".ds_store",
    }
)
_QUIET_NAMES = frozenset({"thumbs.db", "desktop.ini", "license", "readme", "__macosx"})

_PROGRESS_THRESHOLD = 200  # below this many files a progress bar is just noise
_MAX_FILE_WARNINGS = 20  # individual warnings before switching to one summary


def dataset_modality(dataset: str) -> str:
    """The modality a dataset's images have (rgb, s2, s1); DataError for an unknown dataset."""
    if dataset not in _LAYOUTS:
        raise DataError(f"unknown dataset '{dataset}'; valid datasets are: {', '.join(DATASETS)}")
    return _LAYOUTS[dataset].modality


def skip_reason(kind: str, detail: str) -> str:
    """A skipped entry's reason: "<kind>: <detail>"; the partition report counts entries by kind."""
    return f"{kind}: {detail}"


@dataclass
class DatasetListing:
    """What list_dataset found.

    `root` is the folder whose children are the class (or patch) folders; `records` hold paths relative to it
    (posix) with the index into `classes` (for multi-label data, the first of the record's labels, used to
    stratify splits and partitions); `label_sets` {path: all its labels} for multi-label data, else None.
    `class_folders` is None where classes are not folders (BigEarthNet's 19-class nomenclature).
    `partners` {path: {modality: partner path}} for paired multi-modal data (BigEarthNet-MM: each record is a
    scene's Sentinel-2 patch, its partner the Sentinel-1 patch of the same scene), else None.
    """

    name: str
    root: Path
    class_folders: list[str] | None
    classes: list[str]
    records: list[tuple[str, int]]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    modality: str = "rgb"
    label_sets: dict[str, list[int]] | None = None
    partners: dict[str, dict[str, str]] | None = None

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


def _outside(path: str | Path, root: Path) -> bool:
    """True when path, symlinks resolved, leaves root (itself resolved)."""
    return not Path(path).resolve().is_relative_to(root)


def _has_images(folder: Path, depth: int = 1) -> bool:
    """True when folder (or, with depth > 1, a sub-folder) directly holds image files."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return False
    if any(e.is_file() and Path(e.name).suffix.lower() in IMAGE_EXTENSIONS for e in entries):
        return True
    return depth > 1 and any(
        e.is_dir() and not _is_hidden(e.name) and _has_images(Path(e.path), depth - 1) for e in entries
    )


def _resolve_base(dataset: str, root: Path) -> Path:
    if not root.exists():
        raise DataError(
            f"dataset root not found: {root}; pass --root pointing to the {dataset} folder, "
            f"laid out as {_LAYOUTS[dataset].expected}"
        )
    if not root.is_dir():
        raise DataError(f"dataset root {root} is a file; pass the folder that holds the dataset")
    for sub in _LAYOUTS[dataset].images_subdirs:
        for candidate in (sub, sub.lower()):
            if (root / candidate).is_dir():
                return root / candidate
    return root


OUTSIDE = "outside the data root"  # the skip kind of an entry (a symlink) that resolves out of the data root


def _outside_note(skipped: Sequence[tuple[str, str]], root: Path) -> str:
    """What a "nothing found" message adds when entries were skipped because they lead out of the data root
    (symlinks): how many, the first and where it leads, why, and what to do; "" when none was."""
    outside = [(rel, reason) for rel, reason in skipped if reason.startswith(OUTSIDE)]
    if not outside:
        return ""
    n = len(outside)
    rel, reason = outside[0]
    return (
        f"; {n} entr{'y' if n == 1 else 'ies'} there {'was' if n == 1 else 'were'} skipped because "
        f"{'it resolves' if n == 1 else 'they resolve'} outside the data root {root} (symlinks; first: {rel}, "
        f"{reason.removeprefix(OUTSIDE + ': ')}): a site reads only files under its data root, so give --root the "
        "folder the links lead to, or copy the data in instead of linking it (README 'Datasets (Fed-RSIC)': paths stay "
        "inside the data root)"
    )


def _layout_error(
    dataset: str, base: Path, skipped: Sequence[tuple[str, str]] = (), root: Path | None = None
) -> DataError:
    msg = (
        f"no class folders with images found under {base} for dataset '{dataset}'; "
        f"expected {_LAYOUTS[dataset].expected}"
    )
    note = _outside_note(skipped, root or base)
    if note:  # the folders are there, but as links out of the root
        return DataError(msg + note)
    loose = sum(1 for e in os.scandir(base) if e.is_file() and Path(e.name).suffix.lower() in IMAGE_EXTENSIONS)
    if loose:
        msg += f". Found {loose} image files directly in {base}: put each class in its own sub-folder"
    else:
        # A common mistake: pointing at the folder that contains the unpacked dataset.
        for name in _class_dirs(base):
            child = base / name
            subs = [child / s for s in _LAYOUTS[dataset].images_subdirs if (child / s).is_dir()]
            inner = subs[0] if subs else child
            if _has_images(inner, depth=2) and not _has_images(inner, depth=1):
                msg += f". Did you mean --root {child}?"
                break
    return DataError(msg)


def _scan_class(base: Path, folder: str, root: Path) -> tuple[list[str], list[tuple[str, str]], list[str]]:
    """Images (relative to base, sorted), skipped files and sub-folders of one class folder.

    Class folders must hold their images directly: the datasets are flat, and
    recursing would silently turn a --root one level too high into a dataset
    whose "classes" are dataset folders. Symlinks that lead out of `root` are skipped.
    """
    images: list[str] = []
    unsupported: list[tuple[str, str]] = []
    subdirs: list[str] = []
    for entry in sorted(os.scandir(base / folder), key=lambda e: e.name):
        rel = f"{folder}/{entry.name}"
        if _is_hidden(entry.name):  # .DS_Store, ._x.png AppleDouble files, Thumbs.db
            continue
        if entry.is_symlink() and _outside(entry.path, root):
            target = Path(entry.path).resolve()
            unsupported.append((rel, skip_reason(OUTSIDE, f"a symlink to {target}")))
            continue
        if entry.is_dir():
            subdirs.append(rel)
            continue
        suffix = Path(entry.name).suffix.lower()
        if suffix in IMAGE_EXTENSIONS:
            images.append(rel)
        elif not _is_quiet(entry.name):
            unsupported.append(
                (
                    rel,
                    skip_reason(
                        "unsupported file type",
                        f"'{suffix or entry.name}' (images must be {', '.join(sorted(IMAGE_EXTENSIONS))})",
                    ),
                )
            )
    return images, unsupported, subdirs


def _check_all(base: Path, rels: list[str], progress: bool, settings: ImageSettings, extra=None) -> dict[str, str]:
    """Decode every image (with `extra(rel)` run first, if given); {relative path: reason} of the broken ones."""
    bad: dict[str, str] = {}

    def check(rel: str) -> tuple[str, str | None]:
        try:
            if extra is not None:
                extra(rel)
            check_image(base / rel, settings)
        except ImageReadError as exc:
            return rel, skip_reason(exc.kind, exc.reason)
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


def subsample(folder: str, images: list[str], per_class: int | None, fraction: float | None, seed: int) -> list[str]:
    """A seeded subset of one class folder's images (in their listed order): at most `per_class`, at most
    `fraction` of them (rounded, at least one); the same folder, list and seed give the same subset."""
    keep = len(images)
    if fraction is not None:
        keep = min(keep, max(1, round(fraction * len(images))))
    if per_class is not None:
        keep = min(keep, per_class)
    chosen = set(random.Random(f"{seed}:{folder}").sample(range(len(images)), keep))
    return [rel for i, rel in enumerate(images) if i in chosen]


def list_dataset(
    dataset: str,
    root: str | Path,
    class_names_file: str | Path | None = None,
    verify: bool = True,
    progress: bool = True,
    image: ImageSettings | None = None,
    check_names: bool = True,
    per_class: int | None = None,
    fraction: float | None = None,
    subset_seed: int = 0,
) -> DatasetListing:
    """Find the class folders (or BigEarthNet patches) and images of a dataset.

    dataset: one of DATASETS. Each class folder must hold its images directly.
    With verify, every image is decoded once (through `image`, default: the dataset's modality with its default
    composite, so a patch must hold the composite's bands) and the unreadable ones are skipped (listed in
    `skipped` as "<kind>: <detail>", with a warning). Hidden files and README/metadata text files are ignored
    silently; other files, sub-folders and symlinks leading out of the root are listed in `skipped`.
    class_names_file: JSON/YAML {folder: readable name} overrides. With check_names, two folders with the same
    class name or a name too long for the text encoder are a DataError naming them.
    per_class / fraction: a quick look at a large dataset: keep at most `per_class` images of each class folder
    and/or that fraction of them (at least one), drawn with `subset_seed`, before anything is decoded, so the
    cost of verification, extraction and training shrinks with it (class-folder datasets only).
    """
    if dataset not in _LAYOUTS:
        raise DataError(f"unknown dataset '{dataset}'; valid datasets are: {', '.join(DATASETS)}")
    layout = _LAYOUTS[dataset]
    if (per_class is not None or fraction is not None) and (layout.paired or layout.patches):
        raise DataError(f"--per-class and --fraction apply to class-folder datasets; {dataset} is made of patches")
    image = image or image_settings(dataset_modality=layout.modality)
    root = Path(root).expanduser().resolve()
    base = _resolve_base(dataset, root)
    if layout.paired:
        return _list_pairs(dataset, root, verify, progress)
    if layout.patches:
        return _list_patches(dataset, root, base, verify, progress, image)

    folders = _class_dirs(base)
    outside = [f for f in folders if _outside(base / f, root)]
    folders = [f for f in folders if f not in outside]
    scanned = {f: _scan_class(base, f, root) for f in folders}
    if per_class is not None or fraction is not None:
        scanned = {
            f: (subsample(f, images, per_class, fraction, subset_seed), *rest) for f, (images, *rest) in scanned.items()
        }
    outside_skips = [(f, skip_reason(OUTSIDE, f"class folder resolves to {(base / f).resolve()}")) for f in outside]
    if not any(scanned[f][0] for f in folders):
        raise _layout_error(dataset, base, outside_skips + [e for f in folders for e in scanned[f][1]], root)
    for folder in folders:
        images, _, subdirs = scanned[folder]
        if not images:
            hint = (
                f" (it has sub-folders such as {subdirs[0]}: class folders must hold their images "
                "directly; is --root one level too high?)"
                if subdirs
                else ""
            )
            raise DataError(
                f"class folder {base / folder} contains no images{hint}; remove it or restore its "
                f"images (expected layout: {layout.expected}){_outside_note(scanned[folder][1], root)}"
            )
    if len(folders) < 2:
        raise DataError(
            f"found only {len(folders)} class folder ({', '.join(folders)}) under {base}; "
            "scene classification needs at least 2 classes"
        )

    other_files = [entry for f in folders for entry in scanned[f][1]]
    other_files += [
        (d, skip_reason("sub-folder", "ignored (class folders must hold their images directly)"))
        for f in folders
        for d in scanned[f][2]
    ]
    other_files += outside_skips
    if other_files:
        warnings.warn(
            f"ignored {len(other_files)} entries that are not images under {base} "
            f"(first: {other_files[0][0]}); they are listed as skipped",
            stacklevel=2,
        )

    all_images = [rel for f in folders for rel in scanned[f][0]]
    bad = _check_all(base, all_images, progress, image) if verify else {}
    image_skips = sorted(bad.items())
    _warn_skipped(base, image_skips)
    skipped = sorted(other_files + image_skips)

    records: list[tuple[str, int]] = []
    for label, folder in enumerate(folders):
        kept = [rel for rel in scanned[folder][0] if rel not in bad]
        if not kept:
            raise DataError(
                f"class folder {base / folder} has no readable images "
                f"({len(scanned[folder][0])} skipped: {bad[scanned[folder][0][0]]}); fix or remove it"
            )
        records.extend((rel, label) for rel in kept)

    overrides = load_class_name_overrides(class_names_file) if class_names_file else {}
    unknown = sorted(set(overrides) - set(folders))
    if unknown:
        warnings.warn(
            f"class-names file {class_names_file} names folders that are not in {base}: {', '.join(unknown)}",
            stacklevel=2,
        )
    classes = class_names_for(folders, overrides)
    if check_names:
        check_class_names(folders, classes)
    return DatasetListing(
        name=dataset,
        root=base,
        class_folders=folders,
        classes=classes,
        records=records,
        skipped=skipped,
        modality=layout.modality,
    )


def _list_patches(
    dataset: str, root: Path, base: Path, verify: bool, progress: bool, image: ImageSettings
) -> DatasetListing:
    """BigEarthNet: every sub-folder with a label file is a patch; labels mapped to the 19-class nomenclature."""
    layout = _LAYOUTS[dataset]
    skipped: list[tuple[str, str]] = []
    patches: list[str] = []
    for name in _class_dirs(base):
        if _outside(base / name, root):
            skipped.append((name, skip_reason(OUTSIDE, f"resolves to {(base / name).resolve()}")))
        elif bigearthnet.is_patch(base / name):
            patches.append(name)
        elif not _is_quiet(name):
            skipped.append((name, skip_reason("not a patch", f"no {name}{bigearthnet.LABEL_SUFFIX}")))
    if not patches:
        raise DataError(
            f"no BigEarthNet patches found under {base} for dataset '{dataset}'; expected {layout.expected}"
            + _outside_note(skipped, root)
        )
    label_sets: dict[str, list[int]] = {}

    def read_labels(rel: str) -> None:
        label_sets[rel] = bigearthnet.labels_19(base / rel)

    if verify:
        bad = _check_all(base, patches, progress, image, extra=read_labels)
    else:
        bad = {}
        for rel in patches:
            try:
                read_labels(rel)
            except ImageReadError as exc:
                bad[rel] = skip_reason(exc.kind, exc.reason)
    image_skips = sorted(bad.items())
    _warn_skipped(base, image_skips)
    kept = [rel for rel in patches if rel not in bad]
    if not kept:
        raise DataError(
            f"none of the {len(patches)} patches under {base} is usable (first: {image_skips[0][0]}: "
            f"{image_skips[0][1]})"
        )
    return DatasetListing(
        name=dataset,
        root=base,
        class_folders=None,
        classes=list(bigearthnet.CLASSES_19),
        records=[(rel, label_sets[rel][0]) for rel in kept],
        skipped=sorted(skipped + image_skips),
        modality=layout.modality,
        label_sets={rel: label_sets[rel] for rel in kept},
    )


def _modality_folder(dataset: str, root: Path, modality: str) -> str:
    """The sub-folder of a BigEarthNet-MM root that holds `modality`'s patches (S2 or BigEarthNet-v1.0, ...)."""
    single = "bigearthnet-" + modality
    for sub in _LAYOUTS[single].images_subdirs:
        for candidate in (sub, sub.lower()):
            if (root / candidate).is_dir():
                return candidate
    raise DataError(
        f"no {modality.upper()} folder under {root} for dataset '{dataset}' (looked for "
        f"{', '.join(_LAYOUTS[single].images_subdirs)}); expected {_LAYOUTS[dataset].expected}"
    )


def _list_pairs(dataset: str, root: Path, verify: bool, progress: bool) -> DatasetListing:
    """BigEarthNet-MM: scenes = Sentinel-1 patches paired with the Sentinel-2 patch their metadata names.

    Records are the scenes' S2 patches ("S2/<patch>", labels as bigearthnet-s2), `partners` their S1 patches.
    Only complete pairs are scenes: an S1 patch whose S2 partner is absent or unusable, an S2 patch no S1 patch
    names, a second S1 patch naming an S2 patch already paired, and a pair whose two label lists differ are
    skipped, each with its reason. With verify, both patches of a pair are decoded through their modality's
    default composite.
    """
    folders = {m: _modality_folder(dataset, root, m) for m in ("s2", "s1")}
    listings = {
        m: _list_patches(
            "bigearthnet-" + m, root, root / folders[m], verify, progress, image_settings(dataset_modality=m)
        )
        for m in folders
    }
    s2_labels = listings["s2"].label_sets or {}
    skipped = [(f"{folders[m]}/{rel}", reason) for m in folders for rel, reason in listings[m].skipped]
    partners: dict[str, dict[str, str]] = {}
    label_sets: dict[str, list[int]] = {}
    for s1 in sorted(listings["s1"].label_sets or {}):
        s1_rel = f"{folders['s1']}/{s1}"
        try:
            s2 = bigearthnet.s2_partner(root / s1_rel)
        except ImageReadError as exc:
            skipped.append((s1_rel, skip_reason(exc.kind, exc.reason)))
            continue
        s2_rel = f"{folders['s2']}/{s2}"
        if s2 not in s2_labels:
            reason = (
                "its Sentinel-2 patch was skipped"
                if any(rel == s2_rel for rel, _ in skipped)
                else f"its Sentinel-2 patch {s2} is not in {root / folders['s2']}"
            )
            skipped.append((s1_rel, skip_reason("no partner", reason)))
        elif s2_rel in partners:
            skipped.append((s1_rel, skip_reason("no partner", f"{s2} is already paired with {partners[s2_rel]['s1']}")))
        elif listings["s1"].label_sets[s1] != s2_labels[s2]:
            skipped.append(
                (s1_rel, skip_reason("labels differ", f"{listings['s1'].label_sets[s1]} here, {s2_labels[s2]} at {s2}"))
            )
        else:
            partners[s2_rel] = {"s1": s1_rel}
            label_sets[s2_rel] = s2_labels[s2]
    skipped += [
        (f"{folders['s2']}/{s2}", skip_reason("no partner", "no Sentinel-1 patch names it"))
        for s2 in sorted(s2_labels)
        if f"{folders['s2']}/{s2}" not in partners
    ]
    if not partners:
        raise DataError(
            f"no complete Sentinel-1/Sentinel-2 pair under {root} for dataset '{dataset}' "
            f"({len(skipped)} patches skipped; first: {skipped[0][0] if skipped else 'none'}: "
            f"{skipped[0][1] if skipped else ''}); expected {_LAYOUTS[dataset].expected}"
        )
    # Unreadable patches were warned about by _list_patches; pairs refused here are warned now. Unpaired patches
    # (a partial download) are only counted, in the manifest's skipped list and the partition report.
    _warn_skipped(root, [s for s in skipped if s[1].startswith("labels differ")])
    kept = sorted(partners)
    return DatasetListing(
        name=dataset,
        root=root,
        class_folders=None,
        classes=list(bigearthnet.CLASSES_19),
        records=[(rel, label_sets[rel][0]) for rel in kept],
        skipped=sorted(skipped),
        modality="s2",
        label_sets=label_sets,
        partners=partners,
    )
