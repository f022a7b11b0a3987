import numpy as np

from fedrsclip.federation import run_federation
from conftest import tiny_config


def test_three_site_fedrsclip_accuracy_rises(synth_manifest, feature_cache, tmp_path):
    """Synthetic scenes, RANDOM-weight tiny CLIP: accuracy must rise well above chance over rounds."""
    cfg = tiny_config("algorithm=fedrsclip", "train.rounds=6", "train.lr=0.01", "train.local_epochs=2",
                      cache_dir=feature_cache)
    history = run_federation(cfg, synth_manifest, state_dir=tmp_path, progress=False)
    accs = [r["mean_accuracy"] for r in history["rounds"]]
    chance = 100 / len(synth_manifest["classes"])
    assert max(accs[-2:]) > accs[0] + 10, accs
    assert accs[-1] > 2 * chance, accs
    last = history["rounds"][-1]
    assert set(last["sites"]) == {"site-1", "site-2", "site-3"}
    assert last["global"]["samples"] == sum(s["samples"] for s in last["sites"].values())
    assert all(s["bytes_up"] == 4 * 64 * 4 for s in last["sites"].values())
    assert 0 <= history["zero_shot"]["accuracy"] <= 100
    weighted = np.average([s["accuracy"] for s in last["sites"].values()],
                          weights=[s["samples"] for s in last["sites"].values()])
    assert abs(weighted - last["weighted_accuracy"]) < 1e-9


def test_local_sends_nothing_and_never_aggregates(synth_manifest, feature_cache):
    cfg = tiny_config("algorithm=local", "train.rounds=2", cache_dir=feature_cache)
    history = run_federation(cfg, synth_manifest, progress=False)
    for record in history["rounds"]:
        assert "global" not in record
        assert all(s["bytes_up"] == 0 and s["bytes_down"] == 0 for s in record["sites"].values())


def test_centralized_pools_every_site(synth_manifest, feature_cache):
    cfg = tiny_config("algorithm=centralized", "train.rounds=1", cache_dir=feature_cache)
    history = run_federation(cfg, synth_manifest, progress=False)
    (site,) = history["rounds"][0]["sites"].values()
    assert site["samples_train"] == sum(len(s["train"]) for s in synth_manifest["sites"].values())


def test_full_model_fedavg_baseline_runs_in_the_same_loop(synth_manifest):
    cfg = tiny_config("algorithm=fedavg-full", "classifier.image_size=32", "train.rounds=1")
    history = run_federation(cfg, synth_manifest, progress=False)
    last = history["rounds"][-1]
    assert last["global"]["samples"] == sum(len(s["test"]) for s in synth_manifest["sites"].values())
    assert all(s["bytes_up"] > 5_000_000 * 4 for s in last["sites"].values())  # every ViT-Tiny weight, float32
