"""The text tower alone (issue 14): a warm site start opens only the text side, memory-mapped, and trains exactly as a
cold start that loads the whole CLIP; a cold start frees the image tower once its features are cached."""

from __future__ import annotations

import gc
import json
import logging
import os
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from fedrsclip.backbone import TOWER_FOLDER, load_backbone, open_backbone
from fedrsclip.config import ConfigError, ModelConfig, PromptConfig
from fedrsclip.prompts import PromptLearner, TextEncoder
from fedrsclip.site import PromptSite as Site
from fedrsclip.text_tower import (
    TextTower,
    TextTowerError,
    check_same_text,
    clip_tokenizer,
    open_text_tower,
    save_text_tower,
    spec_of,
    text_tower_of,
)

CLASSES = ["airplane", "dense_residential", "river"]


def _towers(cache: Path) -> list[Path]:
    return sorted((cache / TOWER_FOLDER).glob("*.safetensors"))


def _site(cfg, manifest, name="site-1") -> Site:
    return Site(cfg, name, manifest, progress=False)


def _round(site: Site) -> dict[str, torch.Tensor]:
    site.run_round(None, 0)
    learner = site.trainer.model.learner
    return {
        "shared": learner.shared_ctx.detach().clone(),
        "private": learner.private_ctx.detach().clone(),
        "accuracy": torch.tensor(site.evaluate()["accuracy"]),
    }


def test_tower_file_gives_the_clips_text_features(tmp_path):
    backbone = load_backbone(tiny_config().model)
    clip = backbone.model
    spec = spec_of(clip, backbone.quick_gelu)
    save_text_tower(tmp_path / "t.safetensors", text_tower_of(clip), spec, {"note": "test"})
    tower, meta = open_text_tower(tmp_path / "t.safetensors")
    assert meta["note"] == "test" and not hasattr(tower, "visual")
    assert all(not p.requires_grad for p in tower.parameters()) and not tower.training
    texts = ["a satellite photo of a river.", "an airport with many airplanes parked next to the terminal."]
    tokens = backbone.tokenizer(texts)
    with torch.no_grad():
        torch.testing.assert_close(tower.encode_text(tokens), clip.encode_text(tokens), rtol=0, atol=1e-6)
    check_same_text(tower, clip, spec)
    # the prompt learner's text features, through the file's tower or through the CLIP
    text_only = load_backbone(tiny_config().model)
    text_only.model, text_only.preprocess = tower, None
    full = PromptLearner(backbone, CLASSES, PromptConfig()).text_features()
    alone = PromptLearner(text_only, CLASSES, PromptConfig()).text_features()
    torch.testing.assert_close(alone, full, rtol=0, atol=1e-6)


def test_tokenizer_without_open_clip_is_open_clips():
    import open_clip

    texts = ["a satellite photo of a dense_residential area.", "Überführung: 2,048 été '#1!", "x " * 300]
    for length in (77, 248):
        ours = clip_tokenizer(length)
        theirs = open_clip.get_tokenizer("ViT-B-16", context_length=length)
        assert torch.equal(ours(texts), theirs(texts))
        assert ours.encode(texts[0]) == theirs.encode(texts[0])
        assert (ours.sot_token_id, ours.eot_token_id) == (theirs.sot_token_id, theirs.eot_token_id)


