"""Image features from the frozen image encoder, computed once per image and cached on disk per site.

The cache key covers the backbone and its weights (fingerprint), the preprocessing, and every file's identity
(path, size, modification time, label): any change rebuilds the cache. A cache that does not load, or whose
content does not match its key, is rebuilt with a warning, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from .backbone import Backbone, preprocess_signature
from .atomic import atomic_torch_save

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


@dataclass
class FeatureSet:
    """Features of one split of one site. Stored in fp16; cast to fp32 per batch."""

    global_feats: torch.Tensor  # [N, E] pooled, projected image embeddings
    tokens: torch.Tensor  # [N, V, E] projected patch tokens
    labels: torch.Tensor  # [N]
    paths: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # unreadable files (path, reason)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @staticmethod
    def concat(sets: Sequence["FeatureSet"]) -> "FeatureSet":
        return FeatureSet(
            torch.cat([s.global_feats for s in sets]),
            torch.cat([s.tokens for s in sets]),
            torch.cat([s.labels for s in sets]),
            [p for s in sets for p in s.paths],
            [x for s in sets for x in s.skipped],
        )


def cache_key(backbone: Backbone, items: Sequence[tuple[Path, int]]) -> str:
    digest = hashlib.sha256()
    digest.update(f"format={CACHE_FORMAT}|{backbone.fingerprint}|{preprocess_signature(backbone.preprocess)}".encode())
    for path, label in items:
        stat = Path(path).stat()
        digest.update(json.dumps([str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, int(label)]).encode())
    return digest.hexdigest()


@torch.no_grad()
def extract_features(
    backbone: Backbone,
    items: Sequence[tuple[Path, int]],
    batch_size: int = 64,
    progress: bool = True,
    desc: str = "image features",
) -> FeatureSet:
    """Run the frozen image encoder over `items` [(path, label)]; unreadable files are skipped with a warning."""
    from .data.images import ImageReadError, load_rgb

    globals_, tokens_, labels, paths, skipped = [], [], [], [], []
    bar = tqdm(total=len(items), desc=desc, unit="img", disable=not progress, leave=False)
    for start in range(0, len(items), batch_size):
        batch, batch_labels, batch_paths = [], [], []
        for path, label in items[start : start + batch_size]:
            try:
                image = load_rgb(path)
            except ImageReadError as exc:
                log.warning("skipping unreadable image %s: %s", path, exc)
                skipped.append((str(path), str(exc)))
                continue
            batch.append(backbone.preprocess(image))
            batch_labels.append(int(label))
            batch_paths.append(str(path))
        if batch:
            pooled, toks = backbone.encode_images(torch.stack(batch))
            globals_.append(pooled.half().cpu())
            tokens_.append(toks.half().cpu())
            labels.extend(batch_labels)
            paths.extend(batch_paths)
        bar.update(min(batch_size, len(items) - start))
    bar.close()
    if not labels:
        raise ValueError(f"no readable images among {len(items)} files ({desc})")
    return FeatureSet(torch.cat(globals_), torch.cat(tokens_), torch.tensor(labels), paths, skipped)


def _load_cache(path: Path, key: str) -> FeatureSet | None:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("key") != key:
            log.warning("feature cache %s is stale (backbone, preprocessing or files changed): rebuilding", path)
            return None
        fs = FeatureSet(blob["global"], blob["tokens"], blob["labels"], list(blob["paths"]),
                        [tuple(x) for x in blob["skipped"]])
        n = len(fs.labels)
        if fs.global_feats.shape[0] != n or fs.tokens.shape[0] != n or len(fs.paths) != n:
            raise ValueError("inconsistent tensor sizes")
        if not (torch.isfinite(fs.global_feats).all() and torch.isfinite(fs.tokens).all()):
            raise ValueError("non-finite features")
        return fs
    except Exception as exc:  # a truncated or foreign file: never trusted
        log.warning("feature cache %s is unreadable or corrupt (%s): rebuilding", path, exc)
        return None


def cached_features(
    backbone: Backbone,
    items: Sequence[tuple[Path, int]],
    cache_dir: str | Path,
    name: str,
    batch_size: int = 64,
    progress: bool = True,
) -> FeatureSet:
    """Features for `items`, from `<cache_dir>/<name>-<key>.pt` when it matches, else extracted and saved."""
    if not items:
        raise ValueError(f"{name}: no images to extract features from")
    key = cache_key(backbone, items)
    path = Path(cache_dir) / f"{name}-{key[:16]}.pt"
    if path.is_file():
        cached = _load_cache(path, key)
        if cached is not None:
            log.info("%s: %d image features from cache %s", name, len(cached), path)
            return cached
    for old in Path(cache_dir).glob(f"{name}-*.pt"):  # stale versions of this split
        if old != path:
            old.unlink(missing_ok=True)
    log.info("%s: extracting features of %d images with %s", name, len(items), backbone.description)
    fs = extract_features(backbone, items, batch_size, progress, desc=f"{name} features")
    blob = {"key": key, "global": fs.global_feats, "tokens": fs.tokens, "labels": fs.labels,
            "paths": fs.paths, "skipped": [list(x) for x in fs.skipped]}
    atomic_torch_save(path, blob)
    return fs
