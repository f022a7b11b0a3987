"""The FLARE job on the real `nvflare simulator` (subprocess), offline default: tiny random CLIP, synthetic data."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from fedrsclip.cli import main
from fedrsclip.flare.job import job_settings
from fedrsclip.flare.model_file import load_npz
from fedrsclip.results_file import SIMULATOR_RESULTS, find_results, load_results
from fedrsclip.tools.demo import run_demo
from fedrsclip.tools.reporting.run_table import format_table
from helpers import FAST, REPO, make_job, simulate

SITES, ROUNDS = 3, 3
DEFAULT_JOB = REPO / "jobs" / "fedrsclip"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flare")
    job = make_job(tmp / "job", sites=SITES, rounds=ROUNDS, overrides=FAST)
    ws = tmp / "ws"
    proc = simulate(job, ws, SITES, SITES)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return {"job": job, "ws": ws, "log": proc.stdout + proc.stderr}


def _state(ws: Path, site: str, kind: str = "state") -> dict:
    path = ws / site / "simulate_job" / "fedrsclip" / f"{site}-{kind}.pt"
    assert path.is_file(), f"missing {path}"
    return torch.load(path, map_location="cpu", weights_only=True)


def test_results_file_records_every_site_every_round(run):
    path = find_results(run["ws"])
    assert path == run["ws"] / SIMULATOR_RESULTS
    results = json.loads(path.read_text())
    assert results["status"] == "finished"
    assert results["algorithm"] == "fedrsclip"
    assert "RANDOM" in results["backbone"] and "SYNTHETIC" in results["data"]
    assert results["sites"] == [f"site-{i}" for i in range(1, SITES + 1)]
    assert [r["round"] for r in results["rounds"]] == list(range(1, ROUNDS + 1))
    for record in results["rounds"]:
        assert record["missing"] == []
        for site in results["sites"]:
            entry = record["sites"][site]
            assert 0.0 <= entry["accuracy"] <= 100.0
            assert entry["samples"] > 0 and entry["samples_train"] > 0
            assert entry["bytes_up"] == 4 * 64 * 4  # n_ctx x width x float32: the shared prompt only
            assert entry["bytes_down"] == (0 if record["round"] == 1 else entry["bytes_up"])
            assert entry["seconds"] > 0 and np.isfinite(entry["train_loss"])
        assert record["mean_accuracy"] is not None and record["weighted_accuracy"] is not None
    assert set(results["initial"]["sites"]) == set(results["sites"])
    assert set(results["final"]["sites"]) == set(results["sites"])
    assert results["best"]["round"] in range(1, ROUNDS + 1)
    assert results["errors"] == []


def test_server_keeps_global_and_best_model(run):
    app = run["ws"] / "server" / "simulate_job" / "app_server"
    weights, info = load_npz(app / "FL_global_model.npz")
    assert info["round"] == ROUNDS
    assert weights["shared_ctx"].shape == (4, 64) and np.isfinite(weights["shared_ctx"]).all()
    best, best_info = load_npz(app / "best_FL_global_model.npz")
    assert best["shared_ctx"].shape == (4, 64)
    assert best_info["round"] == load_results(app / "fedrsclip_results.json")["best"]["round"]


def test_each_site_keeps_its_private_prompt_and_the_final_global_prompt(run):
    global_prompt = load_npz(run["ws"] / "server" / "simulate_job" / "app_server" / "FL_global_model.npz")[0]
    privates = []
    for i in range(1, SITES + 1):
        site = f"site-{i}"
        state = _state(run["ws"], site)
        assert state["round"] == ROUNDS - 1  # saved after the last training round (0-based)
        assert set(state["prompts"]) == {"shared_ctx", "private_ctx"}
        final = _state(run["ws"], site, "final")["prompts"]
        np.testing.assert_array_equal(final["shared_ctx"].numpy(), global_prompt["shared_ctx"])
        torch.testing.assert_close(final["private_ctx"], state["prompts"]["private_ctx"])
        privates.append(final["private_ctx"])
    assert not torch.equal(privates[0], privates[1])  # private prompts stay local and differ


def test_metrics_streamed_to_tensorboard(run):
    tb = run["ws"] / "server" / "simulate_job" / "tb_events"
    assert sorted(p.name for p in tb.iterdir()) == [f"site-{i}" for i in range(1, SITES + 1)]
    assert all(any(p.glob("events.out.tfevents.*")) for p in tb.iterdir())


def test_metrics_are_readable_where_the_readme_says(run):
    """README: `tensorboard --logdir <ws>/server/simulate_job/tb_events` shows each site's accuracy and loss."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for i in range(1, SITES + 1):
        events = EventAccumulator(str(run["ws"] / "server" / "simulate_job" / "tb_events" / f"site-{i}")).Reload()
        tags = set(events.Tags()["scalars"])
        assert {"accuracy", "train_loss", "final_accuracy"} <= tags, tags
        assert [e.step for e in events.Scalars("train_loss")] == list(range(1, ROUNDS + 1))


def test_each_phase_of_a_sites_task_is_recorded_and_adds_up(run):
    """Per-site seconds left out process start and feature extraction (5.8 s recorded for a 703 s round)."""
    results = load_results(find_results(run["ws"]))
    for record in results["rounds"]:
        for site, entry in record["sites"].items():
            timings = entry["timings"]
            expected = (
                {"start", "load", "extract", "evaluate", "train"} if record["round"] == 1 else {"evaluate", "train"}
            )  # one process per site (-t N): it started once
            assert set(timings) == expected, (record["round"], site, timings)
            assert all(v >= 0 for v in timings.values())
            assert entry["seconds"] == pytest.approx(sum(timings.values()))
    first = results["rounds"][0]["sites"]["site-1"]["timings"]
    assert first["start"] > 0.5 and first["load"] > 0  # Python, torch and FLARE start; the CLIP is built


