"""Faults injected into real FLARE simulator runs: a site process killed with SIGKILL mid-round (the round goes on
without it while min_clients holds, the job stops naming the missing sites when it does not); a site process
killed and restarted, which resumes its private prompt from disk and rejoins; the whole simulator killed mid-run
and resumed from its last global model; and bad updates rejected by the server's aggregator.

Every test runs the simulator for 30-120 s on 2 cores: all are marked slow."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from fedrsclip.data import build_manifest, list_dataset, make_synthetic, write_manifest
from fedrsclip.flare.job import JobSpec, find_resume, write_job
from fedrsclip.flare.model_file import load_npz
from fedrsclip.flare.settings import SITE_CONFIG_ENV
from fedrsclip.flare.simulator import simulator_command
from fedrsclip.results_file import find_results, load_results
from fedrsclip.tools.reporting.run_table import format_table
from helpers import ENV, make_job, simulate
from test_poc import MARKER, our_processes

pytestmark = pytest.mark.slow
FAST = ["data.synthetic_per_class=20"]


class Simulator:
    """A simulator run in the background; every process it started is ended by its id at the end."""

    def __init__(self, job: Path, ws: Path, sites: int, threads: int):
        self.ws, self.marker = ws, uuid.uuid4().hex
        self.log = ws.parent / f"{ws.name}.log"
        self.proc = subprocess.Popen(
            simulator_command(job, ws, sites, threads),
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            env={**ENV, MARKER: self.marker},
            start_new_session=True,
        )

    def site_worker(self, site: str) -> int | None:
        for pid, cmdline in our_processes(self.marker, self.ws).items():
            if "simulator_worker" in cmdline and f"--client {site} " in cmdline:
                return pid
        return None

    def kill_site_in_round(self, site: str, rnd: int, timeout: float = 300) -> None:
        """SIGKILL `site`'s process once it has received its train task of round `rnd` (1-based)."""
        log = self.ws / site / "log.txt"
        deadline = time.time() + timeout
        while time.time() < deadline:
            text = log.read_text(errors="replace") if log.is_file() else ""
            if text.count("got task assignment: name=train") >= rnd:
                pid = self.site_worker(site)
                assert pid, f"no process of {site} to kill"
                os.kill(pid, signal.SIGKILL)
                return
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            time.sleep(0.05)
        raise AssertionError(f"{site} never got its round-{rnd} task")

    def wait(self, timeout: float = 600) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self.stop()

    def stop(self) -> None:
        for pid in [self.proc.pid, *our_processes(self.marker, self.ws)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(30)


def missing(results: dict, rnd: int) -> dict:
    record = next(r for r in results["rounds"] if r["round"] == rnd)
    return {s: e for s, e in record["sites"].items() if e.get("missing")}


def test_killed_sites_are_missing_then_the_job_stops_naming_them(tmp_path):
    """3 sites, min_clients 2: site-3 is killed in round 2 (the round completes with sites 1 and 2), site-2 in
    round 3 (one update is below min_clients: the job stops and names both)."""
    job = make_job(
        tmp_path / "job",
        sites=3,
        rounds=4,
        overrides=[*FAST, "train.local_epochs=20"],
        min_clients=2,
        train_timeout=30,
        wait_after_min=2,
    )
    sim = Simulator(job, tmp_path / "ws", 3, 3)
    try:
        sim.kill_site_in_round("site-3", 2)
        sim.kill_site_in_round("site-2", 3)
    finally:
        rc = sim.wait()
    log = sim.log.read_text()
    assert rc != 0, log[-3000:]
    results = load_results(find_results(tmp_path / "ws"))
    assert results["status"] == "failed"
    assert missing(results, 1) == {}
    assert set(missing(results, 2)) == {"site-3"} and missing(results, 2)["site-3"]["kind"] == "no_result"
    assert {"site-1", "site-2"} <= set(next(r for r in results["rounds"] if r["round"] == 2)["sites"])
    assert set(missing(results, 3)) == {"site-2", "site-3"}
    assert [r["round"] for r in results["rounds"]] == [1, 2, 3]  # round 4 never started
    message = (
        "only 1 site(s) completed round 3 (site-1), min_clients is 2; missing: site-2 (no answer); site-3 (no answer)"
    )
    assert message in log
    assert any(message in e["error"] for e in results["errors"] if e["site"] == "server")
    weights, info = load_npz(tmp_path / "ws" / "server" / "simulate_job" / "app_server" / "FL_global_model.npz")
    assert info["round"] == 2 and all(np.isfinite(v).all() for v in weights.values())  # round 2's model kept
    # the killed sites' state on disk is complete: the last round each finished
    for site, done in (("site-3", 0), ("site-2", 1)):
        state = torch.load(
            tmp_path / "ws" / site / "simulate_job" / "fedrsclip" / f"{site}-state.pt", weights_only=True
        )
        assert state["round"] == done and torch.isfinite(state["prompts"]["private_ctx"]).all()


def test_killed_site_restarts_resumes_its_prompt_and_rejoins(tmp_path):
    """-t 2 for 3 sites: a fresh process per task. site-3's is killed mid-round 2; the simulator starts another,
    which gets the round-2 task again, resumes the private prompt from disk and completes every round."""
    job = make_job(tmp_path / "job", sites=3, rounds=3, overrides=FAST)
    sim = Simulator(job, tmp_path / "ws", 3, 2)
    try:
        sim.kill_site_in_round("site-3", 2)
    finally:
        rc = sim.wait()
    log = sim.log.read_text()
    assert rc == 0, log[-3000:]
    assert re.search(r"(Subprocess died for|Communication error with) client site-3", log)  # the process died
    results = load_results(find_results(tmp_path / "ws"))
    assert results["status"] == "finished"
    for record in results["rounds"]:
        assert record["missing"] == [] and "state_restarted" not in record["sites"]["site-3"], record
    site_log = (tmp_path / "ws" / "site-3" / "log.txt").read_text()
    assert site_log.count("got task assignment: name=train") == 4  # round 2 twice
    assert site_log.count("resumed local state from") >= 3
    state = torch.load(tmp_path / "ws" / "site-3" / "simulate_job" / "fedrsclip" / "site-3-state.pt", weights_only=True)
    assert state["round"] == 2


def test_simulator_killed_mid_run_resumes_from_the_last_global_model(tmp_path):
    job = make_job(tmp_path / "job", sites=2, rounds=4, overrides=FAST)
    ws1, ws2 = tmp_path / "ws1", tmp_path / "ws2"
    model = ws1 / "server" / "simulate_job" / "app_server" / "FL_global_model.npz"
    sim = Simulator(job, ws1, 2, 2)
    try:
        deadline = time.time() + 300
        while not model.is_file() and time.time() < deadline:
            assert sim.proc.poll() is None, sim.log.read_text()[-3000:]
            time.sleep(0.05)
    finally:
        sim.stop()  # SIGKILL: the server and both sites, mid-run
    done = load_npz(model)[1]["round"]
    assert 1 <= done < 4
    states = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in ws1.glob("site-*/simulate_job/fedrsclip/*.pt")}
    assert len(states) == 2

    resume = find_resume(ws1)
    assert resume.rounds_done == done
    resumed = write_job(JobSpec(sites=2, rounds=4, overrides=tuple(FAST), resume=resume), tmp_path / "job2")
    proc = simulate(resumed, ws2, 2)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    results = load_results(find_results(ws2))
    assert results["status"] == "finished"
    assert [r["round"] for r in results["rounds"]][-(4 - done) :] == list(range(done + 1, 5))
    for record in results["rounds"]:
        assert record["missing"] == []
        for entry in record["sites"].values():
            assert "state_restarted" not in entry  # each site went on with its private prompt
    assert load_npz(ws2 / "server" / "simulate_job" / "app_server" / "FL_global_model.npz")[1]["round"] == 4
    assert results["num_rounds"] == 4  # a resumed run counts on from the earlier run's rounds ("11/10 rounds")
    assert f"4/4 rounds (rounds {done + 1}-4 in this run, resumed after round {done})" in format_table(results)
    for site in ("site-1", "site-2"):
        log = (ws2 / site / "log.txt").read_text()
        assert "local state of the earlier job copied from" in log
        assert f"{site} round {done + 1}/4: received" in log
    assert states == {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in states}  # the earlier run untouched


