"""Baseline jobs made by `fedrsclip job` (one JobSpec, the algorithm an override) run on the real simulator."""

from __future__ import annotations

import json

import pytest

from fedrsclip.cli import main
from fedrsclip.results_file import find_results
from helpers import simulate

SITES, ROUNDS = 2, 2


@pytest.mark.parametrize(
    "algorithm, extra",
    [
        ("fedprox", []),
        pytest.param("fedavg-full", ["classifier.image_size=32"], marks=pytest.mark.slow),
    ],
)
def test_generated_job_runs(tmp_path, algorithm, extra):
    job = tmp_path / f"job-{algorithm}"
    sets = [x for s in ["data.synthetic_per_class=20", *extra] for x in ("--set", s)]
    assert (
        main(
            ["job", "--algorithm", algorithm, "--sites", str(SITES), "--rounds", str(ROUNDS), "--out", str(job), *sets]
        )
        == 0
    )
    proc = simulate(job, tmp_path / "ws", SITES)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    results = json.loads(find_results(tmp_path / "ws").read_text())
    assert results["status"] == "finished" and results["algorithm"] == algorithm
    last = results["rounds"][-1]["sites"]
    assert set(last) == {"site-1", "site-2"}
    uploaded = {entry["bytes_up"] for entry in last.values()}
    assert uploaded == ({4 * 64 * 4} if algorithm == "fedprox" else uploaded) and min(uploaded) > 0


def test_bad_setting_refused_before_writing(tmp_path, capsys):
    assert main(["job", "--algorithm", "fedprox", "--out", str(tmp_path / "j"), "--set", "train.lrr=1"]) == 2
    assert "train.lrr" in capsys.readouterr().err and not (tmp_path / "j").exists()
