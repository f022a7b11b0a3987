"""Image features from the frozen image encoder, computed once per image and cached on disk per site.

Images reach the encoder through `fedrsclip.data.images.load_rgb` with the site's ImageSettings (composite and
scaling), the same function `fedrsclip data preview` uses. The cache key covers the backbone and its weights
(fingerprint), the preprocessing, the image settings, and every file's path, content digest (sha256, remembered
per file identity: fedrsclip.data.digests) and label: any change rebuilds the cache. A cache that does not load,
or whose content does not match its key, is rebuilt with a warning, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from .atomic import atomic_torch_save
from .backbone import Backbone
from .data.composite import DynamicRangeWarning, ImageSettings, describe
from .data.digests import DigestMemo
from .data.errors import DataError, ImageReadError
from .data.images import DEFAULT_SETTINGS, load_rgb

log = logging.getLogger(__name__)

CACHE_FORMAT = 2  # 2: content digests and image settings in the key
PROGRESS_SECONDS = 30.0  # without a progress bar, a log line this often while a long extraction runs

Label = Any  # an int (single-label) or a sequence of ints (multi-label)


@dataclass
class FeatureSet:
    """Features of one split of one site. Stored in fp16; cast to fp32 per batch."""

    global_feats: torch.Tensor  # [N, E] pooled, projected image embeddings
    tokens: torch.Tensor  # [N, V, E] projected patch tokens
    labels: torch.Tensor  # [N] class indices, or [N, K] float multi-hot for multi-label items
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


def _label_key(label: Label) -> int | list[int]:
    return int(label) if isinstance(label, int) else [int(x) for x in label]


def cache_key(
    backbone: Backbone,
    items: Sequence[tuple[Path, Label]],
    image: ImageSettings | None = None,
    memo: DigestMemo | None = None,
) -> str:
    """sha256 over the backbone, its preprocessing, the image settings and every item's (path, content, label)."""
    image = image or DEFAULT_SETTINGS
    memo = memo or DigestMemo(None)
    digest = hashlib.sha256()
    digest.update(
        f"format={CACHE_FORMAT}|{backbone.fingerprint}|{backbone.preprocess_key}|{image.signature()}".encode()
    )
    for path, label in items:
        digest.update(json.dumps([str(Path(path).resolve()), memo.digest(path), _label_key(label)]).encode())
    return digest.hexdigest()


def _labels_tensor(labels: list[Label], num_classes: int | None) -> torch.Tensor:
    if all(isinstance(x, int) for x in labels):
        return torch.tensor(labels)
    if num_classes is None:
        raise ValueError("multi-label items need num_classes (the length of the manifest's class list)")
    hot = torch.zeros(len(labels), num_classes)
    for row, label in enumerate(labels):
        hot[row, list(label)] = 1.0
    return hot


def _warn_dynamic_range(caught: list[str], total: int, image: ImageSettings, desc: str) -> None:
    if caught:
        log.warning(
            "%s: %d of %d images look wrong after scaling (%s), e.g. %s",
            desc,
            len(caught),
            total,
            describe(image),
            caught[0],
        )


class _ImageFiles(torch.utils.data.Dataset):
    """Item i -> (i, the preprocessed image or None, why it is unreadable or None, a dynamic-range warning or None).

    Runs in the DataLoader's workers: decoding and preprocessing there overlap with the encoder.
    """

    def __init__(self, items: Sequence[tuple[Path, Label]], image: ImageSettings, preprocess):
        self.items, self.image, self.preprocess = items, image, preprocess

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None, str | None]:
        path = self.items[index][0]
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", DynamicRangeWarning)
                picture = load_rgb(path, self.image)
        except ImageReadError as exc:
            return index, None, str(exc), None
        odd = next((str(w.message) for w in caught if issubclass(w.category, DynamicRangeWarning)), None)
        return index, self.preprocess(picture), None, odd


def decoding_workers(device: torch.device) -> int:
    """Decoding workers for extraction when none are asked for: none on the CPU, where the encoder's threads already
    use every core and decoding is a few percent of the time (UC Merced, ViT-B/16 on 2 cores: 24 ms of decoding and
    preprocessing against 290 ms of encoding per image; 1 or 2 workers measured no faster); on CUDA, where decoding
    is the bottleneck, one per core but one, at most 8."""
    if device.type == "cpu":
        return 0
    return max(0, min(8, len(os.sched_getaffinity(0)) - 1))