BAD_UPDATES = '''
"""Test-only fault injection, shipped in the test's copy of the job (app/custom): corrupts one site's update."""
import numpy as np
from nvflare.apis.dxo import from_shareable
from nvflare.apis.filter import Filter


class CorruptUpdate(Filter):
    def __init__(self, site, round, how):
        super().__init__()
        self.site, self.round, self.how = site, round, how

    def process(self, shareable, fl_ctx):
        dxo = from_shareable(shareable)
        if fl_ctx.get_identity_name() != self.site or dxo.get_meta_prop("fedrsclip")["round"] != self.round + 1:
            return shareable
        for key, value in dxo.data.items():
            if self.how == "nan":
                value = value.copy()
                value[0, 0] = np.nan
            else:
                value = np.zeros((value.shape[0] + 1, value.shape[1]), np.float32)
            dxo.data[key] = value
        return dxo.update_shareable(shareable)
'''


def test_bad_updates_are_rejected_and_shown_as_missing(tmp_path):
    """4 sites, min_clients 2. site-2 sends NaN in round 1, site-3 a wrong shape in round 2, and site-4 trains on a
    manifest whose class list differs: each is rejected for that round, the others are averaged."""
    images = make_synthetic(tmp_path / "images", classes=5, per_class=20, size=64, progress=False)
    manifest = build_manifest(list_dataset("synthetic", images, verify=False, progress=False), 4, "uniform", 0)
    good = write_manifest(manifest, tmp_path / "good.json")
    other = write_manifest(
        {**manifest, "classes": [f"other {c}" for c in manifest["classes"]]}, tmp_path / "other.json"
    )
    for site in ("site-1", "site-2", "site-3", "site-4"):
        (tmp_path / f"{site}.yaml").write_text(
            textwrap.dedent(f"""\
            data:
              source: manifest
              manifest: {other if site == "site-4" else good}
            """)
        )

    job = make_job(tmp_path / "job", sites=4, rounds=2, min_clients=2, wait_after_min=60)  # all four answer within it
    (job / "app" / "custom" / "fedrsclip_bad_updates.py").write_text(BAD_UPDATES)
    client_path = job / "app" / "config" / "config_fed_client.json"
    client = json.loads(client_path.read_text())
    client["task_result_filters"] = [
        {
            "tasks": ["train"],
            "filters": [
                {"path": "fedrsclip_bad_updates.CorruptUpdate", "args": {"site": "site-2", "round": 0, "how": "nan"}},
                {"path": "fedrsclip_bad_updates.CorruptUpdate", "args": {"site": "site-3", "round": 1, "how": "shape"}},
            ],
        }
    ]
    client_path.write_text(json.dumps(client, indent=1))

    proc = simulate(job, tmp_path / "ws", 4, env={SITE_CONFIG_ENV: str(tmp_path / "{site}.yaml")})
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    results = load_results(find_results(tmp_path / "ws"))
    assert results["status"] == "finished"
    round1, round2 = missing(results, 1), missing(results, 2)
    assert set(round1) == {"site-2", "site-4"} and set(round2) == {"site-3", "site-4"}
    assert all(e["kind"] == "rejected" for e in [*round1.values(), *round2.values()])
    assert "shared_ctx holds 1 NaN or Inf values (of 256" in round1["site-2"]["error"]
    assert "shared_ctx has shape (5, 64), the global model's is (4, 64)" in round2["site-3"]["error"]
    assert "trained on another class list (5:" in round1["site-4"]["error"]
    assert "update of site-2 for round 1 rejected, not aggregated" in log
    weights, info = load_npz(tmp_path / "ws" / "server" / "simulate_job" / "app_server" / "FL_global_model.npz")
    assert info["round"] == 2 and weights["shared_ctx"].shape == (4, 64) and np.isfinite(weights["shared_ctx"]).all()
