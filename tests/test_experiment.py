"""`fedrsclip experiment`: the grid, its refusals, and (slow) a real grid of FLARE simulator runs + the report."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from fedrsclip.cli import main
from fedrsclip.tools.experiments.grid import (
    Cell,
    DataSource,
    build_grid,
    check_overrides,
    parse_ablate,
    parse_sites,
    variant_overrides,
)
from fedrsclip.tools.experiments.layout import CENTRALIZED
from fedrsclip.tools.experiments.runner import run_experiment


def test_parse_sites():
    assert parse_sites("centralized, 2,5,2") == [None, 2, 5]
    for bad in ("0", "two", ""):
        with pytest.raises(ValueError, match="--sites"):
            parse_sites(bad)


def test_grid_has_one_centralized_cell_per_algorithm_and_seed():
    cells = build_grid(["fedrsclip", "local"], [None, 2, 3], ["uniform", "label-skew"], [0, 1])
    assert len(cells) == 2 * 2 * (1 + 2 * 2)
    pooled = [c for c in cells if c.sites is None]
    assert {(c.algorithm, c.seed, c.partition, c.num_sites) for c in pooled} == {
        (a, s, "pooled", 1) for a in ("fedrsclip", "local") for s in (0, 1)
    }
    assert len({c.name for c in cells}) == len(cells)
    assert Cell("fedrsclip", None, "pooled", 0).column == CENTRALIZED


def test_grid_refusals():
    with pytest.raises(ValueError, match="unknown algorithm 'fedsomething'"):
        build_grid(["fedsomething"], [2], ["uniform"], [0])
    with pytest.raises(ValueError, match="--sites centralized"):
        build_grid(["centralized"], [2], ["uniform"], [0])  # a data arrangement, not an algorithm
    with pytest.raises(ValueError, match="train.seed is set per cell"):
        check_overrides(["train.lr=0.1", "train.seed=3"])
    with pytest.raises(ValueError, match=r"needs '\{sites\}'"):
        DataSource(manifest="ucm.json").check([None, 2, 5], ["uniform"])
    with pytest.raises(ValueError, match="--dataset and --root go together"):
        DataSource(dataset="ucmerced")


def test_bad_settings_refused_before_any_run(tmp_path, capsys):
    assert (
        main(
            [
                "experiment",
                "--out",
                str(tmp_path / "x"),
                "--algorithms",
                "fedrsclip",
                "--sites",
                "2",
                "--set",
                "train.lrr=1",
            ]
        )
        == 2
    )
    assert "train.lrr" in capsys.readouterr().err and not (tmp_path / "x" / "cells").exists()
    with pytest.raises(ValueError, match="--partition 'skewed'"):
        run_experiment(tmp_path / "y", ["fedrsclip"], [2], ["skewed"], [0])


@pytest.mark.parametrize(
    "options, option",
    [
        (["--seeds", "-1"], "--seeds"),
        (["--seeds", "1,x"], "--seeds"),
        (["--rounds", "0"], "--rounds"),
        (["--threads", "0"], "--threads"),
        (["--data-seed", "-2"], "--data-seed"),
    ],
)
def test_grid_values_refused_before_anything_is_written(tmp_path, capsys, options, option):
    """The grid's own values, not only --set, are refused naming the option; the folder is not even made."""
    with pytest.raises(SystemExit) as exit_:
        main(["experiment", "--out", str(tmp_path / "x"), "--algorithms", "fedrsclip", "--sites", "2", *options])
    assert exit_.value.code == 2 and f"argument {option}" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"seeds": [-1]}, "--seeds: -1"),
        ({"rounds": 0}, "--rounds: 0"),
        ({"seeds": []}, "--seeds: 'no value'"),
        ({"seeds": [2**32]}, "train.seed must be"),
    ],
)
def test_grid_values_refused_by_the_python_api(tmp_path, kwargs, words):
    grid = {"seeds": [0], **kwargs}
    with pytest.raises(ValueError, match=words):
        run_experiment(tmp_path / "x", ["fedrsclip"], [2], ["uniform"], grid.pop("seeds"), **grid)
    assert not (tmp_path / "x").exists()


