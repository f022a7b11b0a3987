"""The recipe entry point a FLARE 2.9 user expects (jobs/job.py, fedrsclip.flare.recipe): the same job as
`fedrsclip job`, run on FLARE's SimEnv without the `nvflare simulator` deprecation notice."""

from __future__ import annotations

import subprocess
import sys

from fedrsclip.flare.job import MARKER, JobSpec, write_job
from fedrsclip.results_file import find_results, load_results
from helpers import ENV, REPO

SCRIPT = REPO / "jobs" / "job.py"


def _tree(folder):
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in (MARKER, "README.md") or p.parent.name == "custom"
    }


def test_the_recipe_exports_the_job_fedrsclip_job_writes(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--sites",
            "3",
            "--rounds",
            "4",
            "--set",
            "train.lr=0.01",
            "--export",
            "--export-dir",
            str(tmp_path / "exported"),
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    made = write_job(JobSpec(sites=3, rounds=4, overrides=("train.lr=0.01",)), tmp_path / "fedrsclip")
    assert _tree(tmp_path / "exported" / "fedrsclip") == _tree(made)


def test_the_recipe_runs_on_simenv(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--sites",
            "2",
            "--rounds",
            "1",
            "--set",
            "data.synthetic_per_class=10",
            "--workspace-root",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "round  site-1  site-2  mean  weighted" in proc.stdout
    assert "deprecated" not in out
    assert load_results(find_results(tmp_path / "fedrsclip"))["status"] == "finished"


def test_simenv_never_empties_a_folder_it_did_not_make(tmp_path):
    """SimEnv empties <workspace_root>/<name>: a folder holding a user's file is refused, the file kept."""
    import pytest
    from nvflare.recipe import SimEnv

    from fedrsclip.flare.job import JobError
    from fedrsclip.flare.recipe import FedRSCLIPRecipe

    victim = tmp_path / "root" / "fedrsclip"
    victim.mkdir(parents=True)
    (victim / "keep.txt").write_text("mine")
    recipe = FedRSCLIPRecipe(JobSpec(sites=2, rounds=1))
    with pytest.raises(JobError, match="keep.txt"):
        recipe.execute(SimEnv(num_clients=2, workspace_root=str(tmp_path / "root")))
    assert (victim / "keep.txt").read_text() == "mine"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--sites", "2", "--rounds", "1", "--workspace-root", str(tmp_path / "root")],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert proc.returncode == 2 and "keep.txt" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert (victim / "keep.txt").read_text() == "mine"
