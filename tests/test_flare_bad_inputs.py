"""Bad input on the real FLARE simulator: a wrong job setting stops the job with a message naming it; a site that is
not in its manifest, a wrong-shape global prompt and a site failing in the middle of training are logged and marked
missing for that round, and the federation goes on with the site's local state intact."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

from fedrsclip.data import build_manifest, list_dataset, make_synthetic, write_manifest
from fedrsclip.flare.settings import SITE_CONFIG_ENV, SITE_CONFIG_FILE
from fedrsclip.results_file import find_results, load_results
from fedrsclip.tools.reporting.run_table import format_table
from helpers import make_job, simulate


def test_unknown_algorithm_stops_the_job_naming_it(tmp_path):
    job = make_job(tmp_path / "job", sites=1, rounds=2, overrides=["data.synthetic_per_class=10"])
    # a job folder edited by hand (fedrsclip job refuses an unknown algorithm before it writes anything)
    client = job / "app" / "config" / "config_fed_client.json"
    text = client.read_text()
    client.write_text(text.replace('"data.synthetic_sites=1"', '"data.synthetic_sites=1", "algorithm=fedbogus"'))
    ws = tmp_path / "ws"
    proc = simulate(job, ws, 1, 1)
    assert proc.returncode != 0
    log = proc.stdout + proc.stderr
    assert "unknown algorithm 'fedbogus'" in log
    assert "stopping the job, its configuration is wrong" in log
    results = load_results(find_results(ws))
    assert results["status"] == "failed"
    assert any(e["kind"] == "config" and "fedbogus" in e["error"] for e in results["errors"])
    assert "unknown algorithm 'fedbogus'" in (ws / "site-1" / "log.txt").read_text()


def test_sites_without_data_fail_naming_the_setting_and_the_job_stops(tmp_path):
    """The sites' own configuration ($FEDRSCLIP_SITE_CONFIG) switches to a manifest but names none."""
    (tmp_path / "site.yaml").write_text("data:\n  source: manifest\n")
    job = make_job(tmp_path / "job", sites=2, rounds=3)
    ws = tmp_path / "ws"
    proc = simulate(job, ws, 2, 2, env={SITE_CONFIG_ENV: str(tmp_path / "site.yaml")})
    assert proc.returncode != 0
    results = load_results(find_results(ws))
    assert results["status"] == "failed" and len(results["rounds"]) == 1  # not 3 rounds of nothing
    for site in ("site-1", "site-2"):
        entry = results["rounds"][0]["sites"][site]
        assert entry["missing"] and entry["kind"] == "data"
        assert f"{site}: no data configured for this site: set data.manifest" in entry["error"]
        assert str(tmp_path / "site.yaml") in entry["error"]
    assert "no site completed round 1" in proc.stdout + proc.stderr