def test_job_counts_are_refused_naming_the_option(tmp_path, capsys):
    for option, value in (("--sites", "0"), ("--rounds", "0"), ("--min-clients", "0"), ("--train-timeout", "-1")):
        with pytest.raises(SystemExit):
            main(["job", "--algorithm", "fedrsclip", "--out", str(tmp_path / "job"), option, value])
        assert f"argument {option}" in capsys.readouterr().err and not (tmp_path / "job").exists()


def test_manifest_pattern_gives_each_cell_its_manifest_and_pools_the_centralized_one(tmp_path, synth_manifest):
    from fedrsclip.data.manifest import load_manifest, write_manifest

    write_manifest(synth_manifest, tmp_path / "m3.json")  # 3 sites
    data = DataSource(manifest=str(tmp_path / "m{sites}.json"))
    grid = [None, 3]
    fed = data.overrides(Cell("fedrsclip", 3, "uniform", 0), grid, tmp_path / "exp")
    assert fed == ["data.source=manifest", f"data.manifest={tmp_path / 'm3.json'}"]
    pooled = load_manifest(
        data.overrides(Cell("fedrsclip", None, "pooled", 0), grid, tmp_path / "exp")[1].split("=", 1)[1]
    )
    assert list(pooled["sites"]) == ["site-1"]
    for split in ("train", "test"):
        assert sorted(map(tuple, pooled["sites"]["site-1"][split])) == sorted(
            tuple(x) for s in synth_manifest["sites"].values() for x in s[split]
        )
    with pytest.raises(FileNotFoundError, match="m2.json does not exist"):
        data.overrides(Cell("fedrsclip", 2, "uniform", 0), [2, 3], tmp_path / "exp")