@torch.no_grad()
def extract_features(
    backbone: Backbone,
    items: Sequence[tuple[Path, Label]],
    batch_size: int = 64,
    progress: bool = True,
    desc: str = "image features",
    image: ImageSettings | None = None,
    num_classes: int | None = None,
    num_workers: int | None = None,
) -> FeatureSet:
    """Run the frozen image encoder over `items` [(path, label)]: each image as `load_rgb(path, image)` gives it.

    Batches of `batch_size`; images are decoded and preprocessed by `num_workers` DataLoader worker processes
    (None: `decoding_workers`; 0: in this process). The log gets the images/s whether or not the progress bar shows;
    without the bar (FLARE sites), a line every `PROGRESS_SECONDS` with the count, the images/s and the time left.
    Labels are ints, or sequences of ints for multi-label items (then `num_classes` is needed and the labels
    become a [N, K] multi-hot tensor). Unreadable files are skipped with a warning naming them; images that
    render near-black or saturated are counted in one warning. Raises DataError when no image is readable.
    """
    image = image or DEFAULT_SETTINGS
    backbone.load_image_tower()
    workers = decoding_workers(backbone.device) if num_workers is None else num_workers
    loader = torch.utils.data.DataLoader(
        _ImageFiles(items, image, backbone.preprocess), batch_size=batch_size, num_workers=workers, collate_fn=list
    )
    globals_, tokens_, kept, skipped, odd = [], [], [], [], []
    start = last_note = time.perf_counter()
    done = 0
    with tqdm(total=len(items), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for rows in loader:
            for index, _, error, warning in rows:
                if error is not None:
                    log.warning("skipping %s: %s", items[index][0], error)
                    skipped.append((str(items[index][0]), error))
                if warning is not None:
                    odd.append(warning)
            good = [(index, picture) for index, picture, _, _ in rows if picture is not None]
            if good:
                pooled, toks = backbone.encode_images(torch.stack([picture for _, picture in good]))
                globals_.append(pooled.half().cpu())
                tokens_.append(toks.half().cpu())
                kept.extend(index for index, _ in good)
            bar.update(len(rows))
            done += len(rows)  # a disabled bar counts nothing
            now = time.perf_counter()
            if not progress and now - last_note >= PROGRESS_SECONDS and done < len(items):  # no bar (FLARE sites)
                last_note, rate = now, done / (now - start)
                log.info(
                    "%s: %d/%d images (%.1f images/s, about %.0f s left)",
                    desc,
                    done,
                    len(items),
                    rate,
                    (len(items) - done) / max(rate, 1e-9),
                )
    seconds = time.perf_counter() - start
    log.info(
        "%s: %d images in %.1f s (%.1f images/s; batches of %d, %d decoding workers, %d torch threads)",
        desc,
        len(items),
        seconds,
        len(items) / max(seconds, 1e-9),
        batch_size,
        workers,
        torch.get_num_threads(),
    )
    _warn_dynamic_range(odd, len(items), image, desc)
    if not kept:
        first = f"; the first: {skipped[0][1]}" if skipped else ""
        raise DataError(f"no readable images among {len(items)} files ({desc}){first}")
    labels = [_label_value(items[i][1]) for i in kept]
    return FeatureSet(
        torch.cat(globals_),
        torch.cat(tokens_),
        _labels_tensor(labels, num_classes),
        [str(items[i][0]) for i in kept],
        skipped,
    )


def _label_value(label: Label) -> Label:
    return int(label) if isinstance(label, int) else tuple(int(x) for x in label)


def _load_cache(path: Path, key: str) -> FeatureSet | None:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("key") != key:
            log.warning(
                "feature cache %s is stale (backbone, preprocessing, image settings or files changed): rebuilding", path
            )
            return None
        fs = FeatureSet(
            blob["global"], blob["tokens"], blob["labels"], list(blob["paths"]), [tuple(x) for x in blob["skipped"]]
        )
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
    items: Sequence[tuple[Path, Label]],
    cache_dir: str | Path,
    name: str,
    batch_size: int = 64,
    progress: bool = True,
    image: ImageSettings | None = None,
    num_classes: int | None = None,
    num_workers: int | None = None,
) -> FeatureSet:
    """Features for `items`, from `<cache_dir>/<name>-<key>.pt` when it matches, else extracted and saved.

    image: the site's ImageSettings (default: rgb, auto scaling); part of the key like every file's content.
    num_workers: decoding workers of the extraction (`extract_features`).
    """
    if not items:
        raise ValueError(f"{name}: no images to extract features from")
    memo = DigestMemo(cache_dir)
    key = cache_key(backbone, items, image, memo)
    memo.save()
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
    fs = extract_features(
        backbone,
        items,
        batch_size,
        progress,
        desc=f"{name} features",
        image=image,
        num_classes=num_classes,
        num_workers=num_workers,
    )
    _save_cache(path, key, fs)
    return fs


def _save_cache(path: Path, key: str, fs: FeatureSet) -> None:
    blob = {
        "key": key,
        "global": fs.global_feats,
        "tokens": fs.tokens,
        "labels": fs.labels,
        "paths": fs.paths,
        "skipped": [list(x) for x in fs.skipped],
    }
    atomic_torch_save(path, blob)


def seed_cache(
    backbone: Backbone,
    items: Sequence[tuple[Path, Label]],
    cache_dir: str | Path,
    name: str,
    pool: FeatureSet,
    image: ImageSettings | None = None,
) -> Path:
    """Write the cache `cached_features(backbone, items, cache_dir, name, image=image)` would find, from `pool`:
    features that `extract_features(backbone, ..., image=image)` already gave for these files (each file's row,
    matched by path; labels from `items`). For simulations on one machine whose sites reuse the same images: each
    image is encoded once instead of once per site. KeyError names a file `pool` lacks."""
    memo = DigestMemo(cache_dir)
    key = cache_key(backbone, items, image, memo)
    memo.save()
    row = {path: i for i, path in enumerate(pool.paths)}
    missing = [str(p) for p, _ in items if str(p) not in row]
    if missing:
        raise KeyError(f"{name}: no pooled features for {len(missing)} of {len(items)} files, e.g. {missing[0]}")
    index = torch.tensor([row[str(p)] for p, _ in items])
    labels = [_label_value(label) for _, label in items]
    num_classes = pool.labels.shape[1] if pool.labels.ndim == 2 else None
    fs = FeatureSet(
        pool.global_feats[index], pool.tokens[index], _labels_tensor(labels, num_classes), [str(p) for p, _ in items]
    )
    path = Path(cache_dir) / f"{name}-{key[:16]}.pt"
    _save_cache(path, key, fs)
    return path