def test_cold_start_frees_the_image_tower_and_writes_the_tower(synth_manifest, tmp_path):
    from fedrsclip.data.manifest import site_split
    from fedrsclip.features import cached_features

    cfg = tiny_config(cache_dir=tmp_path)
    backbone = open_backbone(cfg.model, cfg.data.cache_dir)
    assert backbone.has_image_tower and not _towers(tmp_path)
    visual = weakref.ref(backbone.model.visual)
    cached_features(
        backbone, site_split(synth_manifest, "site-1", "train")[:4], tmp_path / "site-1", "train", progress=False
    )
    backbone.release_image_tower()
    gc.collect()
    assert visual() is None  # nothing holds the image tower any more
    assert not backbone.has_image_tower and backbone.preprocess is None and isinstance(backbone.model, TextTower)
    (tower,) = _towers(tmp_path)
    assert tower.name.startswith("fedrsclip-tiny-")
    # a site keeps only the text side of the CLIP it opened itself
    site = _site(cfg, synth_manifest)
    assert not site.backbone.has_image_tower and isinstance(site.backbone.model, TextTower)
    backbone.reload = None
    with pytest.raises(Exception, match="image tower was released"):
        backbone.encode_images(torch.zeros(1, 3, 64, 64))


def test_warm_start_trains_exactly_as_the_cold_one(synth_manifest, tmp_path, caplog):
    cfg = tiny_config(cache_dir=tmp_path)
    cold_site = _site(cfg, synth_manifest)
    cold = _round(cold_site)
    with caplog.at_level(logging.INFO):
        warm_site = _site(cfg, synth_manifest)
    assert "text side only" in caplog.text and "extracting" not in caplog.text
    assert warm_site.backbone.fingerprint == cold_site.backbone.fingerprint
    assert warm_site.backbone.description == cold_site.backbone.description
    warm = _round(warm_site)
    for key in cold:
        torch.testing.assert_close(warm[key], cold[key], rtol=0, atol=1e-6, msg=key)


@pytest.mark.parametrize("setting", ["kps", "long-clip"])
def test_warm_equals_cold_at_248_positions(synth_manifest, tiny_backbone, tmp_path, setting):
    from test_checkpoints import long_clip_state

    if setting == "kps":
        cfg = tiny_config("model.context_length=248", cache_dir=tmp_path / "cache")
    else:
        path = tmp_path / "long.pt"
        torch.save(long_clip_state({k: v.clone() for k, v in tiny_backbone.model.state_dict().items()}), path)
        cfg = tiny_config(f"model.pretrained={path}", "model.random_init=false", cache_dir=tmp_path / "cache")
    cold_site = _site(cfg, synth_manifest)
    assert cold_site.backbone.context_length == 248
    cold = _round(cold_site)
    warm_site = _site(cfg, synth_manifest)
    assert isinstance(warm_site.backbone.model, TextTower) and warm_site.backbone.context_length == 248
    assert warm_site.backbone.tokenizer.context_length == 248
    warm = _round(warm_site)
    for key in cold:
        torch.testing.assert_close(warm[key], cold[key], rtol=0, atol=1e-6, msg=key)


