"""Where a run's images come from: a partition manifest, or a synthetic dataset each site generates itself.

With `data.source: synthetic` every site draws the same seeded synthetic dataset (make_synthetic), lists it and
builds the same partition manifest (build_manifest is seeded), so sites agree on classes and parts without
sharing a file. The dataset is generated once per setting into its own folder and reused while its manifest is
there (the manifest is written last and marks a complete dataset), so image files and feature caches stay valid.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import shutil
from pathlib import Path

from ..config import DataConfig
from .errors import DataError
from .manifest import build_manifest, load_manifest, write_manifest
from .multimodal import build_mm_manifest
from .readers import list_dataset
from .synth import make_synthetic
from .synth_mm import make_synthetic_mm

log = logging.getLogger(__name__)

_MANIFEST = "manifest.json"


def synthetic_settings(data: DataConfig, modalities: str | None = None) -> dict:
    """The settings that determine the synthetic dataset and its partition (`modalities`: synthetic-mm's
    per-site modalities, multimodal.modalities)."""
    if data.source == "synthetic-mm":
        return {
            "kind": "mm",
            "sites": data.synthetic_sites,
            "scenes": data.synthetic_scenes,
            "size": data.synthetic_size,
            "seed": data.synthetic_seed,
            "scheme": data.synthetic_scheme,
            "modalities": modalities,
        }
    return {
        "sites": data.synthetic_sites,
        "classes": data.synthetic_classes,
        "per_class": data.synthetic_per_class,
        "size": data.synthetic_size,
        "seed": data.synthetic_seed,
        "scheme": data.synthetic_scheme,
    }


def synthetic_folder(data: DataConfig, base_dir: str | Path, modalities: str | None = None) -> Path:
    """`<base_dir>/synthetic-<digest of the settings>`: one folder per setting, never mixed up."""
    settings = synthetic_settings(data, modalities)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return Path(base_dir).expanduser() / f"synthetic-{digest}"


def synthetic_manifest(
    data: DataConfig, base_dir: str | Path, progress: bool = False, modalities: str | None = None
) -> Path:
    """Generate (once) the configured synthetic dataset under `base_dir` and return its manifest's path.

    `data.synthetic_dir`, when set, replaces `base_dir`. A file lock serialises processes preparing the same
    folder (two jobs starting at once at one site): the second waits and reuses the first one's dataset.
    data.source synthetic-mm needs `modalities` (multimodal.modalities: what each site holds).
    """
    if data.source == "synthetic-mm" and not modalities:
        raise DataError(
            "data.source is synthetic-mm but no site modalities are given: set multimodal.modalities (e.g. s2,s1)"
        )
    folder = synthetic_folder(data, data.synthetic_dir or base_dir, modalities)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _prepare(data, folder, progress, modalities)


def _prepare(data: DataConfig, folder: Path, progress: bool, modalities: str | None = None) -> Path:
    manifest_path = folder / _MANIFEST
    if manifest_path.is_file():
        try:
            load_manifest(manifest_path)
            return manifest_path
        except DataError as exc:
            log.warning("synthetic dataset manifest %s is unreadable (%s): regenerating", manifest_path, exc)
    settings = synthetic_settings(data, modalities)
    log.info("generating the synthetic dataset %s into %s", settings, folder)
    images = folder / "images"
    if folder.exists():  # an interrupted earlier attempt: this folder is ours (named by the settings' digest)
        shutil.rmtree(folder)
    if data.source == "synthetic-mm":
        make_synthetic_mm(
            images, scenes=data.synthetic_scenes, size=data.synthetic_size, seed=data.synthetic_seed, progress=progress
        )
        listing = list_dataset("bigearthnet-mm", images, verify=False, progress=progress)
        manifest = build_mm_manifest(
            listing, data.synthetic_sites, modalities, data.synthetic_scheme, data.synthetic_seed
        )
    else:
        make_synthetic(
            images,
            classes=data.synthetic_classes,
            per_class=data.synthetic_per_class,
            size=data.synthetic_size,
            seed=data.synthetic_seed,
            progress=progress,
        )
        listing = list_dataset("synthetic", images, verify=False, progress=progress)
        manifest = build_manifest(listing, data.synthetic_sites, data.synthetic_scheme, data.synthetic_seed)
    manifest["synthetic"] = settings
    write_manifest(manifest, manifest_path)
    return manifest_path