def test_a_raw_simulator_run_shows_progress(run):
    """The server logs one line per round (slowest site by phase, accuracy, time left); each site says when it is
    ready and how fast it extracted its image features."""
    log = run["log"]
    for rnd in range(1, ROUNDS + 1):
        assert re.search(rf"round {rnd}/{ROUNDS} done in [\d.]+s: {SITES}/{SITES} sites; slowest site-\d+ ", log)
    assert re.search(rf"round 1/{ROUNDS} done .*about \S+ left for {ROUNDS - 1} rounds", log)
    for i in range(1, SITES + 1):
        assert re.search(rf"site-{i}: ready after [\d.]+s \(start [\d.]+, load [\d.]+, extract [\d.]+\)", log)
    assert re.search(r"train features: \d+ images in [\d.]+ s \([\d.]+ images/s", log)


def test_report_of_the_run(run, capsys):
    assert main(["report", str(run["ws"])]) == 0
    out = capsys.readouterr().out
    assert "synthetic data, RANDOM-weight CLIP — not meaningful accuracy" in out
    assert "site-1" in out and "weighted" in out
    # the sites' predictions stay in their workspaces; a simulation has them at hand for the zero-shot reference
    assert re.search(
        r"zero-shot CLIP \(\"a satellite photo of \{class\}.\", no training\): [\d.]+% on \d+ test "
        "images of all sites",
        out,
    )
    app = run["ws"] / "server" / "simulate_job" / "app_server"
    for name in ("accuracy_per_round.png", "per_site_accuracy.png", "confusion_matrix.png"):
        assert f"figure: {app / name}" in out and (app / name).stat().st_size > 10_000
    table = format_table(load_results(find_results(run["ws"])))
    assert len([line for line in table.splitlines() if line.split()[:1] and line.split()[0].isdigit()]) == ROUNDS


def test_job_folder_is_configuration_only():
    settings = job_settings(DEFAULT_JOB)
    assert settings["num_rounds"] == 10 and settings["min_clients"] == 10
    assert settings["overrides"] == ["data.synthetic_sites=10"]
    assert not [p for p in (DEFAULT_JOB / "app" / "custom").rglob("*.py")]  # the code is the installed package


def test_job_zip_is_valid_byoc_job():
    """What `nvflare job submit` and the simulator do with the folder: zip it and validate it server-side."""
    from nvflare.fuel.utils.zip_utils import zip_directory_to_bytes
    from nvflare.private.fed.server.job_meta_validator import JobMetaValidator

    data = zip_directory_to_bytes(str(DEFAULT_JOB.parent), DEFAULT_JOB.name)
    valid, error, meta = JobMetaValidator().validate(DEFAULT_JOB.name, data)
    assert valid, error
    assert meta["byoc"] is True  # app/custom/ present: the fedrsclip.* components are not on FLARE's allow-list
    assert meta["min_clients"] == 10


def test_run_demo_prints_progress_and_the_labelled_table(tmp_path, capsys):
    assert run_demo(str(tmp_path / "ws"), sites=2, rounds=1, overrides=["data.synthetic_per_class=10"]) == 0
    out = capsys.readouterr().out
    assert "[demo] round 1/1 done in" in out and "; slowest site-" in out  # the server's line, relayed
    assert "[demo] site-1: ready after" in out and "[demo] site-2: ready after" in out  # round 1 is not silent
    assert "synthetic data, RANDOM-weight CLIP — not meaningful accuracy" in out
    assert "round  site-1  site-2  mean  weighted" in out
    assert (tmp_path / "ws.log").is_file()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("a user's file")
    assert run_demo(str(tmp_path / "mine"), sites=2) == 1  # the simulator would empty it: refused
    assert "holds notes.txt, which is not a simulator workspace's" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "a user's file"


@pytest.mark.slow
def test_one_thread_gives_the_same_results_as_one_thread_per_site(run, tmp_path):
    """-t 1: every task in a fresh process, all state from disk; must match -t N (one process per site)."""
    ws = tmp_path / "ws1"
    proc = simulate(run["job"], ws, SITES, threads=1)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    a, b = load_results(find_results(run["ws"])), load_results(find_results(ws))
    for ra, rb in zip(a["rounds"], b["rounds"], strict=True):
        for site in a["sites"]:
            assert ra["sites"][site]["accuracy"] == pytest.approx(rb["sites"][site]["accuracy"], abs=1e-6)
            assert ra["sites"][site]["train_loss"] == pytest.approx(rb["sites"][site]["train_loss"], abs=1e-5)
    for i in range(1, SITES + 1):
        pa, pb = _state(run["ws"], f"site-{i}", "final")["prompts"], _state(ws, f"site-{i}", "final")["prompts"]
        for key in pa:
            torch.testing.assert_close(pa[key], pb[key], atol=1e-6, rtol=0)


@pytest.mark.slow
def test_repository_job_as_is_with_ten_sites(tmp_path):
    """`nvflare simulator jobs/fedrsclip -n 10 -t 10` from a fresh clone: no preparation step."""
    ws = tmp_path / "demo"
    proc = simulate(DEFAULT_JOB, ws, 10, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    results = load_results(find_results(ws))
    assert results["status"] == "finished" and len(results["rounds"]) == 10 and results["errors"] == []
    assert results["rounds"][-1]["mean_accuracy"] > results["initial"]["mean_accuracy"] + 10
