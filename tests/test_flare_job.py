"""The FLARE job, built in Python (fedrsclip.flare.job): the repository's job is its export, `fedrsclip job` never
deletes what it did not write, the command it prints runs as printed and leaves the job intact, and a job run with
another number of sites than it was made for stops, saying which setting to change."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedrsclip.cli import main
from fedrsclip.flare.job import MARKER, JobSpec, find_resume, write_job
from fedrsclip.flare.model_file import save_npz
from fedrsclip.protocol import SHARED
from fedrsclip.results_file import find_results, load_results
from helpers import ENV, REPO, make_job, simulate

TINY_DATA = ["data.synthetic_per_class=10"]


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_repository_job_is_the_default_export(tmp_path):
    """jobs/fedrsclip is `fedrsclip job --algorithm fedrsclip --out jobs/fedrsclip`: a fresh export equals it."""
    fresh = write_job(JobSpec(), tmp_path / "fedrsclip")
    assert _tree(fresh) == _tree(REPO / "jobs" / "fedrsclip")
    assert main(["job", "--algorithm", "fedrsclip", "--out", str(tmp_path / "cli" / "fedrsclip")]) == 0
    assert _tree(tmp_path / "cli" / "fedrsclip") == _tree(fresh)


def test_the_job_is_a_valid_byoc_job_with_no_code(tmp_path):
    """What `nvflare job submit` and the simulator do with the folder: zip it and validate it server-side; the
    app/custom/ folder (FLARE's allow-list is not applied to BYOC jobs) holds no code."""
    from nvflare.fuel.utils.zip_utils import zip_directory_to_bytes
    from nvflare.private.fed.server.job_meta_validator import JobMetaValidator

    for spec in (JobSpec(), JobSpec(name="fedrsclip-he", he=True, sites=3, min_clients=2, train_timeout=30)):
        job = write_job(spec, tmp_path / spec.name)
        valid, error, meta = JobMetaValidator().validate(spec.name, zip_directory_to_bytes(str(tmp_path), spec.name))
        assert valid, error
        assert meta["byoc"] is True and meta["min_clients"] == (spec.min_clients or spec.sites)
        assert not list((job / "app" / "custom").rglob("*.py"))


def test_the_ckks_variant_adds_its_filters_and_aggregator(tmp_path):
    job = write_job(JobSpec(he=True, sites=3), tmp_path / "he")
    server = json.loads((job / "app" / "config" / "config_fed_server.json").read_text())
    client = json.loads((job / "app" / "config" / "config_fed_client.json").read_text())
    assert (
        next(c for c in server["components"] if c["id"] == "aggregator")["path"]
        == "fedrsclip.flare.he.aggregator.CKKSAggregator"
    )
    (decrypt,) = client["task_data_filters"]  # FLARE keeps a chain's tasks as a set: their order varies
    assert sorted(decrypt["tasks"]) == ["train", "validate"]
    assert decrypt["filters"] == [{"path": "fedrsclip.flare.he.filters.CKKSDecryptor", "args": {}}]
    assert client["task_result_filters"] == [
        {"tasks": ["train"], "filters": [{"path": "fedrsclip.flare.he.filters.CKKSEncryptor", "args": {}}]}
    ]


def test_old_class_paths_still_import():
    """Jobs made before this version name these paths: they keep working for one release."""
    from fedrsclip.flare.he_aggregator import CKKSAggregator
    from fedrsclip.flare.he_filters import CKKSDecryptor, CKKSEncryptor
    from fedrsclip.flare.persistor import PromptModelLocator

    assert CKKSAggregator and CKKSDecryptor and CKKSEncryptor and PromptModelLocator(persistor_id="persistor")


# ---- nothing is deleted that the command did not write -------------------------------------------------------------
def test_out_with_a_users_file_is_refused_and_kept(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    assert main(["job", "--algorithm", "fedprox", "--out", str(out)]) == 2
    assert "not empty and was not made by fedrsclip job: nothing in it is deleted" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]


def test_a_job_folder_it_made_is_replaced_unless_something_was_added_or_changed(tmp_path, capsys):
    out = tmp_path / "job"
    assert main(["job", "--algorithm", "fedrsclip", "--sites", "2", "--out", str(out)]) == 0
    assert (out / MARKER).is_file()
    assert main(["job", "--algorithm", "fedprox", "--sites", "3", "--out", str(out)]) == 0  # ours: replaced
    assert "algorithm=fedprox" in (out / "app" / "config" / "config_fed_client.json").read_text()
    (out / "sim-ws").mkdir()
    (out / "sim-ws" / "site-1-state.pt").write_bytes(b"a site's private prompt")  # e.g. a simulator run inside it
    capsys.readouterr()
    assert main(["job", "--algorithm", "fedrsclip", "--out", str(out)]) == 2
    assert "did not write or that changed since (sim-ws/site-1-state.pt)" in capsys.readouterr().err
    assert (out / "sim-ws" / "site-1-state.pt").read_bytes() == b"a site's private prompt"
    (out / "sim-ws" / "site-1-state.pt").unlink()
    (out / "sim-ws").rmdir()
    meta = out / "meta.json"
    meta.write_text(meta.read_text().replace('"min_clients": 3', '"min_clients": 2'))  # edited by hand
    assert main(["job", "--algorithm", "fedrsclip", "--out", str(out)]) == 2
    assert "changed since (meta.json)" in capsys.readouterr().err


def test_out_equal_to_or_inside_the_run_to_resume_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    model = run / "server" / "simulate_job" / "app_server" / "FL_global_model.npz"
    save_npz(model, {SHARED: np.ones((4, 64), np.float32)}, {"round": 1, "job_id": "simulate_job"})
    before = _tree(run)
    for out in (run, run / "resumed", run / "server"):
        assert main(["job", "--algorithm", "fedrsclip", "--rounds", "3", "--out", str(out), "--resume", str(run)]) == 2
        err = capsys.readouterr().err
        assert "overlap: writing the job there would delete the run it resumes" in err or "not empty" in err, err
        assert _tree(run) == before
    assert (
        main(
            [
                "job",
                "--algorithm",
                "fedrsclip",
                "--rounds",
                "3",
                "--out",
                str(tmp_path / "resumed"),
                "--resume",
                str(run),
            ]
        )
        == 0
    )


def test_a_resumed_job_must_match_the_runs_encryption_and_sites(tmp_path, capsys):
    """Resuming a CKKS run without --he (or a plaintext run with it), or with another number of sites, once wrote a
    job whose every site then failed: refused when the job is made, naming the flag."""
    from fedrsclip.he import HEADER_KEY
    from fedrsclip.results_file import RESULTS_FILE

    plain, ckks = tmp_path / "plain", tmp_path / "ckks"
    for run, weights in (
        (plain, {SHARED: np.ones((4, 64), np.float32)}),
        (ckks, {HEADER_KEY: np.frombuffer(b"{}", np.uint8), SHARED: np.ones(64, np.uint8)}),
    ):
        app = run / "server" / "simulate_job" / "app_server"
        save_npz(app / "FL_global_model.npz", weights, {"round": 1, "job_id": "simulate_job"})
        (app / RESULTS_FILE).write_text(
            json.dumps({"rounds": [{"round": 1, "sites": {"site-1": {}, "site-2": {}}, "missing": {"site-3": {}}}]})
        )
    cases = [
        (ckks, [], "resume it with a job made with --he"),
        (plain, ["--he"], "made without --he"),
        (plain, ["--sites", "10"], "had 3 sites (site-1, site-2, site-3) and this job is made for 10"),
    ]
    for run, extra, message in cases:
        out = tmp_path / f"job-{run.name}-{len(extra)}"
        assert (
            main(["job", "--algorithm", "fedrsclip", "--rounds", "3", "--out", str(out), "--resume", str(run), *extra])
            == 2
        )
        assert message in capsys.readouterr().err
        assert not out.exists()
    assert (
        main(
            [
                "job",
                "--algorithm",
                "fedrsclip",
                "--rounds",
                "3",
                "--sites",
                "3",
                "--out",
                str(tmp_path / "ok"),
                "--resume",
                str(plain),
            ]
        )
        == 0
    )


def test_bad_settings_write_nothing(tmp_path, capsys):
    out = tmp_path / "job"
    assert main(["job", "--algorithm", "fedrsclip", "--out", str(out), "--set", "train.bogus=1"]) == 2
    assert "unknown setting 'train.bogus'" in capsys.readouterr().err
    assert main(["job", "--algorithm", "fedrsclip", "--out", str(out), "--set", "dpac.negatives=peers"]) == 2
    assert "dpac.negatives: peers" in capsys.readouterr().err
    assert not out.exists()


# ---- the printed command ---------------------------------------------------------------------------------------------
def _printed(out: str, prefix: str) -> list[str]:
    return [line[len(prefix) :] for line in out.splitlines() if line.startswith(prefix)]


@pytest.mark.parametrize("where", ["workspaces", "jobs"])
def test_every_printed_run_command_runs_as_printed_and_keeps_the_job(tmp_path, capsys, where):
    """`fedrsclip job --out workspaces/X` once printed a simulator command whose workspace was the job folder (the
    simulator empties its workspace). Every printed command runs here, as printed, and the job is intact after."""
    out = tmp_path / where / "demo2"
    make = ["job", "--algorithm", "fedrsclip", "--sites", "2", "--rounds", "1", "--out", str(out)]
    make += [f"--set={s}" for s in TINY_DATA]
    assert main(make) == 0
    printed = capsys.readouterr().out
    (command,) = _printed(printed, "run it: ")
    before = _tree(out)
    env = {**ENV, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(shlex.split(command), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert _tree(out) == before
    workspace = Path(shlex.split(command)[shlex.split(command).index("-w") + 1])
    assert load_results(find_results(workspace))["status"] == "finished"
    # run again: the same command must still be safe (the workspace is now an earlier simulator run's)
    assert main(make) == 0
    assert _printed(capsys.readouterr().out, "run it: ") == [command]


def test_the_printed_commands_of_a_ckks_job_and_a_resumed_job_are_safe(tmp_path, capsys):
    from fedrsclip.he import HEADER_KEY

    run = tmp_path / "run"
    model = run / "server" / "simulate_job" / "app_server" / "FL_global_model.npz"
    ciphertext = {HEADER_KEY: np.frombuffer(b"{}", np.uint8), SHARED: np.ones(64, np.uint8)}  # as a CKKS run saves it
    save_npz(model, ciphertext, {"round": 1, "job_id": "simulate_job"})
    out = tmp_path / "run-resumed"
    assert (
        main(["job", "--algorithm", "fedrsclip", "--rounds", "3", "--out", str(out), "--resume", str(run), "--he"]) == 0
    )
    printed = capsys.readouterr().out
    (command,) = _printed(printed, "run it: ")
    (contexts,) = _printed(printed, "HE contexts for the simulator: ")
    workspace = Path(shlex.split(command)[shlex.split(command).index("-w") + 1]).resolve()
    assert workspace not in (out.resolve(), run.resolve()) and run.resolve() not in workspace.parents
    assert shlex.split(contexts)[-1] == str(shlex.split(command)[shlex.split(command).index("-w") + 1])
    assert find_resume(run).source == run


# ---- the sites that join must be those the job was made for --------------------------------------------------------
@pytest.mark.parametrize("joined", [3, 1])
def test_a_job_run_with_another_number_of_sites_stops_naming_the_setting(tmp_path, joined):
    """A 2-site job run with -n 3 (a site beyond the data's partition) or -n 1 (half the data unused) stops with a
    message saying what to change, instead of running without a word or dropping a site's answer as 'no result'."""
    job = make_job(tmp_path / "job", sites=2, rounds=2, overrides=TINY_DATA)
    ws = tmp_path / "ws"
    proc = simulate(job, ws, joined)
    log = proc.stdout + proc.stderr
    message = (
        f"it was made for 2 sites (its data is partitioned over 2: data.synthetic_sites, or the manifest's "
        f"sites), and {joined} joined"
    )
    assert message in log
    assert "nvflare simulator -n 2" in log and f"fedrsclip job --sites {joined}" in log
    results = load_results(find_results(ws))
    assert results["status"] == "failed"
    assert any(e["kind"] == "sites" and message in e["error"] for e in results["errors"])


def test_fewer_sites_than_made_for_may_join_a_fault_tolerant_job(tmp_path):
    job = make_job(tmp_path / "job", sites=3, rounds=1, overrides=TINY_DATA, min_clients=2)
    ws = tmp_path / "ws"
    proc = simulate(job, ws, 2)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    results = load_results(find_results(ws))
    assert results["status"] == "finished" and results["sites"] == ["site-1", "site-2"]
    assert "2 of the job's 3 sites joined" in (ws / "server" / "log.txt").read_text()
