"""One runner semantics: the in-process runner and the FLARE job evaluate at the same point of a round, apply the same
gate and mean, and write the same results format, so on the same settings and seed their per-round tables agree."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fedrsclip.data.manifest import load_manifest
from fedrsclip.data.source import synthetic_manifest
from fedrsclip.flare.job import JobSpec, write_job
from fedrsclip.inprocess import run_inprocess
from fedrsclip.results_file import describe_data, find_results, load_results
from fedrsclip.tools.reporting.run_table import format_table
from helpers import simulate

SITES, ROUNDS = 2, 2
SETTINGS = ("data.synthetic_per_class=20",)


def _body(table: str) -> list[str]:
    """The table from its header row to its last round row."""
    lines = table.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("round "))
    return [
        line
        for line in lines[start:]
        if line.split()
        and (line.split()[0] in ("round", "init") or line.split()[0].isdigit() or line.startswith("---"))
    ]


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runners")
    spec = JobSpec(sites=SITES, rounds=ROUNDS, overrides=SETTINGS)
    proc = simulate(write_job(spec, tmp / "job"), tmp / "ws", SITES)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    flare = load_results(find_results(tmp / "ws"))

    cfg = spec.config()  # the very settings every FLARE site trained with
    cfg = dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, cache_dir=str(tmp / "cache")),
        train=dataclasses.replace(cfg.train, rounds=ROUNDS),
    )
    manifest = synthetic_manifest(cfg.data, tmp / "data")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the job's sites (torch_threads: 1): the same float sums
    try:
        inprocess = run_inprocess(
            cfg,
            load_manifest(manifest),
            state_dir=tmp / "state",
            progress=False,
            data_description=describe_data(cfg.data, manifest),
        )
    finally:
        torch.set_num_threads(threads)
    return flare, inprocess


def test_the_per_round_tables_are_the_same(both):
    flare, inprocess = both
    assert flare["runner"] == "flare" and inprocess["runner"] == "in-process"
    assert _body(format_table(flare)) == _body(format_table(inprocess))
    assert len(_body(format_table(flare))) == 2 + 1 + ROUNDS  # header, dashes, init, rounds


def test_the_results_have_one_format(both):
    flare, inprocess = both
    for key in ("format", "algorithm", "backbone", "data", "status", "num_rounds", "sites", "best"):
        assert flare[key] == inprocess[key] or key == "best", key
    assert flare["best"]["round"] == inprocess["best"]["round"]
    assert flare["best"]["weighted_accuracy"] == pytest.approx(inprocess["best"]["weighted_accuracy"])
    for f, i in zip(flare["rounds"], inprocess["rounds"], strict=True):
        for site in flare["sites"]:
            a, b = f["sites"][site], i["sites"][site]
            assert {
                k: a[k] for k in ("accuracy", "loss", "samples", "samples_train", "bytes_up", "bytes_down")
            } == pytest.approx(
                {k: b[k] for k in ("accuracy", "loss", "samples", "samples_train", "bytes_up", "bytes_down")}, abs=1e-6
            )
            assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-6)
    assert set(flare["final"]["sites"]) == set(inprocess["final"]["sites"])
