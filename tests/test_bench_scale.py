"""The paper's scale on one machine (issue 14): the reused UC Merced partition, a site's start in a fresh process,
memory sampled from a process tree, and (slow) the paper-scale simulator run on the tiny CLIP."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import Counter

import pytest

from helpers import REAL_DATA

needs_sample = pytest.mark.skipif(not REAL_DATA.is_dir(), reason="the UC Merced sample is not on this machine")


@needs_sample
@pytest.mark.parametrize("sites, train", [(10, {105}), (40, {26, 27})])
def test_reused_partition_is_table_one(sites, train):
    """Table I: 1,050 training (and as many test) items of UC Merced over the sites, floor/ceiling each; from the
    210-image sample the images are reused, never twice at one site, the test images never in a training split."""
    from fedrsclip.data.manifest import validate_manifest
    from fedrsclip.tools.bench.paper import reused_partition

    manifest = reused_partition(REAL_DATA, sites)
    validate_manifest(manifest)
    parts = manifest["sites"]
    assert list(parts) == [f"site-{i + 1}" for i in range(sites)]
    for split in ("train", "test"):
        sizes = [len(p[split]) for p in parts.values()]
        assert sum(sizes) == 1050 and set(sizes) == train
        for part in parts.values():
            paths = [rel for rel, _ in part[split]]
            assert len(paths) == len(set(paths))  # no image twice at a site
            assert all(rel.split("/")[0] == manifest["class_folders"][label] for rel, label in part[split])
    train_files = {rel for p in parts.values() for rel, _ in p["train"]}
    test_files = {rel for p in parts.values() for rel, _ in p["test"]}
    assert len(train_files) == len(test_files) == 105 and not train_files & test_files
    uses = Counter(rel for p in parts.values() for rel, _ in p["train"])
    assert set(uses.values()) == {10}  # every sample image stands for 10 of the full dataset's
    assert "REUSED" in manifest["note"]
    if sites == 10:  # every site holds the whole sample
        assert all({rel for rel, _ in p["train"]} == train_files for p in parts.values())
    per_class = Counter(label for p in parts.values() for _, label in p["train"])
    assert set(per_class.values()) == {50}


def test_memory_watch_finds_the_site_processes(tmp_path):
    """MemoryWatch reads a real process tree: the root and a child named as FLARE's site workers are (`--client`)."""
    from fedrsclip.tools.bench.memwatch import MemoryWatch

    child = (
        "import sys, time; block = bytearray(80 * 1024 * 1024); block[::4096] = b'x' * len(block[::4096]); "
        "time.sleep(3)"
    )
    parent = (
        f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}, "
        "'nvflare.private.fed.app.simulator.simulator_worker', '--client', 'site-7'])"
    )
    proc = subprocess.Popen([sys.executable, "-c", parent])
    watch = MemoryWatch(proc.pid, interval=0.2).start()
    proc.wait(timeout=60)
    summary = watch.stop()
    assert summary["samples"] >= 3 and summary["site_processes_at_once_max"] == 1
    site = summary["sites"]["site-7"]
    assert site["rss_mb"] >= 80 and site["vmhwm_mb"] >= 80 and site["pss_mb"] >= 75
    assert summary["run_rss_mb_peak"] >= site["rss_mb"] and summary["machine_used_mb_peak"] > 0
    assert summary["server_process"]["rss_mb"] > 0


