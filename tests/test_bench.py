"""`fedrsclip bench`: the quick run end to end (slow), and its parts on the tiny CLIP (fast)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

import numpy as np
import pytest
import torch

from fedrsclip.tools.bench.cli import add_bench_command, bench_command
from fedrsclip.tools.bench.common import NWPU_CLASSES, QUICK, TARGETS, UCMERCED_CLASSES, bench_images
from fedrsclip.tools.bench.overhead import overhead_from_results
from fedrsclip.tools.bench.run import target_rows
from fedrsclip.tools.bench.step import bench_step, reference_text_features
from fedrsclip.tools.bench.upload import ckks_upload, plaintext_upload

NUMBER = (int, float)
# key -> accepted types (None: may be null when that part was skipped or is unavailable)
EXPECTED_KEYS: dict[str, tuple] = {
    "quick": (bool,),
    "device": (str,),
    "torch_threads": (int,),
    "images": (dict,),
    "step_speedup_vs_reference": NUMBER,
    "step_speedup_k21": NUMBER,
    "step_speedup_k45": (*NUMBER, type(None)),
    "step_ms_project_k21": NUMBER,
    "step_ms_reference_k21": NUMBER,
    "step_ms_project_k45": (*NUMBER, type(None)),
    "step_ms_reference_k45": (*NUMBER, type(None)),
    "loss_max_abs_diff": NUMBER,
    "feature_throughput_ratio": NUMBER,
    "feature_images_per_s_project": NUMBER,
    "feature_images_per_s_raw": NUMBER,
    "flare_overhead_fraction": (*NUMBER, type(None)),
    "flare_overhead_note": (str,),
    "upload_bytes_plain": (int,),
    "payload_values": (int,),
    "upload_bytes_payload_nbytes": (int,),
    "upload_bytes_ckks": (int, type(None)),
    "upload_bytes_ckks_stock_flare": (int, type(None)),
    "upload_bytes_full_model": (int,),
    "peak_rss_mb": NUMBER,
    "site_round_s": NUMBER,
    "task_start_s_demo": NUMBER,
    "task_start_s_vitb16": NUMBER,
    "site_peak_rss_mb_extract_vitb16": NUMBER,
    "site_peak_rss_mb_train_vitb16": NUMBER,
    "sim_demo_t1_s": (*NUMBER, type(None)),
    "sim_demo_tn_s": (*NUMBER, type(None)),
    "sim_demo_ratio": (*NUMBER, type(None)),
    "sim_floor_t1_s": (*NUMBER, type(None)),
    "sim_floor_ratio": (*NUMBER, type(None)),
    "sim_demo_t1_over_floor": (*NUMBER, type(None)),
    "sim_demo_note": (str,),
    "targets": (dict,),
    "wall_s": NUMBER,
}


def _tiny_settings() -> dict:
    return dict(QUICK, ref_repeats=2, proj_per_ref=2)


def test_step_paths_agree_on_the_tiny_clip(tiny_backbone):
    """The project's path (cached features, truncated text encoder) and the reference (live image encoder, full
    77-token text encoder) give the same loss and gradient from the same prompts, step after step."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(8, 3, 64, 64, generator=gen)
    labels = torch.arange(8)
    for classes in (21, 45):
        figures, payload = bench_step(tiny_backbone, images, labels, classes, _tiny_settings(), arch="fedrsclip-tiny")
        assert figures["loss_steps_compared"] == 2
        assert figures["reference_samples"] == 2 and figures["project_samples"] == 4
        assert figures["loss_max_abs_diff"] <= 1e-4
        assert figures["loss_abs_diff_fp16_cache"] <= 1e-3
        assert figures["grad_max_rel_diff"] <= 1e-3
        assert figures["reference_text_tokens"] == 77
        assert figures["project_text_tokens"] < 77
        assert figures["reference_ms"] > 0 and figures["project_ms"] > 0
        assert figures["speedup"] == pytest.approx(figures["reference_ms"] / figures["project_ms"])
        assert set(payload) == {"shared_ctx"} and payload["shared_ctx"].shape == (4, 64)


def test_reference_text_features_match_the_truncated_encoder(tiny_backbone):
    from fedrsclip.config import PromptConfig
    from fedrsclip.prompts import PromptLearner

    learner = PromptLearner(tiny_backbone, NWPU_CLASSES, PromptConfig())
    with torch.no_grad():
        full = reference_text_features(learner, tiny_backbone.model)
        cut = learner.text_features()
    assert full.shape == cut.shape == (2, 45, 64)
    torch.testing.assert_close(full, cut, atol=1e-5, rtol=1e-4)


def test_class_lists():
    assert len(UCMERCED_CLASSES) == len(set(UCMERCED_CLASSES)) == 21
    assert len(NWPU_CLASSES) == len(set(NWPU_CLASSES)) == 45


def test_upload_sizes():
    payload = {"shared_ctx": np.random.default_rng(0).normal(0, 0.02, (4, 512)).astype(np.float32)}
    plain = plaintext_upload(payload)
    assert plain["payload_values"] == 2048
    assert plain["upload_bytes_payload_nbytes"] == 8192
    assert plain["upload_bytes_plain"] >= 8192
    if plain["upload_bytes_plain_serialized"] is not None:  # FLARE's DXO: the values plus a small envelope
        assert 8192 < plain["upload_bytes_plain_serialized"] < 8192 + 4096
    ckks = ckks_upload(payload["shared_ctx"])
    # the product's CKKS update (one N=4096 ciphertext) vs FLARE's stock HE path, which ships the context
    assert 60_000 < ckks["upload_bytes_ckks_ciphertext"] < ckks["upload_bytes_ckks"] < 100 * 1024
    assert 5 * ckks["upload_bytes_ckks"] < ckks["upload_bytes_ckks_stock_flare"]
    assert ckks["ckks_aggregation_max_error"] < 1e-6  # sample-weighted mean of 10 sites, decrypted


