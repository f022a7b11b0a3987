"""The in-process runner: the FLARE job's round, gate, mean and results file, every site in one process."""

import numpy as np
import pytest

from fedrsclip.inprocess import run_inprocess
from fedrsclip.results_file import RESULTS_FORMAT
from helpers import tiny_config


def test_three_site_fedrsclip_accuracy_rises(synth_manifest, feature_cache, tmp_path):
    """Synthetic scenes, RANDOM-weight tiny CLIP: accuracy must rise well above chance over rounds."""
    cfg = tiny_config(
        "algorithm=fedrsclip", "train.rounds=6", "train.lr=0.01", "train.local_epochs=2", cache_dir=feature_cache
    )
    results = run_inprocess(cfg, synth_manifest, state_dir=tmp_path, progress=False)
    assert results["format"] == RESULTS_FORMAT and results["runner"] == "in-process"
    assert results["status"] == "finished" and results["errors"] == []
    accs = [r["mean_accuracy"] for r in results["rounds"]]
    chance = 100 / len(synth_manifest["classes"])
    assert max(accs[-2:]) > accs[0] + 10, accs
    assert accs[-1] > 2 * chance, accs
    last = results["rounds"][-1]
    assert set(last["sites"]) == {"site-1", "site-2", "site-3"}
    assert last["global"]["samples"] == sum(s["samples"] for s in last["sites"].values())
    assert all(s["bytes_up"] == 4 * 64 * 4 for s in last["sites"].values())
    assert 0 <= results["zero_shot"]["accuracy"] <= 100
    weighted = np.average(
        [s["accuracy"] for s in last["sites"].values()], weights=[s["samples"] for s in last["sites"].values()]
    )
    assert abs(weighted - last["weighted_accuracy"]) < 1e-9
    assert set(results["initial"]["sites"]) == set(results["final"]["sites"]) == set(last["sites"])
    assert results["best"]["round"] in range(1, 7)


def test_local_sends_nothing_and_never_aggregates(synth_manifest, feature_cache):
    cfg = tiny_config("algorithm=local", "train.rounds=2", cache_dir=feature_cache)
    results = run_inprocess(cfg, synth_manifest, progress=False)
    for record in results["rounds"]:
        assert "global" not in record
        assert all(s["bytes_up"] == 0 and s["bytes_down"] == 0 for s in record["sites"].values())


def test_centralized_pools_every_site(synth_manifest, feature_cache):
    cfg = tiny_config("train.rounds=1", cache_dir=feature_cache)
    results = run_inprocess(cfg, synth_manifest, progress=False, pooled=True)
    (site,) = results["rounds"][0]["sites"].values()
    assert site["samples_train"] == sum(len(s["train"]) for s in synth_manifest["sites"].values())


def test_centralized_is_not_an_algorithm():
    with pytest.raises(Exception, match="unknown algorithm 'centralized'"):
        tiny_config("algorithm=centralized")


def test_the_gate_refuses_a_site_with_another_class_list(synth_manifest, feature_cache, monkeypatch):
    """The server's gate, in process: a site trained on another class list is refused every round (missing, kind
    rejected) and the others are averaged, as in a FLARE job."""
    from fedrsclip import inprocess

    real = inprocess.make_site

    def reordered_classes(cfg, name, manifest, *args, **kwargs):  # one site's manifest lists the classes differently
        site = real(cfg, name, manifest, *args, **kwargs)
        if name == "site-3":
            site.classnames = [*site.classnames[1:], site.classnames[0]]
        return site

    monkeypatch.setattr(inprocess, "make_site", reordered_classes)
    cfg = tiny_config("train.rounds=2", cache_dir=feature_cache)
    results = run_inprocess(cfg, synth_manifest, progress=False)
    assert results["status"] == "finished"
    for record in results["rounds"]:
        assert record["missing"] == ["site-3"]
        entry = record["sites"]["site-3"]
        assert entry["missing"] and entry["kind"] == "rejected" and "trained on another class list" in entry["error"]
    assert {e["site"] for e in results["errors"]} == {"site-3"}


def test_full_model_fedavg_baseline_runs_in_the_same_loop(synth_manifest):
    cfg = tiny_config("algorithm=fedavg-full", "classifier.image_size=32", "train.rounds=1")
    results = run_inprocess(cfg, synth_manifest, progress=False)
    last = results["rounds"][-1]
    assert last["global"]["samples"] == sum(len(s["test"]) for s in synth_manifest["sites"].values())
    assert all(s["bytes_up"] > 5_000_000 * 4 for s in last["sites"].values())  # every ViT-Tiny weight, float32
