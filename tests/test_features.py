import logging
import os
import shutil
from pathlib import Path

import torch

from fedrsclip.data.manifest import site_split
from fedrsclip.features import cached_features, extract_features


def _items(synth_manifest, n=12):
    return site_split(synth_manifest, "site-1", "train")[:n]


def test_cache_is_reused_and_rebuilt_on_any_change(tiny_backbone, synth_manifest, tmp_path, caplog):
    items = _items(synth_manifest)
    first = cached_features(tiny_backbone, items, tmp_path, "train", progress=False)
    assert len(first) == len(items) and first.tokens.shape[1] == 64 and first.tokens.dtype == torch.float16
    (cache_file,) = tmp_path.glob("train-*.pt")
    stamp = cache_file.stat().st_mtime_ns

    again = cached_features(tiny_backbone, items, tmp_path, "train", progress=False)
    assert cache_file.stat().st_mtime_ns == stamp  # served from the cache
    assert torch.equal(again.tokens, first.tokens)

    # a file's identity changed -> a new key, the stale cache is replaced
    copy = tmp_path / "img.png"
    shutil.copy(items[0][0], copy)
    changed = [(copy, items[0][1])] + items[1:]
    cached_features(tiny_backbone, changed, tmp_path, "train", progress=False)
    assert len(list(tmp_path.glob("train-*.pt"))) == 1 and not cache_file.exists()
    os.utime(copy, ns=(1, 1))
    cached_features(tiny_backbone, changed, tmp_path, "train", progress=False)
    assert len(list(tmp_path.glob("train-*.pt"))) == 1


def test_other_weights_other_cache(tiny_backbone, synth_manifest, tmp_path):
    from dataclasses import replace

    items = _items(synth_manifest, 4)
    cached_features(tiny_backbone, items, tmp_path, "train", progress=False)
    other = replace(tiny_backbone, fingerprint=tiny_backbone.fingerprint + "|other")
    cached_features(other, items, tmp_path, "train", progress=False)
    assert len(list(tmp_path.glob("train-*.pt"))) == 1  # rebuilt under the new key, stale one removed


def test_corrupt_cache_is_rebuilt_not_trusted(tiny_backbone, synth_manifest, tmp_path, caplog):
    items = _items(synth_manifest, 4)
    good = cached_features(tiny_backbone, items, tmp_path, "train", progress=False)
    (cache_file,) = tmp_path.glob("train-*.pt")
    cache_file.write_bytes(cache_file.read_bytes()[:100])  # truncated
    with caplog.at_level(logging.WARNING):
        rebuilt = cached_features(tiny_backbone, items, tmp_path, "train", progress=False)
    assert "corrupt" in caplog.text
    assert torch.equal(rebuilt.global_feats, good.global_feats)


def test_unreadable_image_skipped_and_reported(tiny_backbone, synth_manifest, tmp_path, caplog):
    items = _items(synth_manifest, 3)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with caplog.at_level(logging.WARNING):
        fs = extract_features(tiny_backbone, items + [(broken, 0)], progress=False)
    assert len(fs) == 3 and fs.skipped and "broken.png" in fs.skipped[0][0]
    assert "broken.png" in caplog.text


def test_image_replaced_with_same_size_and_mtime_rebuilds_the_cache(tiny_backbone, synth_manifest, tmp_path):
    # Issue 11 item 12: a file replaced by another of the same size and mtime kept its stale features.
    from PIL import Image

    data = tmp_path / "data"
    data.mkdir()
    items = []
    for i, (path, label) in enumerate(_items(synth_manifest, 3)):
        copy = data / f"img{i}.bmp"  # BMP: the size depends only on the picture's size
        Image.open(path).convert("RGB").save(copy)
        items.append((copy, label))
    cache = tmp_path / "cache"
    first = cached_features(tiny_backbone, items, cache, "train", progress=False)
    target = items[0][0]
    stat = target.stat()
    other = Image.open(items[1][0]).convert("RGB").transpose(Image.Transpose.ROTATE_90)
    other.save(target)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert target.stat().st_size == stat.st_size and target.stat().st_mtime_ns == stat.st_mtime_ns
    again = cached_features(tiny_backbone, items, cache, "train", progress=False)
    fresh = extract_features(tiny_backbone, items, progress=False)
    assert not torch.equal(again.global_feats[0], first.global_feats[0])
    assert torch.equal(again.global_feats, fresh.global_feats)
    assert torch.equal(again.global_feats[1:], first.global_feats[1:])


def test_unchanged_files_are_hashed_once(tiny_backbone, synth_manifest, tmp_path):
    from fedrsclip.data.digests import DigestMemo
    from fedrsclip.features import cache_key

    items = _items(synth_manifest, 5)
    memo = DigestMemo(tmp_path)
    key = cache_key(tiny_backbone, items, memo=memo)
    memo.save()
    assert memo.hashed == 5
    again = DigestMemo(tmp_path)
    assert cache_key(tiny_backbone, items, memo=again) == key and again.hashed == 0
    (tmp_path / "file-digests.json").write_text("{not json")  # a corrupt memo: everything hashed again
    broken = DigestMemo(tmp_path)
    assert cache_key(tiny_backbone, items, memo=broken) == key and broken.hashed == 5


def test_image_settings_are_part_of_the_key(tiny_backbone, synth_manifest, tmp_path):
    from fedrsclip.data.composite import image_settings
    from fedrsclip.features import cache_key

    items = _items(synth_manifest, 2)
    keys = {
        cache_key(tiny_backbone, items, image_settings(**kw))
        for kw in (
            {},
            {"scaling": "percentile"},
            {"scaling": "percentile", "stretch": (1.0, 99.0)},
            {"composite": "G,G,G"},
            {"max_pixels": 10**6},
        )
    }
    assert len(keys) == 5
    first = cached_features(tiny_backbone, items, tmp_path, "train", progress=False)
    grey = cached_features(tiny_backbone, items, tmp_path, "train", progress=False, image=image_settings(composite="G"))
    assert not torch.equal(first.global_feats, grey.global_feats)
    assert len(list(tmp_path.glob("train-*.pt"))) == 1


