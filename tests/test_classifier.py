"""The full-model FedAvg baseline (fedavg-full): timm classifier, payload, sites, a small in-process federation.

Runs offline on the CPU: tiny synthetic images, ViT-Tiny at 32x32; EfficientNet-B1 is only built, not trained.
"""

from __future__ import annotations

import math
import os
import time
import warnings

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before timm / huggingface_hub read it: never touch the network

import huggingface_hub.constants  # noqa: E402

from fedrsclip.baselines.classifier import (  # noqa: E402
    ClassifierError,
    ClassifierTrainer,
    build_classifier,
    classifier_num_params,
)
from fedrsclip.baselines.site import ClassifierSite  # noqa: E402
from fedrsclip.config import ConfigError, load_config  # noqa: E402
from fedrsclip.data.manifest import build_manifest  # noqa: E402
from fedrsclip.data.readers import list_dataset  # noqa: E402
from fedrsclip.data.synth import make_synthetic  # noqa: E402
from fedrsclip.protocol import PayloadError, Update, payload_nbytes, weighted_mean  # noqa: E402

BASE = [
    "algorithm=fedavg-full",
    "classifier.arch=vit_tiny_patch16_224",
    "classifier.image_size=32",
    "model.device=cpu",
    "train.batch_size=8",
    "train.eval_batch_size=16",
    "classifier.lr=0.01",
]

# The paper's Table II "Transmitted Parameter" column (these are the timm models with ImageNet's 1000-class head).
PAPER_PARAMS = {"vit_tiny_patch16_224": 5.7e6, "efficientnet_b1": 7.8e6}


def make_cfg(*extra: str):
    return load_config(overrides=[*BASE, *extra])


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No test may reach the Hub: offline mode and an empty hub cache, set where huggingface_hub reads them."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one intra-op thread. On a loaded 2-core box, OpenMP threads spinning against other processes
    made each training step ~80x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = make_synthetic(tmp_path_factory.mktemp("data") / "synth", classes=4, per_class=12, size=32, progress=False)
    listing = list_dataset("imagefolder", root, progress=False)
    return build_manifest(listing, num_clients=2, scheme="uniform", seed=0)


@pytest.fixture(scope="module")
def cfg():
    return make_cfg()


def sites_for(cfg, manifest, state_dir=None):
    return [ClassifierSite(cfg, name, manifest, state_dir=state_dir, progress=False) for name in manifest["sites"]]


def float_state(model):
    return {k: v for k, v in model.state_dict().items() if v.is_floating_point()}


