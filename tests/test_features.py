import logging
import os
import shutil

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