def test_warm_start_imports_neither_open_clip_nor_dynamo(synth_manifest, tmp_path):
    """A fresh process with a warm cache: the site is built and trains without open_clip, torchvision, timm or
    torch._dynamo (torch.optim's first call imports it)."""
    cfg = tiny_config(cache_dir=tmp_path)
    _site(cfg, synth_manifest)  # the cold start writes the caches and the tower
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(synth_manifest))
    overrides = [
        "model.arch=fedrsclip-tiny",
        "model.pretrained=null",
        "model.random_init=true",
        f"data.cache_dir={tmp_path}",
        f"data.manifest={manifest}",
    ]
    code = (
        "import sys, json\n"
        "from fedrsclip.config import load_config\n"
        "from fedrsclip.site import PromptSite as Site\n"
        f"cfg = load_config(overrides={json.dumps(overrides)})\n"
        "site = Site(cfg, 'site-1', progress=False)\n"
        "site.run_round(None, 0)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('open_clip', 'torchvision', 'timm') "
        "or m.startswith('torch._dynamo'))))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "custom")}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_changed_checkpoint_is_never_served_from_its_old_tower(tiny_backbone, tmp_path):
    """A checkpoint replaced by another of the same size and mtime: another recipe, so the whole CLIP is loaded."""
    path = tmp_path / "clip.pt"
    state = {k: v.clone() for k, v in tiny_backbone.model.state_dict().items()}
    torch.save(state, path)
    cfg = ModelConfig(arch="fedrsclip-tiny", pretrained=str(path), quick_gelu=False)
    first = open_backbone(cfg, tmp_path / "cache")
    first.release_image_tower()
    assert len(_towers(tmp_path / "cache")) == 1
    warm = open_backbone(cfg, tmp_path / "cache")
    assert not warm.has_image_tower and warm.fingerprint == first.fingerprint
    stat = path.stat()
    state["ln_final.weight"] = state["ln_final.weight"] + 1.0
    torch.save(state, path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size
    changed = open_backbone(cfg, tmp_path / "cache")
    assert changed.has_image_tower and changed.fingerprint != first.fingerprint
    other_gelu = open_backbone(
        ModelConfig(arch="fedrsclip-tiny", pretrained=str(path), quick_gelu=True), tmp_path / "cache"
    )
    assert other_gelu.has_image_tower and other_gelu.quick_gelu


def test_corrupt_or_foreign_tower_file_is_rewritten(tmp_path, caplog):
    cfg = tiny_config().model
    open_backbone(cfg, tmp_path).release_image_tower()
    (tower,) = _towers(tmp_path)
    good = tower.read_bytes()
    tower.write_bytes(good[: len(good) // 2])
    with caplog.at_level(logging.WARNING):
        backbone = open_backbone(cfg, tmp_path)
    assert backbone.has_image_tower and "is unreadable" in caplog.text
    backbone.release_image_tower()
    assert tower.read_bytes() == good
    # a file renamed to another recipe's name is refused
    other = tiny_config("model.init_seed=1").model
    (stranger,) = [p for p in _towers(tmp_path)]
    first = open_backbone(other, tmp_path)
    first.release_image_tower()
    mine = [p for p in _towers(tmp_path) if p != stranger][0]
    mine.write_bytes(good)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert open_backbone(other, tmp_path).has_image_tower
    assert "another model configuration" in caplog.text


def test_a_flipped_byte_in_the_tower_weights_is_detected_and_the_file_rebuilt(tmp_path, caplog):
    """safetensors keeps no checksum: a changed weight loaded silently and shifted every text feature. The file
    carries the SHA-256 of its tensors; a mismatch loads the whole CLIP and rewrites the cache."""
    cfg = tiny_config().model
    open_backbone(cfg, tmp_path).release_image_tower()
    (tower,) = _towers(tmp_path)
    good = tower.read_bytes()
    weight = open_text_tower(tower)[0].token_embedding.weight.detach()
    at = good.find(weight[7].numpy().tobytes())
    assert at > 0
    flipped = bytearray(good)
    flipped[at] ^= 0x01  # the lowest mantissa bit of one token's first value: finite, and silent without a check
    tower.write_bytes(bytes(flipped))
    with pytest.raises(TextTowerError, match=f"{tower} is corrupt"):
        open_text_tower(tower)
    with caplog.at_level(logging.WARNING):
        backbone = open_backbone(cfg, tmp_path)
    assert backbone.has_image_tower and "is corrupt" in caplog.text
    backbone.release_image_tower()
    assert tower.read_bytes() == good


def test_text_tower_of_another_layout_is_not_written(tmp_path, caplog):
    """A text tower with layer scale (not CLIP's layout): no file, the text side stays in memory, a warning."""
    import open_clip

    config = json.loads(
        (Path(__file__).resolve().parents[1] / "custom/fedrsclip/model_configs/fedrsclip-tiny.json").read_text()
    )
    config["text_cfg"]["ls_init_value"] = 0.1
    (tmp_path / "fedrsclip-tiny-ls.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "fedrsclip-tiny-ls.json")
    cfg = ModelConfig(arch="fedrsclip-tiny-ls", pretrained=None, random_init=True)
    backbone = open_backbone(cfg, tmp_path / "cache")
    tokens = backbone.tokenizer(["a river"])
    with torch.no_grad():
        before = backbone.model.encode_text(tokens)
    with caplog.at_level(logging.WARNING):
        backbone.release_image_tower()
    assert "not a standard CLIP one" in caplog.text and not _towers(tmp_path / "cache")
    assert not backbone.has_image_tower
    with torch.no_grad():
        assert torch.equal(backbone.model.encode_text(tokens), before)
    with pytest.raises(TextTowerError, match="not a standard CLIP"):
        spec_of(load_backbone(cfg).model, False)


def test_text_precision_setting(caplog):
    with pytest.raises(ConfigError, match="text_precision"):
        tiny_config("model.text_precision=fp8")
    with caplog.at_level(logging.WARNING):
        backbone = load_backbone(tiny_config("model.text_precision=bf16").model)
    assert "runs in fp32 there" in caplog.text and backbone.text_amp_dtype is None  # CPU: unchanged results
    learner = PromptLearner(backbone, CLASSES, PromptConfig())
    assert learner.text_encoder.amp_dtype is None
    # the autocast path itself (CPU autocast runs bf16 too): fp32 features out, close to the fp32 ones
    encoder = TextEncoder(backbone.model, torch.bfloat16)
    emb = learner.embeddings(torch.stack(learner.contexts)).flatten(0, 1)
    eot = learner.eot_index.repeat(2)
    with torch.no_grad():
        mixed, plain = encoder(emb, eot), learner.text_encoder(emb, eot)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, plain, rtol=0.05, atol=0.05)
    assert not torch.equal(mixed, plain)


def test_warm_start_with_a_stale_cache_reloads_the_image_tower(synth_manifest, tmp_path, caplog):
    """Changed images after a warm start: the whole CLIP is loaded for the extraction, then released again."""
    cfg = tiny_config(cache_dir=tmp_path)
    cold_site = _site(cfg, synth_manifest)
    for cached in (tmp_path / "site-1").glob("train-*.pt"):
        cached.unlink()
    with caplog.at_level(logging.INFO):
        warm_site = _site(cfg, synth_manifest)
    assert "text side only" in caplog.text and "train: extracting features" in caplog.text
    assert not warm_site.backbone.has_image_tower and isinstance(warm_site.backbone.model, TextTower)
    assert torch.equal(warm_site.train_set.tokens, cold_site.train_set.tokens)


def test_tower_file_that_lies_about_its_weights_stops_the_extraction(synth_manifest, tmp_path):
    cfg = tiny_config(cache_dir=tmp_path)
    _site(cfg, synth_manifest)
    (tower,) = _towers(tmp_path)
    opened, meta = open_text_tower(tower)
    spec = spec_of(load_backbone(cfg.model).model, False)
    save_text_tower(
        tower,
        opened,
        spec,
        {k: v for k, v in meta.items() if k not in ("format", "spec")}
        | {"fingerprint": "fedrsclip-tiny|something else"},
    )
    with pytest.raises(Exception, match="describes fedrsclip-tiny.something else.*delete the file"):
        _site(cfg, synth_manifest)  # the caches miss (another fingerprint): reloading shows the lie


def test_warm_start_tokenizes_from_the_memo(synth_manifest, tmp_path, caplog):
    from fedrsclip.backbone import token_memo_path
    from fedrsclip.zeroshot import zero_shot_accuracy

    cfg = tiny_config(cache_dir=tmp_path)
    cold_site = _site(cfg, synth_manifest)
    (tower,) = _towers(tmp_path)
    memo = json.loads(token_memo_path(tower).read_text())
    assert "X" in memo and "." in memo and len(memo) >= len(cold_site.classnames)
    warm_site = _site(cfg, synth_manifest)
    assert warm_site.backbone.tokenizer._tokenizer is None  # CLIP's tokenizer (50 MB) was not built
    classes = cold_site.classnames
    assert zero_shot_accuracy(warm_site.backbone, classes, warm_site.test_set) == zero_shot_accuracy(
        cold_site.backbone, classes, cold_site.test_set
    )
    token_memo_path(tower).write_text('{"X": "not ids"}')
    with caplog.at_level(logging.WARNING):
        again = _site(cfg, synth_manifest)
    assert "token memo" in caplog.text and again.backbone.tokenizer._tokenizer is not None
    torch.testing.assert_close(
        again.trainer.model.learner.template, cold_site.trainer.model.learner.template, rtol=0, atol=0
    )


def test_recipe_covers_every_model_setting(tmp_path):
    from dataclasses import replace

    from fedrsclip.backbone import tower_recipe
    from fedrsclip.data.digests import DigestMemo

    memo = DigestMemo(None)
    base = ModelConfig(arch="ViT-B-16", pretrained="openai")
    variants = [
        base,
        replace(base, pretrained="laion2b_s34b_b88k"),
        replace(base, arch="ViT-B-32"),
        replace(base, quick_gelu=True),
        replace(base, context_length=248),
        ModelConfig(arch="ViT-B-16", pretrained=None, random_init=True),
        ModelConfig(arch="ViT-B-16", pretrained=None, random_init=True, init_seed=1),
    ]
    recipes = [tower_recipe(cfg, memo) for cfg in variants]
    assert len(set(recipes)) == len(recipes)
    assert tower_recipe(replace(base, device="cpu", cache_dir="/elsewhere"), memo) == recipes[0]  # not the weights
    path = tmp_path / "clip.pt"
    path.write_bytes(b"one")
    first = tower_recipe(ModelConfig(arch="ViT-B-16", pretrained=str(path), quick_gelu=False), memo)
    (tmp_path / "open_clip_config.json").write_text("{}")  # fedrsclip.checkpoints reads it: part of the recipe
    assert tower_recipe(ModelConfig(arch="ViT-B-16", pretrained=str(path), quick_gelu=False), memo) != first
    assert tower_recipe(ModelConfig(arch="ViT-B-16", pretrained=str(tmp_path / "none.pt")), memo) is None


def test_sites_sharing_a_cache_share_one_tower_file(tmp_path, caplog):
    """Two sites that start cold on one cache folder (simulator sites with an absolute data.cache_dir): the second
    to finish uses the file the first wrote instead of replacing it, so both map the same file (shared pages)."""
    cfg = tiny_config().model
    first, second = open_backbone(cfg, tmp_path), open_backbone(cfg, tmp_path)  # both cold: no file yet
    assert first.has_image_tower and second.has_image_tower
    first.release_image_tower()
    (tower,) = _towers(tmp_path)
    inode = tower.stat().st_ino
    with caplog.at_level(logging.INFO):
        second.release_image_tower()
    assert "written by another process" in caplog.text
    assert _towers(tmp_path) == [tower] and tower.stat().st_ino == inode  # not replaced
    maps = Path(f"/proc/{os.getpid()}/maps")
    if maps.is_file():  # Linux: the second site's weights are a mapping of that very file
        assert str(tower) in maps.read_text()
    tokens = clip_tokenizer(77)(["a satellite photo of a river."])
    with torch.no_grad():
        torch.testing.assert_close(second.model.encode_text(tokens), first.model.encode_text(tokens), rtol=0, atol=0)


def test_a_tower_file_of_other_weights_is_replaced_not_shared(tmp_path):
    """A file in the tower's place whose recipe matches but whose weights give other text features is rewritten
    with this CLIP's text side, never used."""
    cold = open_backbone(tiny_config().model, tmp_path)
    stranger = load_backbone(tiny_config("model.init_seed=1").model)
    spec = spec_of(stranger.model, stranger.quick_gelu)
    save_text_tower(cold.tower_file, text_tower_of(stranger.model), spec, {"recipe": cold.recipe})
    inode = cold.tower_file.stat().st_ino
    cold.release_image_tower()
    assert cold.tower_file.stat().st_ino != inode
    check_same_text(open_text_tower(cold.tower_file)[0], load_backbone(tiny_config().model).model, spec)


def test_in_process_runs_remember_the_checkpoint_digest(tiny_backbone, tmp_path):
    """The in-process runner's shared CLIP reads a checkpoint file's digest from the cache's memo: an unchanged
    600 MB ViT-B/16 file is hashed once, not at every run."""
    from fedrsclip.data.digests import MEMO_NAME
    from fedrsclip.factory import load_shared

    path = tmp_path / "clip.pt"
    torch.save(tiny_backbone.model.state_dict(), path)
    cfg = tiny_config(
        f"model.pretrained={path}", "model.random_init=false", "model.quick_gelu=false", cache_dir=tmp_path / "cache"
    )
    first = load_shared(cfg)
    memo = tmp_path / "cache" / MEMO_NAME
    entries = json.loads(memo.read_text())
    (key,) = [k for k in entries if k == str(path.resolve())]
    assert first.fingerprint.split("file=")[1].startswith(entries[key][5][:16])
    entries[key][5] = "f" * 64  # a remembered digest is used as is: the file is not read again
    memo.write_text(json.dumps(entries))
    assert "file=" + "f" * 16 in load_shared(cfg).fingerprint


_RACER = """
import hashlib, os, sys, time
from pathlib import Path
import torch
from fedrsclip.backbone import open_backbone
from fedrsclip.config import load_config
from fedrsclip.text_tower import clip_tokenizer

cache, me, sites, overrides = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4:]
backbone = open_backbone(load_config(overrides=overrides).model, cache)  # cold: the whole CLIP
assert backbone.has_image_tower
(cache / f"ready-{me}").touch()
while len(list(cache.glob("ready-*"))) < sites:  # all release their image tower (and publish) at once
    time.sleep(0.01)
backbone.release_image_tower()
mapped = {int(line.split()[4]) for line in Path("/proc/self/maps").read_text().splitlines()
          if line.endswith(str(backbone.tower_file))}
with torch.no_grad():
    feats = backbone.model.encode_text(clip_tokenizer(77)(["a satellite photo of a river."]))
print(sorted(mapped), hashlib.sha256(feats.numpy().tobytes()).hexdigest())
"""


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="reads the process's mappings (Linux)")
def test_sites_publishing_at_once_end_with_one_file_that_all_map(tmp_path):
    """Three sites on one cache folder start cold and write the text tower at the same moment (the simulator's
    sites with an absolute data.cache_dir): one file is published and never replaced, and every site maps that very
    file (one inode: its pages are shared), no temporary file is left, and all give the same text features."""
    from fedrsclip.backbone import token_memo_path
    from helpers import TINY

    sites = 3
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, str(tmp_path), f"site-{i}", str(sites), *TINY],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(sites)
    ]
    outs = [proc.communicate(timeout=300) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), [err[-2000:] for _, err in outs]
    (tower,) = _towers(tmp_path)
    assert {p.name for p in (tmp_path / TOWER_FOLDER).iterdir()} <= {tower.name, token_memo_path(tower).name}
    answers = [out.split() for out, _ in outs]
    assert {inode for inode, _ in answers} == {f"[{tower.stat().st_ino}]"}  # all map the one file at the path
    assert len({digest for _, digest in answers}) == 1


def test_publish_once_never_replaces_a_file(tmp_path):
    """The first publisher's file stays (same bytes, same inode); a later one is told so and leaves nothing behind."""
    from fedrsclip.text_tower import publish_once

    path = tmp_path / "tower.safetensors"
    assert publish_once(path, b"first") is True
    inode = path.stat().st_ino
    assert publish_once(path, b"second") is False
    assert path.read_bytes() == b"first" and path.stat().st_ino == inode
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no staged copy left