def assert_payload_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# ---- model and payload -----------------------------------------------------------------------------------------------
def test_payload_keys_shapes_dtype(cfg, manifest):
    site = ClassifierSite(cfg, "site-1", manifest, progress=False)
    trainer = site.trainer
    assert trainer.algorithm.name == "fedavg-full" and trainer.algorithm.kind == "classifier"
    assert site.classnames == list(manifest["classes"]) and site.name == "site-1"
    payload = trainer.payload()
    state = float_state(trainer.model)
    assert list(payload) == list(state)  # every float entry, in state_dict order
    for key, value in payload.items():
        assert isinstance(value, np.ndarray) and value.dtype == np.float32
        assert value.shape == tuple(state[key].shape)
    assert payload["pos_embed"].shape == (1, (32 // 16) ** 2 + 1, 192)  # img_size reached the ViT
    assert payload["head.weight"].shape == (4, 192)
    assert payload_nbytes(payload) == 4 * trainer.num_params == 4 * classifier_num_params(trainer.model)
    # the payload is a copy: changing it does not change the model
    payload["head.bias"][:] = 123.0
    assert not torch.any(trainer.model.state_dict()["head.bias"] == 123.0)


def test_sites_start_from_identical_weights(cfg, manifest):
    torch.manual_seed(1)
    first = ClassifierSite(cfg, "site-1", manifest, progress=False)
    torch.manual_seed(2)  # the caller's RNG state must not matter
    second = ClassifierSite(cfg, "site-2", manifest, progress=False)
    assert_payload_equal(first.trainer.payload(), second.trainer.payload())
    other = build_classifier(make_cfg("train.seed=5"), 4)
    assert not np.array_equal(other.state_dict()["head.weight"].numpy(), first.trainer.payload()["head.weight"])


def test_wrong_algorithm_and_arch_are_refused(manifest):
    with pytest.raises(ConfigError, match="fedavg-full"):
        ClassifierTrainer(make_cfg("algorithm=fedrsclip"), ["a", "b"])
    with pytest.raises(ClassifierError, match="not a timm model"):
        build_classifier(make_cfg("classifier.arch=no_such_net"), 4)


# ---- training --------------------------------------------------------------------------------------------------------
def test_round_changes_weights_and_is_deterministic(cfg, manifest, tmp_path):
    site = ClassifierSite(cfg, "site-1", manifest, state_dir=tmp_path, progress=False)
    before = site.trainer.payload()
    result = site.run_round(None, 0)
    assert isinstance(result, Update)
    assert result.record.samples_train == len(site.train_set) == len(manifest["sites"]["site-1"]["train"])
    assert result.payload.keys() == before.keys()
    changed = [k for k in before if not np.array_equal(before[k], result.payload[k])]
    assert "head.weight" in changed and "blocks.0.attn.qkv.weight" in changed
    assert math.isfinite(result.record.metrics["train_loss"]) and result.record.metrics["steps"] == math.ceil(12 / 8)
    assert (tmp_path / "site-1-state.pt").is_file()

    # same seed, same round, same site: the same weights (shuffling and augmentation are seeded)
    again = ClassifierSite(cfg, "site-1", manifest, progress=False)
    assert_payload_equal(again.run_round(None, 0).payload, result.payload)

    # a restarted site resumes its saved model
    resumed = ClassifierSite(cfg, "site-1", manifest, state_dir=tmp_path, progress=False)
    assert_payload_equal(resumed.trainer.payload(), result.payload)


def test_weighted_mean_then_set_global_round_trips(cfg, manifest):
    a, b = sites_for(cfg, manifest)
    ra, rb = a.run_round(None, 0), b.run_round(None, 0)
    merged = weighted_mean([(ra.payload, ra.weight), (rb.payload, 3 * rb.weight)])  # unequal weights
    key = "blocks.0.mlp.fc1.weight"
    expected = ra.payload[key].astype(np.float64) * 0.25 + rb.payload[key].astype(np.float64) * 0.75
    np.testing.assert_allclose(merged[key], expected, rtol=1e-6, atol=1e-7)
    a.trainer.set_global(merged)
    b.trainer.set_global(merged)
    assert_payload_equal(a.trainer.payload(), merged)
    assert_payload_equal(b.trainer.payload(), merged)


def test_set_global_rejects_bad_payloads(cfg, manifest):
    trainer = ClassifierSite(cfg, "site-1", manifest, progress=False).trainer
    good = trainer.payload()
    bad_shape = dict(good, **{"head.weight": np.zeros((5, 192), np.float32)})
    with pytest.raises(PayloadError, match=r"head\.weight.*shape"):
        trainer.set_global(bad_shape)
    nan = {k: v.copy() for k, v in good.items()}
    nan["pos_embed"][0, 0, 0] = np.nan
    with pytest.raises(PayloadError, match="NaN"):
        trainer.set_global(nan)
    missing = {k: v for k, v in good.items() if k != "cls_token"}
    with pytest.raises(PayloadError, match="missing.*cls_token"):
        trainer.set_global(missing)
    with pytest.raises(PayloadError, match="unexpected"):
        trainer.set_global(dict(good, extra=np.zeros(1, np.float32)))
    with pytest.raises(PayloadError, match="dtype"):
        trainer.set_global(dict(good, **{"head.bias": np.zeros(4, np.int64)}))
    beyond = dict(good, **{"head.bias": np.full(4, 1e39)})  # float64: finite there, inf as the float32 loaded
    with pytest.raises(PayloadError, match=r"received global head\.bias holds 4 NaN or Inf .*beyond float32"):
        trainer.set_global(beyond)
    # a rejected payload loads nothing, not even the entries before the faulty one
    shifted = {k: v + 1.0 for k, v in good.items()}
    shifted["norm.bias"] = np.full_like(good["norm.bias"], np.inf)
    with pytest.raises(PayloadError):
        trainer.set_global(shifted)
    assert_payload_equal(trainer.payload(), good)


def test_in_process_federation_two_sites_three_rounds(cfg, manifest, tmp_path):
    sites = sites_for(cfg, manifest, state_dir=tmp_path)
    assert all(len(s.train_set) == 12 and len(s.test_set) == 12 for s in sites)
    global_payload = None
    for rnd in range(3):
        results = [s.run_round(global_payload, rnd) for s in sites]
        assert [r.weight for r in results] == [12, 12]
        global_payload = weighted_mean((r.payload, r.weight) for r in results)
        for site in sites:
            metrics = site.evaluate(global_payload)
            assert metrics["samples"] == 12
            assert 0.0 <= metrics["accuracy"] <= 100.0 and math.isfinite(metrics["loss"])
    # after evaluate(global) every site holds the global model
    assert_payload_equal(sites[0].trainer.payload(), sites[1].trainer.payload())
    assert {p.name for p in tmp_path.iterdir()} == {"site-1-state.pt", "site-2-state.pt"}


# ---- data ------------------------------------------------------------------------------------------------------------
def test_unreadable_images_are_skipped_with_a_warning(cfg, manifest, tmp_path):
    trainer = ClassifierSite(cfg, "site-1", manifest, progress=False).trainer
    root = manifest["root"]
    items = [(os.path.join(root, rel), label) for rel, label in manifest["sites"]["site-1"]["test"][:5]]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    items.append((broken, 0))

    with pytest.warns(UserWarning, match="broken.png"):
        cached = trainer.make_dataset(items, train=False)
    assert cached.cached and len(cached) == 5 and [p for p, _ in cached.skipped] == [broken]
    assert all(min(a.shape[:2]) <= trainer.cache_size for a in cached._arrays)
    image, label = cached[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32

    lazy = trainer.make_dataset(items, train=False, cache=False)
    assert len(lazy) == 6
    with pytest.warns(UserWarning, match="broken.png"):
        metrics = trainer.evaluate(lazy)
    assert metrics["samples"] == 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert trainer.evaluate(cached)["samples"] == 5
    train = trainer.make_dataset(items[:5], train=True)
    assert train[0][0].shape == (3, 32, 32)


def test_missing_images_stop_the_site(cfg, manifest, tmp_path):
    from fedrsclip.data.errors import DataError

    with pytest.raises(DataError, match="data.root"):
        ClassifierSite(make_cfg(f"data.root={tmp_path}"), "site-1", manifest, progress=False)


# ---- the paper's models ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["vit_tiny_patch16_224", "efficientnet_b1"])
def test_paper_models_transmitted_parameters(arch, capsys):
    cfg = make_cfg(f"classifier.arch={arch}", "classifier.image_size=224")
    model = build_classifier(cfg, 31)
    state = model.state_dict()
    floats = {k: v for k, v in state.items() if v.is_floating_point()}
    trainer = ClassifierTrainer(cfg, [f"c{i}" for i in range(31)], model=model)
    payload = trainer.payload()
    assert list(payload) == list(floats)
    assert payload_nbytes(payload) == 4 * sum(v.numel() for v in floats.values())
    if arch == "efficientnet_b1":  # BatchNorm running stats travel; integer counters do not
        assert any(k.endswith("running_mean") for k in payload)
        assert any(k.endswith("num_batches_tracked") for k in state)
        assert not any(k.endswith("num_batches_tracked") for k in payload)
    n31 = trainer.num_params
    # the same model with ImageNet's 1000-class head, as in the paper's table
    n1000 = n31 + (1000 - 31) * (model.num_features + 1)
    with capsys.disabled():
        print(
            f"\n{arch}: {n31:,} values sent with 31 classes, {n1000:,} with 1000 classes "
            f"(paper: {PAPER_PARAMS[arch] / 1e6:.1f}M)"
        )
    assert abs(n1000 - PAPER_PARAMS[arch]) / PAPER_PARAMS[arch] < 0.01
    assert abs(n31 - PAPER_PARAMS[arch]) / PAPER_PARAMS[arch] < 0.20  # only the head differs


# ---- pretrained weights offline --------------------------------------------------------------------------------------
def test_pretrained_offline_is_a_clear_error():
    start = time.perf_counter()
    with pytest.raises(ClassifierError, match=r"classifier\.pretrained=false") as info:
        build_classifier(make_cfg("classifier.pretrained=true"), 4)
    assert "vit_tiny_patch16_224" in str(info.value) and "huggingface" in str(info.value).lower()
    assert time.perf_counter() - start < 20  # no network retries
    with pytest.raises(ClassifierError, match="no pretrained weights"):
        build_classifier(make_cfg("classifier.pretrained=true", "classifier.arch=botnet50ts_256"), 4)
