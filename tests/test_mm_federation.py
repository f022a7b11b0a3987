"""Multi-modal federations of multi-label scenes through the house (issue 16): the prompt sites, the round protocol,
the allow-list, the in-process runner's gate and mean, and the results file.

Synthetic paired S2/S1 scenes (fedrsclip.data.synth_mm, read through the real BigEarthNet path) and the tiny
RANDOM-weight CLIP: the scores show that the pieces learn together, not how well the method does.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedrsclip.cli import main
from fedrsclip.data import list_dataset
from fedrsclip.data.errors import DataError
from fedrsclip.data.manifest import build_manifest, write_manifest
from fedrsclip.data.multimodal import build_mm_manifest
from fedrsclip.data.synth_mm import make_synthetic_mm
from fedrsclip.factory import make_site
from fedrsclip.inprocess import run_inprocess
from fedrsclip.privacy import PrivacyError, check_outgoing
from fedrsclip.protocol import SHARED, PayloadError, adapter_keys, weighted_mean
from fedrsclip.tools.reporting.run_table import format_table
from helpers import TINY, tiny_config

FAST = ("train.lr=0.05", "train.batch_size=16", "train.local_epochs=3")


@pytest.fixture(scope="module")
def mm_root(tmp_path_factory):
    return make_synthetic_mm(tmp_path_factory.mktemp("mm") / "data", scenes=96, size=48, seed=0, progress=False)


@pytest.fixture(scope="module")
def listing(mm_root):
    return list_dataset("bigearthnet-mm", mm_root, progress=False)


def mm_manifest(listing, spec: str, sites: int = 3) -> dict:
    return build_mm_manifest(listing, sites, spec, "uniform", seed=0)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("mm-features")


def test_multi_label_multi_modal_run_reports_f1_and_map_and_learns(listing, cache, tmp_path):
    """Multi-label manifests train with the multi-label loss in a prompt algorithm (before: refused by site_split),
    and the results carry micro/macro F1 and mAP per site, overall, pooled and per modality alone."""
    manifest = mm_manifest(listing, "s2,s1,s2+s1")
    cfg = tiny_config("algorithm=fedavg-pl", "train.rounds=6", *FAST, cache_dir=cache)
    results = run_inprocess(cfg, manifest, state_dir=tmp_path, progress=False)
    assert results["status"] == "finished" and results["errors"] == []
    first, last = results["initial"], results["rounds"][-1]
    for site in last["sites"].values():
        assert site["accuracy"] is None and {"micro_f1", "macro_f1", "mAP"} <= set(site)
        assert site["train_bce"] > 0 and "train_ce" not in site
    # Measured (seed 0, 2 cores): weighted micro F1 0 -> ~30, mAP ~35 -> ~55 over 6 rounds.
    assert last["weighted_micro_f1"] > first["weighted_micro_f1"] + 10, (first, last)
    assert last["weighted_mAP"] > first["weighted_mAP"] + 5
    assert {"micro_f1", "macro_f1", "mAP", "samples"} <= set(results["pooled"])
    assert results["pooled"]["samples"] == sum(s["samples"] for s in results["final"]["sites"].values())
    rows = results["final"]["modalities"]
    assert set(rows) == {"s2", "s1"}
    assert set(rows["s2"]["sites"]) == {"site-1", "site-3"} and set(rows["s1"]["sites"]) == {"site-2", "site-3"}
    assert 0 <= rows["s1"]["weighted_micro_f1"] <= 100
    assert results["best"]["weighted_micro_f1"] == max(results["best"]["weighted_micro_f1"], 0)
    assert "mAP" in results["zero_shot"] and results["zero_shot"].get("accuracy") is None
    table = format_table(results)
    assert "micro F1 (%, multi-label scenes)" in table and "s1 only" in table and "pooled (in-process)" in table
    # the modality rows in one order whatever order the sites reported in (FLARE: arrival order)
    assert table.index("s2 only") < table.index("s1 only")
    shuffled = {**results, "final": {**results["final"], "modalities": dict(reversed(list(rows.items())))}}
    assert format_table(shuffled) == table
    # the best is weighted by training images (the selector's weights), the table's column by test images: said so
    assert "(sites weighted by their training images, as the model selector weights them; the table's 'weighted' " in (
        table
    )
    sent = [v["bytes_up"] for v in results["rounds"][-1]["sites"].values()]
    assert f"sent per site and round: {min(sent):,} to {max(sent):,} bytes up (by site)" in table


def test_an_adapter_is_averaged_only_within_its_modality(listing, cache, tmp_path):
    """Each site sends the shared prompt and its own modalities' adapters only; the mean of an adapter is over the
    sites holding that modality (MF), the shared prompt over all."""
    manifest = mm_manifest(listing, "s2,s1,s2")
    cfg = tiny_config("algorithm=fedrsclip", "train.rounds=1", *FAST, cache_dir=cache)
    sites = [
        make_site(cfg, name, manifest, state_dir=tmp_path / "state", progress=False)
        for name in ("site-1", "site-2", "site-3")
    ]
    updates = [site.run_round(None, 0) for site in sites]
    s2, s1 = adapter_keys(["s2"]), adapter_keys(["s1"])
    assert set(updates[0].payload) == {SHARED, *s2} == set(updates[2].payload)
    assert set(updates[1].payload) == {SHARED, *s1}
    mean = weighted_mean((u.payload, u.weight) for u in updates)
    w = [u.weight for u in updates]
    for key in s2:  # the s2 sites only: site-2's (s1) update never enters it
        expected = (updates[0].payload[key] * w[0] + updates[2].payload[key] * w[2]) / (w[0] + w[2])
        np.testing.assert_allclose(mean[key], expected, rtol=1e-5, atol=1e-7)
    for key in s1:  # one s1 site: its own adapter
        np.testing.assert_array_equal(mean[key], updates[1].payload[key])
    expected = sum(u.payload[SHARED] * wi for u, wi in zip(updates, w)) / sum(w)
    np.testing.assert_allclose(mean[SHARED], expected, rtol=1e-5, atol=1e-7)
    # The s2 sites trained their adapter away from the common start, the s1 adapter moved only at site-2.
    assert not np.allclose(updates[0].payload[s2[1]], 0) and not np.allclose(updates[1].payload[s1[1]], 0)
    # An s2 site may never send the s1 group, even with the right shapes.
    site = sites[0]
    leak = {**updates[0].payload, **{k: updates[1].payload[k] for k in s1}}
    with pytest.raises(PrivacyError, match=r"refusing to send \['adapter.s1"):
        check_outgoing(leak, site.algorithm, site.trainer.shapes, site.name, fused=site.fused)
    # The received global model loads every group: site-1 now holds the s1 adapter the federation averaged.
    site.trainer.set_global(mean)
    np.testing.assert_array_equal(site.trainer.model.adapter["s1"].up.weight.detach().numpy(), mean[s1[1]])


def test_an_implausible_global_adapter_is_refused_like_an_implausible_prompt(listing, cache, tmp_path):
    """train.max_global_change bounds each modality's adapter as it bounds the shared prompt: a global adapter far
    from the previous one (a hostile or broken aggregate) is refused by name and nothing is loaded; the same
    change within the bound loads (before: any finite adapter was loaded)."""
    manifest = mm_manifest(listing, "s2,s1,s2")
    cfg = tiny_config("algorithm=fedrsclip", "train.rounds=1", *FAST, "train.max_global_change=1", cache_dir=cache)
    site = make_site(cfg, "site-1", manifest, state_dir=tmp_path / "state", progress=False)
    update = site.run_round(None, 0)
    shared_before = site.trainer.model.learner.shared_ctx.detach().clone().numpy()
    s1 = adapter_keys(["s1"])
    hostile = {**update.payload, **{k: site.trainer.model.adapter.payload(["s1"])[k] + 5.0 for k in s1}}
    before = {k: v.copy() for k, v in site.trainer.model.adapter.payload(["s1", "s2"]).items()}
    with pytest.raises(
        PayloadError,
        match=r"site-1: the received global adapter of modality s1 is implausible.*"
        r"train\.max_global_change",
    ):
        site.trainer.set_global(hostile)
    after = site.trainer.model.adapter.payload(["s1", "s2"])
    assert all(np.array_equal(before[k], after[k]) for k in before)
    np.testing.assert_array_equal(site.trainer.model.learner.shared_ctx.detach().numpy(), shared_before)
    plausible = {**update.payload, **{k: site.trainer.model.adapter.payload(["s1"])[k] + 0.5 for k in s1}}
    site.trainer.set_global(plausible)
    np.testing.assert_array_equal(site.trainer.model.adapter.payload(["s1"])[s1[0]], plausible[s1[0]])


def test_dp_clips_and_noises_the_adapters_with_the_shared_prompt(listing, cache, tmp_path):
    """DP with MF: every entry a site sends (shared prompt and its adapters) is clipped as one update and noised
    (before: the adapters had no reference, so a DP site refused to send anything)."""
    manifest = mm_manifest(listing, "s2,s1,s2+s1")
    clip = 0.05
    cfg = tiny_config(
        "algorithm=fedrsclip",
        "train.rounds=1",
        *FAST,
        f"privacy.dp_clip_norm={clip}",
        "privacy.dp_noise_multiplier=0",
        "privacy.dp_seed=1",
        cache_dir=cache,
    )
    site = make_site(cfg, "site-3", manifest, state_dir=tmp_path / "state", progress=False)
    start = dict(site.trainer.payload())
    update = site.run_round(None, 0)
    assert set(update.payload) == {SHARED, *adapter_keys(["s2", "s1"])}
    change = np.concatenate([(update.payload[k].astype(np.float64) - start[k]).ravel() for k in sorted(start)])
    assert np.linalg.norm(change) == pytest.approx(clip, rel=1e-4)  # trained further than clip: clipped to it
    assert update.record.metrics["dp_rounds"] == 1


def test_a_site_declares_its_modality_with_its_own_manifest(mm_root, listing, cache, tmp_path):
    """A deployed site with its own single-modality manifest (its site configuration: data.manifest, data.modality)
    in a federation of s2 and s1: it reads its patches through the s1 composite and sends its s1 adapter only."""
    manifest = build_manifest(list_dataset("bigearthnet-s1", mm_root / "S1", progress=False), 2, "uniform", seed=0)
    cfg = tiny_config("multimodal.modalities=s2,s1", "data.modality=s1", "train.rounds=1", *FAST, cache_dir=cache)
    site = make_site(cfg, "site-1", manifest, state_dir=tmp_path, progress=False)
    assert site.modalities == ("s1",) and site.federation == ("s2", "s1") and site.multi_label
    update = site.run_round(None, 0)
    assert set(update.payload) == {SHARED, *adapter_keys(["s1"])}
    with pytest.raises(
        DataError,
        match="site-2: data.modality is s2 but this site's records in the multi-modal manifest are s1 patches",
    ):  # declared against what its records are
        make_site(
            tiny_config("data.modality=s2", cache_dir=cache), "site-2", mm_manifest(listing, "s2,s1"), progress=False
        )


def test_mf_off_keeps_the_adapters_at_their_site(listing, cache, tmp_path):
    manifest = mm_manifest(listing, "s2,s1,s2+s1")
    cfg = tiny_config("train.rounds=2", "multimodal.fusion=false", *FAST, cache_dir=cache)
    results = run_inprocess(cfg, manifest, state_dir=tmp_path, progress=False)
    shared_bytes = 4 * 4 * 64  # n_ctx x width of the tiny CLIP, float32
    assert all(s["bytes_up"] == shared_bytes for r in results["rounds"] for s in r["sites"].values())
    assert results["status"] == "finished" and "warnings" not in results


def test_a_modality_at_one_site_only_is_a_results_warning(listing, cache, caplog):
    manifest = mm_manifest(listing, "s2,s1,s2")
    cfg = tiny_config("train.rounds=1", *FAST, cache_dir=cache)
    with caplog.at_level("INFO", logger="fedrsclip.inprocess"):
        results = run_inprocess(cfg, manifest, progress=False)
    # the progress line gives the label sets' measure (before: nothing, as accuracy is null)
    assert "round 1/1 done" in caplog.text and "mean micro F1 0.0% of the initial model" in caplog.text
    (warning,) = [w for w in results["warnings"] if w["kind"] == "single_site_modality"]
    assert warning["modality"] == "s1" and warning["site"] == "site-2" and warning["round"] == 1
    assert "multimodal.fusion: false" in warning["message"]
    assert "warning: the adapter of modality s1 was sent by site-2 alone" in format_table(results)


def test_mim_is_logged_inactive_when_no_site_holds_pairs(listing, cache, caplog):
    manifest = mm_manifest(listing, "s2,s1")
    cfg = tiny_config("train.rounds=1", *FAST, cache_dir=cache)
    with caplog.at_level("WARNING", logger="fedrsclip.inprocess"):
        results = run_inprocess(cfg, manifest, progress=False)
    assert "MIM is inactive: no site holds paired modalities" in caplog.text
    assert any(w["kind"] == "mim_inactive" for w in results["warnings"])
    assert all(s["mim_steps"] == 0 for s in results["rounds"][0]["sites"].values())
    table = format_table(results)  # the runner's warning says why, once (not a second, vaguer note)
    assert table.count("MIM is inactive: no site holds paired modalities") == 1
    assert "MIM (multimodal.mim) was inactive at every site" not in table


def test_mim_acts_at_the_paired_site(listing, cache):
    manifest = mm_manifest(listing, "s2,s1,s2+s1")
    cfg = tiny_config("train.rounds=1", *FAST, cache_dir=cache)
    sites = run_inprocess(cfg, manifest, progress=False)["rounds"][0]["sites"]
    assert sites["site-3"]["mim_steps"] > 0 and sites["site-3"]["train_mim"] > 0
    assert sites["site-1"]["mim_steps"] == 0 and "train_mim" not in sites["site-1"]


@pytest.mark.parametrize(
    "switch, check",
    [
        ("multimodal.fusion", lambda on, off: on["bytes_up"] > off["bytes_up"]),
        ("multimodal.whitening", lambda on, off: on["train_loss"] != off["train_loss"]),
        ("multimodal.mim", lambda on, off: "train_mim" in on and "train_mim" not in off),
    ],
)
def test_each_ablation_switch_runs_through_fedrsclip_run(listing, cache, tmp_path, capsys, switch, check):
    """MF, FW and MIM each on and off through `fedrsclip run --set` (the paired site, site-3, shows each)."""
    manifest = write_manifest(mm_manifest(listing, "s2,s1,s2+s1"), tmp_path / "mm.json")
    entries = {}
    for value in ("true", "false"):
        out = tmp_path / f"{value}.json"
        rc = main(
            [
                "run",
                "--manifest",
                str(manifest),
                "--rounds",
                "1",
                "--out",
                str(out),
                *(x for o in [*TINY, *FAST, f"data.cache_dir={cache}", f"{switch}={value}"] for x in ("--set", o)),
            ]
        )
        assert rc == 0, capsys.readouterr().err
        entries[value] = json.loads(out.read_text())["rounds"][0]["sites"]["site-3"]
    assert check(entries["true"], entries["false"]), entries
    assert "micro F1" in capsys.readouterr().out


# ---- bad input: a clear message and a results entry -----------------------------------------------------------
def test_a_multi_label_manifest_given_to_a_single_label_algorithm(listing, cache):
    cfg = tiny_config("algorithm=fedavg-full", "train.rounds=1", cache_dir=cache)
    results = run_inprocess(cfg, mm_manifest(listing, "s2"), progress=False)
    assert results["status"] == "failed" and len(results["errors"]) == 3
    error = results["errors"][0]
    assert error["kind"] == "data" and error["task"] == "setup"
    assert (
        "is multi-label (a list of labels per image), and algorithm fedavg-full trains single-label data"
        in error["error"]
        and "use one of: fedrsclip" in error["error"]
    )
    assert "site-1 [data]" in format_table(results)


def test_a_single_label_manifest_given_to_a_multi_label_run(synth_manifest, feature_cache):
    cfg = tiny_config("data.multi_label=true", "train.rounds=1", cache_dir=feature_cache)
    results = run_inprocess(cfg, synth_manifest, progress=False)
    assert results["status"] == "failed"
    assert {e["kind"] for e in results["errors"]} == {"data"}
    assert (
        "data.multi_label is true (a multi-label run) but the manifest of dataset imagefolder is single-label"
        in results["errors"][0]["error"]
    )


def test_a_site_whose_modality_has_no_composite(listing, cache):
    """site-2 declares rgb, which has no band composite for BigEarthNet's band-per-file patches: it is missing, with
    the reason, and the others train."""
    manifest = mm_manifest(listing, "s2,s1,s2")
    manifest["sites"]["site-2"]["modality"] = "rgb"
    manifest["modalities"] = ["s2", "s1", "rgb"]
    cfg = tiny_config("train.rounds=1", *FAST, cache_dir=cache)
    results = run_inprocess(cfg, manifest, progress=False)
    (error,) = results["errors"]
    assert error["site"] == "site-2" and error["kind"] == "data"
    assert "modality 'rgb' has no band composite" in error["error"]
    assert "set data.modality to s2 or s1" in error["error"]
    assert results["rounds"][0]["sites"]["site-2"]["missing"] is True
    assert {"site-1", "site-3"} <= {s for s, v in results["rounds"][0]["sites"].items() if not v.get("missing")}


def test_an_unknown_modality_is_refused_naming_the_setting():
    with pytest.raises(Exception, match=r"--modalities \(multimodal.modalities\): 's9' is not a modality"):
        tiny_config("multimodal.modalities=s2,s9")
    with pytest.raises(Exception, match="data.modality must be auto or one of rgb, s2, s1; got 'sar'"):
        tiny_config("data.modality=sar")


def test_a_band_missing_at_a_site(tmp_path, cache):
    """A Sentinel-1 patch without its VH band: that scene is skipped at its site (the file and why in the log, the
    count in the results); a site whose every patch lacks it cannot take part, with the band named."""
    root = make_synthetic_mm(tmp_path / "data", scenes=24, size=48, seed=1, progress=False)
    manifest = build_mm_manifest(list_dataset("bigearthnet-mm", root, progress=False), 2, "s2,s1", "uniform", 0)
    first = manifest["sites"]["site-2"]["train"][0][0]
    next((root / first).glob("*_VH.tif")).unlink()
    cfg = tiny_config("train.rounds=1", *FAST, cache_dir=tmp_path / "cache")
    results = run_inprocess(cfg, manifest, progress=False)
    assert results["rounds"][0]["sites"]["site-2"]["skipped_images"] == 1
    assert "unreadable images skipped (the files and why are in each site's log): site-2 1" in format_table(results)
    for rel, _ in manifest["sites"]["site-2"]["train"] + manifest["sites"]["site-2"]["test"]:
        for band in (root / rel).glob("*_VH.tif"):
            band.unlink()
    results = run_inprocess(cfg, manifest, progress=False)
    (error,) = results["errors"]
    assert error["site"] == "site-2" and "has no file for band VH" in error["error"]