def test_demo_site_starts_warm_from_its_caches(tmp_path):
    """The demo job's site in fresh processes, as a FLARE task starts it: cold (features extracted, the text tower
    written) then warm (neither open_clip imported nor the image tower loaded), every figure measured."""
    from fedrsclip.flare.job import JobSpec
    from fedrsclip.tools.bench.sitestart import measure_starts

    job = JobSpec(sites=2, overrides=("data.synthetic_per_class=10",))
    out = measure_starts("demo", job.settings_file, job.job_overrides, tmp_path, warm_repeats=1, threads=1)
    cold, (warm,) = out["cold"], out["warm"]
    assert cold["open_clip_imported"] and not warm["open_clip_imported"] and not warm["image_tower_loaded"]
    assert warm["steps"] == cold["steps"] >= 2
    assert 0 < warm["python_start_s"] < warm["imports_s"] < warm["site_built_s"] < warm["task_start_s"]
    assert warm["site_built_s"] - warm["imports_s"] < cold["site_built_s"] - cold["imports_s"]
    assert 100 < warm["peak_rss_mb"] < 4000 and warm["peak_rss_mb"] >= warm["peak_rss_mb_built"]
    assert out["warm_median"]["task_start_s"] == warm["task_start_s"]
    assert any((tmp_path / ".cache" / "fedrsclip-features" / "text-towers").glob("*.safetensors"))


def test_bench_options_for_the_paper_scale():
    from fedrsclip.tools.bench.cli import add_bench_command

    parser = argparse.ArgumentParser()
    add_bench_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "bench",
            "--paper-scale",
            "40",
            "--sim-threads",
            "8",
            "--rounds",
            "2",
            "--gpu",
            "0",
            "--set",
            "model.text_precision=bf16",
            "--cold",
        ]
    )
    assert (args.paper_scale, args.sim_threads, args.rounds, args.gpu, args.overrides, args.cold) == (
        40,
        8,
        2,
        "0",
        ["model.text_precision=bf16"],
        True,
    )
    assert parser.parse_args(["bench"]).paper_scale is None


def test_paper_scale_without_images_says_so(tmp_path, capsys):
    from fedrsclip.tools.bench.paper import paper_scale_command

    assert paper_scale_command(2, str(tmp_path / "out"), None, 1, str(tmp_path / "absent"), False, None, []) == 2
    assert "no UC Merced images at" in capsys.readouterr().err


@needs_sample
@pytest.mark.slow
def test_paper_scale_run_on_the_tiny_clip(tmp_path):
    """The whole paper-scale path (random checkpoint file, reused partition, caches filled once, the simulator with
    memory sampled, the results read back) at 2 sites on the tiny CLIP: every figure is there."""
    from fedrsclip.tools.bench.paper import format_paper, run_paper_scale

    start = time.perf_counter()
    report = run_paper_scale(
        2, tmp_path / "out", threads=2, rounds=2, images=REAL_DATA, per_class=3, arch="fedrsclip-tiny"
    )
    assert report["simulator_exit_code"] == 0 and report["status"] == "finished", report.get("log")
    assert [r["round"] for r in report["rounds_table"]] == [1, 2]
    assert all(r["sites_reported"] == 2 and r["sites_missing"] == 0 for r in report["rounds_table"])
    assert report["round_s_after_first"] > 0 and 0 <= report["flare_overhead_fraction"] < 1
    assert 42 <= report["prepare"]["distinct_images"] <= 210  # at least one image per class and split
    memory = report["memory"]
    assert set(memory["sites"]) == {"site-1", "site-2"} and memory["site_peak_vmhwm_mb_max"] > 100
    assert memory["run_pss_mb_peak"] > 0 and report["data"]["train_per_site"] == [31, 32]  # 63 items, 2 sites
    saved = json.loads((tmp_path / "out" / "paper-scale-2.json").read_text())
    assert saved["rounds_table"] == report["rounds_table"]
    assert "paper scale: 2 sites" in format_paper(report)
    log = (tmp_path / "out" / "ws.log").read_text(errors="replace")
    assert "extracting features" not in log  # every site started from its filled cache
    assert report["data"]["same_image_at_a_site_max"] == 1 and "same image" not in report["data"]["note"]
    # a rerun into its own output: allowed, its files replaced, a file the user added there left alone
    (tmp_path / "out" / "notes.txt").write_text("the user's\n")
    again = run_paper_scale(
        2, tmp_path / "out", threads=2, rounds=1, images=REAL_DATA, per_class=3, arch="fedrsclip-tiny"
    )
    assert again["status"] == "finished" and [r["round"] for r in again["rounds_table"]] == [1]
    assert json.loads((tmp_path / "out" / "paper-scale-2.json").read_text())["rounds"] == 1
    assert (tmp_path / "out" / "notes.txt").read_text() == "the user's\n"
    assert time.perf_counter() - start < 600