FAULTS = '''
"""Test-only fault injection, shipped in the test's copy of the job (app/custom)."""
import numpy as np
from nvflare.apis.dxo import from_shareable
from nvflare.apis.filter import Filter
from nvflare.app_common.app_constant import AppConstants

from fedrsclip.flare.executor import FedRSCLIPExecutor


class WrongShapeGlobal(Filter):
    """Task-data filter: `site` receives a shared prompt with one context vector too many in round `round`."""

    def __init__(self, site, round):
        super().__init__()
        self.site, self.round = site, round

    def process(self, shareable, fl_ctx):
        if fl_ctx.get_identity_name() != self.site or shareable.get_header(AppConstants.CURRENT_ROUND) != self.round:
            return shareable
        dxo = from_shareable(shareable)
        dxo.data = {k: np.zeros((v.shape[0] + 1, v.shape[1]), np.float32) for k, v in dxo.data.items()}
        return dxo.update_shareable(shareable)


class FailMidRound(FedRSCLIPExecutor):
    """`site` fails after a few optimisation steps of round `round`."""

    def __init__(self, site, round, **kwargs):
        super().__init__(**kwargs)
        self.fail_site, self.fail_round = site, round

    def _train(self, site, payload, round_idx, shareable, fl_ctx, abort_signal):
        if site.name == self.fail_site and round_idx == self.fail_round:
            original, calls = site.trainer._loss, []

            def failing(*args, **kwargs):
                calls.append(1)
                if len(calls) > 2:
                    raise RuntimeError("injected failure in the middle of local training")
                return original(*args, **kwargs)

            site.trainer._loss = failing
        return super()._train(site, payload, round_idx, shareable, fl_ctx, abort_signal)
'''


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory):
    """4 sites; the sites' own configuration points at a manifest for 3 sites (so site-4 is not in it); site-2 gets
    a wrong-shape global prompt in round 2; site-3 fails in the middle of training in round 2."""
    tmp = tmp_path_factory.mktemp("faults")
    images = make_synthetic(tmp / "data" / "images", classes=5, per_class=24, size=64, progress=False)
    listing = list_dataset("synthetic", images, verify=False, progress=False)
    manifest = write_manifest(build_manifest(listing, 3, "uniform", 0), tmp / "data" / "manifest.json")

    job = make_job(tmp / "job", sites=4, rounds=3)
    (job / "app" / "custom" / "fedrsclip_faults.py").write_text(FAULTS)
    client_path = job / "app" / "config" / "config_fed_client.json"
    client = json.loads(client_path.read_text())
    executor = client["executors"][0]["executor"]
    executor["path"] = "fedrsclip_faults.FailMidRound"
    executor["args"].update(site="site-3", round=1)
    client["task_data_filters"] = [
        {
            "tasks": ["train"],
            "filters": [{"path": "fedrsclip_faults.WrongShapeGlobal", "args": {"site": "site-2", "round": 1}}],
        }
    ]
    client_path.write_text(json.dumps(client, indent=1))

    ws = tmp / "ws"
    (ws / "local").mkdir(parents=True)  # the simulator copies local/ into every site: each site's own settings
    (ws / "local" / SITE_CONFIG_FILE).write_text(
        textwrap.dedent(f"""\
        data:
          source: manifest
          manifest: {manifest}
        """)
    )
    proc = simulate(job, ws, 4, 4)
    return {"ws": ws, "proc": proc, "results": load_results(find_results(ws)), "manifest": manifest}


def _missing(results: dict, rnd: int) -> dict:
    record = results["rounds"][rnd - 1]
    return {site: entry for site, entry in record["sites"].items() if entry.get("missing")}


def test_faulty_run_completes(faulty_run):
    proc = faulty_run["proc"]
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    results = faulty_run["results"]
    assert results["status"] == "finished"
    assert "manifest manifest.json" in results["data"]  # the sites' own data setting won over the job's synthetic
    assert [r["round"] for r in results["rounds"]] == [1, 2, 3]


def test_site_not_in_manifest_is_named_and_missing_every_round(faulty_run):
    results = faulty_run["results"]
    for rnd in (1, 2, 3):
        entry = _missing(results, rnd)["site-4"]
        assert entry["kind"] == "data"
        assert "site 'site-4' is not in the manifest" in entry["error"]
        assert SITE_CONFIG_FILE in entry["error"]  # where to fix it
    assert "site 'site-4' is not in the manifest" in (faulty_run["ws"] / "site-4" / "log.txt").read_text()


def test_wrong_shape_global_prompt_is_refused(faulty_run):
    results = faulty_run["results"]
    entry = _missing(results, 2)["site-2"]
    assert entry["kind"] == "payload"
    assert "received shared_ctx of shape (5, 64), this model needs (4, 64)" in entry["error"]
    assert "PayloadError" not in entry["error"] or "shape" in entry["error"]
    assert "received shared_ctx of shape (5, 64)" in (faulty_run["ws"] / "site-2" / "log.txt").read_text()
    assert "site-2" not in _missing(results, 3)  # back in the next round ...
    assert "state_restarted" not in results["rounds"][2]["sites"]["site-2"]  # ... with its private prompt


def test_site_failing_mid_round_keeps_its_state(faulty_run):
    results = faulty_run["results"]
    entry = _missing(results, 2)["site-3"]
    assert entry["kind"] == "RuntimeError"
    assert "injected failure in the middle of local training" in entry["error"]
    assert "site-3" not in _missing(results, 3)
    assert "state_restarted" not in results["rounds"][2]["sites"]["site-3"]
    state = torch.load(
        faulty_run["ws"] / "site-3" / "simulate_job" / "fedrsclip" / "site-3-state.pt", weights_only=True
    )
    assert state["round"] == 2 and torch.isfinite(state["prompts"]["private_ctx"]).all()


def test_missing_sites_in_the_table(faulty_run):
    table = format_table(faulty_run["results"])
    round2 = next(line for line in table.splitlines() if line.startswith("2 "))
    assert round2.split()[1:5] == [round2.split()[1], "miss", "miss", "miss"]
    assert "[payload]" in table and "[RuntimeError]" in table and "[data]" in table