def _results(rounds: list[dict]) -> dict:
    return {"status": "finished", "rounds": rounds}


def test_overhead_from_results_leaves_out_round_one():
    rounds = [
        {
            "round": 1,
            "started": 0.0,
            "finished": 60.0,
            "sites": {"site-1": {"seconds": 2.0, "train_seconds": 1.0}, "site-2": {"seconds": 3.0}},
        },
        {
            "round": 2,
            "started": 60.0,
            "finished": 70.0,
            "sites": {
                "site-1": {"seconds": 8.0, "train_seconds": 6.0},
                "site-2": {"seconds": 7.0, "train_seconds": 5.0},
            },
        },
        {
            "round": 3,
            "started": 70.0,
            "finished": 80.0,
            "sites": {
                "site-1": {"seconds": 9.0, "train_seconds": 7.0},
                "site-2": {"missing": True, "error": "no result"},
            },
        },
    ]
    out = overhead_from_results(_results(rounds))
    assert out["flare_rounds_used"] == [2, 3]
    assert out["flare_overhead_fraction"] == pytest.approx(statistics.median([0.2, 0.1]))
    assert out["flare_overhead_fraction_train_only"] == pytest.approx(statistics.median([0.4, 0.3]))
    assert out["flare_overhead_s_per_round"] == pytest.approx(1.5)
    assert "round 1" in out["flare_overhead_note"]


def test_overhead_from_results_without_rounds():
    out = overhead_from_results(_results([]))
    assert out["flare_overhead_fraction"] is None and out["flare_overhead_note"]
    only_first = [{"round": 1, "started": 0.0, "finished": 10.0, "sites": {"site-1": {"seconds": 5.0}}}]
    out = overhead_from_results(_results(only_first))
    assert out["flare_overhead_fraction"] == pytest.approx(0.5)
    assert "start-up" in out["flare_overhead_note"]


def test_targets_and_table():
    results = {
        "step_speedup_vs_reference": 12.0,
        "feature_throughput_ratio": 0.8,
        "flare_overhead_fraction": None,
        "upload_bytes_plain": 8192,
        "upload_bytes_ckks": 200_000,
        "peak_rss_mb": 1800.0,
    }
    rows = target_rows(results)
    assert rows["step speed-up"]["pass"] is True
    assert rows["feature throughput"]["pass"] is False
    assert rows["FLARE overhead"]["pass"] is None
    assert rows["plaintext upload"]["pass"] is True
    assert rows["CKKS upload"]["pass"] is False
    assert rows["peak RSS"]["pass"] is True


def test_command_options():
    parser = argparse.ArgumentParser()
    add_bench_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "--quick", "--device", "cpu", "--json-out", "x.json", "--threads", "2"])
    assert (args.quick, args.device, args.json_out, args.threads, args.flare) == (True, "cpu", "x.json", 2, None)
    assert args.func is bench_command
    assert parser.parse_args(["bench", "--no-flare"]).flare is False
    assert parser.parse_args(["bench", "--flare-arch", "ViT-B-16"]).flare_arch == "ViT-B-16"


@pytest.mark.slow
def test_quick_bench_cli(tmp_path):
    """`fedrsclip bench --quick`: the last stdout line is one JSON object with every figure."""
    out = tmp_path / "bench.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "fedrsclip.cli", "bench", "--quick", "--json-out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    results = json.loads(lines[-1])
    assert "targets:" in proc.stdout and ("PASS" in proc.stdout or "MISS" in proc.stdout)
    for key, types in EXPECTED_KEYS.items():
        assert key in results, key
        assert isinstance(results[key], types), (key, results[key])
    assert results["quick"] is True
    assert results["step_speedup_k45"] is None and results["step_k45_note"]
    assert results["flare_overhead_fraction"] is None and "quick" in results["flare_overhead_note"]
    assert results["sim_demo_ratio"] is None and "quick" in results["sim_demo_note"]
    assert results["sim_demo_t1_over_floor"] is None and "-t 1 / FLARE floor" in proc.stdout
    assert 0 < results["task_start_s_demo"] < 120 and 0 < results["task_start_s_vitb16"] < 300
    assert 100 < results["site_peak_rss_mb_train_vitb16"] < results["site_peak_rss_mb_extract_vitb16"] < 64_000
    assert "task start ViT-B/16" in proc.stdout and "-t 1 / -t N" in proc.stdout
    assert results["step_speedup_vs_reference"] > 1
    assert results["loss_max_abs_diff"] <= 1e-4 and results["loss_equal"] is True
    assert 0 < results["feature_throughput_ratio"] < 10
    assert results["payload_values"] == 2048 and results["upload_bytes_payload_nbytes"] == 8192
    assert results["upload_bytes_full_model"] > 1_000_000 * 4
    assert 100 < results["peak_rss_mb"] < 64_000
    assert results["images"]["source"]
    assert set(results["targets"]) == set(TARGETS)
    assert json.loads(out.read_text()) == results


def test_synthetic_images_when_the_real_sample_is_absent(tmp_path):
    items, info = bench_images(5, tmp_path, tmp_path / "absent")
    assert len(items) == 5 and "synthetic" in info["source"]
    assert len({label for _, label in items}) == 5  # one image of each of the first classes
    from PIL import Image

    with Image.open(items[0][0]) as image:
        assert image.size == (224, 224)