@pytest.mark.slow
def test_experiment_then_report_then_resume(tmp_path, capsys):
    out = tmp_path / "exp"
    args = [
        "experiment",
        "--out",
        str(out),
        "--algorithms",
        "fedrsclip,fedavg-pl",
        "--sites",
        "2,3",
        "--seeds",
        "0",
        "--rounds",
        "2",
        "--set",
        "data.synthetic_per_class=20",
    ]
    assert main(args) == 0
    cells = sorted((out / "cells").glob("*.json"))
    assert [c.name for c in cells] == [
        f"{a}__{n}__uniform__seed0.json" for a in ("fedavg-pl", "fedrsclip") for n in (2, 3)
    ]
    record = json.loads(cells[-1].read_text())  # fedrsclip, 3 sites
    assert record["results"]["status"] == "finished" and len(record["results"]["rounds"]) == 2
    assert set(record["site_predictions"]) == {"site-1", "site-2", "site-3"}
    for site, pred in record["site_predictions"].items():
        assert sum(map(sum, pred["confusion"])) == record["results"]["final"]["sites"][site]["samples"]
        assert all(os.path.isfile(s["path"]) for s in pred["samples"])

    assert main(["report", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "| FedAvg-PL (`fedavg-pl`) |" in report and "| FedRSCLIP (`fedrsclip`) |" in report
    assert "| model (`algorithm`) | 2 sites | 3 sites | transmitted parameters" in report
    assert "RANDOM" in report and "SYNTHETIC" in report.upper()
    for name in ("accuracy_per_round", "per_site_accuracy", "confusion_matrix", "predictions"):
        with Image.open(out / f"{name}.png") as image:
            image.verify()
        assert f"({name}.png)" in report

    # Rerun: finished cells are skipped; a cell whose results file is gone (interrupted) runs again.
    mtimes = {c.name: c.stat().st_mtime_ns for c in cells}
    cells[0].unlink()
    capsys.readouterr()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "3 already finished (skipped), 1 to run" in err
    assert {c.name: c.stat().st_mtime_ns for c in cells[1:]} == {k: mtimes[k] for k in [c.name for c in cells[1:]]}
    assert json.loads(cells[0].read_text())["results"]["status"] == "finished"


# ---- multi-modal grids: the ablation switches (MF, FW, MIM) as cells of their own ----------------------------------
def test_ablation_variants_are_cells_of_their_own():
    variants = parse_ablate("mf, fw,mim")
    assert variants == ["full", "no-mf", "no-fw", "no-mim"]
    assert [variant_overrides(v) for v in variants] == [
        [],
        ["multimodal.fusion=false"],
        ["multimodal.whitening=false"],
        ["multimodal.mim=false"],
    ]
    cells = build_grid(["fedrsclip"], [3, 6], ["uniform"], [0], variants)
    assert len(cells) == 2 * 4 and len({c.name for c in cells}) == len(cells)
    assert Cell("fedrsclip", 3, "uniform", 0, "no-mf").name == "fedrsclip__3__uniform__seed0__no-mf"
    assert Cell("fedrsclip", 3, "uniform", 0).name == "fedrsclip__3__uniform__seed0"  # no variant: as before
    assert parse_ablate(None) == [""]
    data = DataSource(modalities="s2,s1,s2+s1")
    assert data.overrides(cells[0], [3, 6], Path("/x"))[:2] == ["data.source=synthetic-mm", "data.synthetic_size=48"]


def test_ablation_refusals(tmp_path, capsys):
    with pytest.raises(ValueError, match="--ablate: 'dpac' is not a multi-modal module"):
        parse_ablate("mf,dpac")
    with pytest.raises(ValueError, match="multimodal.fusion is switched per cell by --ablate"):
        check_overrides(["multimodal.fusion=true"], parse_ablate("mf"))
    with pytest.raises(ValueError, match="multimodal.modalities is set per cell"):
        check_overrides(["multimodal.modalities=s2"])
    with pytest.raises(ValueError, match="no centralized column"):
        DataSource(modalities="s2,s1").check([None, 2], ["uniform"])
    assert (
        main(
            ["experiment", "--out", str(tmp_path / "x"), "--algorithms", "fedrsclip", "--sites", "2", "--ablate", "mf"]
        )
        == 2
    )
    assert "give the federation's modalities too (--modalities" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_multi_modal_ablation_grid_then_report(tmp_path):
    """`fedrsclip experiment --modalities ... --ablate mf`: the full framework's cell and the one without MF, each a
    real simulator run; the report's tables give micro F1 and mAP, with a row per variant."""
    out = tmp_path / "exp"
    assert (
        main(
            [
                "experiment",
                "--out",
                str(out),
                "--algorithms",
                "fedrsclip",
                "--sites",
                "3",
                "--rounds",
                "2",
                "--modalities",
                "s2,s1,s2+s1",
                "--ablate",
                "mf",
            ]
        )
        == 0
    )
    cells = {c.stem: json.loads(c.read_text()) for c in (out / "cells").glob("*.json")}
    assert set(cells) == {"fedrsclip__3__uniform__seed0__full", "fedrsclip__3__uniform__seed0__no-mf"}
    full, no_mf = (cells[f"fedrsclip__3__uniform__seed0__{v}"]["results"] for v in ("full", "no-mf"))
    # MF off: only the shared prompt leaves (4 x 64 float32 values of the tiny CLIP); on: the adapters too
    assert {s["bytes_up"] for s in no_mf["rounds"][0]["sites"].values()} == {4 * 4 * 64}
    assert min(s["bytes_up"] for s in full["rounds"][0]["sites"].values()) > 4 * 4 * 64
    assert main(["report", str(out)]) == 0
    report = (out / "report.md").read_text()
    for metric in ("micro F1 (%)", "mAP (%)"):
        assert f"### Multi-modal modules of `fedrsclip`, {metric}" in report
    assert "| w/o MF (adapters stay at their site) (`no-mf`) |" in report
    assert "| MF + FW + MIM (the full framework) (`full`) |" in report
    assert "confusion_matrix" not in report  # single-label figures are not drawn for label sets