def test_bench_gpu_stops_clearly_without_cuda(tmp_path, capsys):
    import torch

    from fedrsclip.tools.bench.gpu import main

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: make bench-gpu runs for real")
    assert main(["--out", str(tmp_path / "gpu")]) == 2
    err = capsys.readouterr().err
    assert "needs an NVIDIA GPU" in err and "make bench" in err
    assert not (tmp_path / "gpu").exists()  # nothing measured, nothing written


def test_task_phases_from_a_simulator_log(tmp_path):
    """-t 1: the gaps between FLARE's lines for each task's worker process (times as the simulator logs them)."""
    from fedrsclip.flare.simulator import task_phases

    lines = [
        "2026-01-01 10:00:00,000 - INFO - Round 0 started.",
        "2026-01-01 10:00:01,000 - INFO - ClientTaskWorker started to run",
        "2026-01-01 10:00:04,000 - INFO - Initialize ClientRunner for client: site-1",
        "2026-01-01 10:00:05,500 - INFO - Finished one task run for client: site-1 interval: 0.5",
        "2026-01-01 10:00:07,500 - INFO - ClientTaskWorker started to run",
        "2026-01-01 10:00:10,000 - INFO - Initialize ClientRunner for client: site-2",
        "2026-01-01 10:00:10,500 - INFO - Finished one task run for client: site-2 interval: 0.5",
    ]
    log = tmp_path / "sim.log"
    log.write_text("\n".join(lines) + "\n")
    phases = task_phases(log)
    assert phases["tasks"] == 2 and phases["between_s"] == pytest.approx(2.0)
    assert phases["setup_s"] == pytest.approx(2.75) and phases["task_s"] == pytest.approx(1.0)
    log.write_text(lines[0] + "\n")
    assert task_phases(log) is None


def test_flare_floor_job_is_flares_numpy_federation(tmp_path):
    """The floor job: FLARE's stock numpy components only, the sites and rounds asked for, this job's server timing."""
    from fedrsclip.flare.job import TASK_REQUEST_INTERVAL
    from fedrsclip.tools.bench.floor import floor_job

    job = floor_job(3, 4, tmp_path)
    server = json.loads((job / "app" / "config" / "config_fed_server.json").read_text())
    client = json.loads((job / "app" / "config" / "config_fed_client.json").read_text())
    workflow = server["workflows"][0]
    assert workflow["path"].endswith("ScatterAndGather")
    assert workflow["args"]["num_rounds"] == 4 and workflow["args"]["min_clients"] == 3
    assert server["server"]["task_request_interval"] == TASK_REQUEST_INTERVAL
    assert [e["executor"]["path"] for e in client["executors"]] == ["nvflare.app_common.np.np_trainer.NPTrainer"]
    assert "fedrsclip" not in json.dumps(server) + json.dumps(client)


@pytest.mark.slow
def test_flare_floor_runs_every_task_in_a_fresh_worker(tmp_path):
    """FLARE's numpy federation with -t 1: every round finishes and every task's worker phases are in the log."""
    from fedrsclip.tools.bench.floor import bench_flare_floor

    out = bench_flare_floor(tmp_path, sites=2, rounds=2, threads=1)
    assert out["ok"] and out["rounds_finished"] == 2 and out["tasks"] == 4
    assert out["task_phases"]["tasks"] == 4
    assert 0 < out["task_phases"]["task_s"] < out["wall_s_per_task"] < out["wall_s"]