def test_site_extracts_through_the_manifest_modality(tmp_path):
    # A single-label Sentinel-2 dataset (EuroSAT MS layout): the site composites B04,B03,B02 because the manifest
    # says s2; data.composite changes what it extracts.
    import numpy as np
    import rasterio

    from conftest import tiny_config
    from fedrsclip.data import build_manifest, list_dataset
    from fedrsclip.data.composite import image_settings
    from fedrsclip.site import PromptSite as Site

    rng = np.random.default_rng(0)
    root = tmp_path / "EuroSATallBands"
    for cls in ("Forest", "River"):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            with rasterio.open(
                root / cls / f"{cls}_{i}.tif", "w", driver="GTiff", count=13, height=16, width=16, dtype="uint16"
            ) as ds:
                ds.write(rng.integers(0, 3000, (13, 16, 16)).astype(np.uint16))
    manifest = build_manifest(list_dataset("eurosat-ms", root, progress=False), 1, "uniform", seed=0)
    assert manifest["modality"] == "s2"
    site = Site(tiny_config(cache_dir=tmp_path / "cache"), "site-1", manifest, progress=False)
    items = [(Path(p), label) for p, label in zip(site.train_set.paths, site.train_set.labels.tolist())]
    expected = extract_features(site.backbone, items, progress=False, image=image_settings("s2"))
    assert torch.equal(site.train_set.global_feats, expected.global_feats)
    swir = Site(tiny_config("data.composite=swir", cache_dir=tmp_path / "cache"), "site-1", manifest, progress=False)
    assert not torch.equal(swir.train_set.global_feats, site.train_set.global_feats)


def test_throughput_is_logged_without_a_progress_bar(tiny_backbone, synth_manifest, caplog):
    items = _items(synth_manifest, 5)
    with caplog.at_level(logging.INFO):
        extract_features(tiny_backbone, items, progress=False, desc="train features")
    assert "train features: 5 images in" in caplog.text and "images/s" in caplog.text


def test_decoding_workers_give_the_same_features(tiny_backbone, synth_manifest, tmp_path, caplog):
    items = _items(synth_manifest, 10)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    items = items[:4] + [(broken, 0)] + items[4:]
    inline = extract_features(tiny_backbone, items, batch_size=4, progress=False, num_workers=0)
    with caplog.at_level(logging.WARNING):
        workers = extract_features(tiny_backbone, items, batch_size=4, progress=False, num_workers=2)
    assert torch.equal(workers.global_feats, inline.global_feats) and torch.equal(workers.tokens, inline.tokens)
    assert torch.equal(workers.labels, inline.labels) and workers.paths == inline.paths
    assert workers.skipped == inline.skipped and "broken.png" in caplog.text


def test_no_workers_on_the_cpu_some_on_cuda():
    from fedrsclip.features import decoding_workers

    assert decoding_workers(torch.device("cpu")) == 0
    assert decoding_workers(torch.device("cuda")) == max(0, min(8, len(os.sched_getaffinity(0)) - 1))


def test_seeded_cache_is_what_extraction_would_cache(tiny_backbone, synth_manifest, tmp_path, caplog):
    """features.seed_cache (sites of one machine reusing the same images): the cache it writes is the one
    cached_features finds for those items, with each file's own features and the items' labels."""
    import pytest

    from fedrsclip.features import seed_cache

    items = _items(synth_manifest, 10)
    pool = extract_features(tiny_backbone, list(reversed(items)) + items[:2], progress=False)  # another order
    subset = items[2:7]
    path = seed_cache(tiny_backbone, subset, tmp_path / "site-2", "train", pool)
    with caplog.at_level(logging.INFO):
        served = cached_features(tiny_backbone, subset, tmp_path / "site-2", "train", progress=False)
    assert "from cache" in caplog.text and path.is_file()
    direct = extract_features(tiny_backbone, subset, progress=False)
    assert served.paths == direct.paths and torch.equal(served.labels, direct.labels)
    torch.testing.assert_close(served.tokens.float(), direct.tokens.float(), rtol=0, atol=2e-3)  # fp16 rows
    torch.testing.assert_close(served.global_feats.float(), direct.global_feats.float(), rtol=0, atol=2e-3)
    with pytest.raises(KeyError, match="no pooled features for 1 of"):
        seed_cache(tiny_backbone, [*subset, _items(synth_manifest, 12)[11]], tmp_path / "x", "train", pool)


def test_digest_memos_on_one_folder_keep_each_others_digests(tmp_path):
    """Sites that share a cache folder each open its memo, hash their own files and save: every digest stays (a
    save used to write only its own view, dropping what another site had saved meanwhile)."""
    from fedrsclip.data.digests import MEMO_NAME, DigestMemo

    files = [tmp_path / "a.bin", tmp_path / "b.bin"]
    for i, path in enumerate(files):
        path.write_bytes(bytes([i]) * 100)
    first, second = DigestMemo(tmp_path / "cache"), DigestMemo(tmp_path / "cache")
    first.file_digest(files[0])
    second.file_digest(files[1])
    first.save()
    second.save()
    again = DigestMemo(tmp_path / "cache")
    assert [again.file_digest(p) for p in files] == [first.file_digest(files[0]), second.file_digest(files[1])]
    assert again.hashed == 0 and (tmp_path / "cache" / MEMO_NAME).is_file()
