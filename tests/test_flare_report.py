"""The results report: finding the file, the per-round x per-site table, the command's exit codes."""

from __future__ import annotations

import json

import pytest

from fedrsclip.cli import main
from fedrsclip.protocol import site_order
from fedrsclip.results_file import SIMULATOR_RESULTS, find_results, load_results
from fedrsclip.tools.reporting.run_table import CAVEAT, caveat, format_table


def report_command(workspace) -> int:
    return main(["report", str(workspace)])


def _site(acc, samples=20, **extra):
    return {"accuracy": acc, "loss": 1.0, "samples": samples, "samples_train": 20, "bytes_up": 1024, **extra}


RESULTS = {
    "format": 1,
    "status": "finished",
    "algorithm": "fedrsclip",
    "num_rounds": 2,
    "backbone": "fedrsclip-tiny with RANDOM weights (seed 0): not a pretrained CLIP",
    "data": "SYNTHETIC scenes (10 classes)",
    "sites": ["site-1", "site-2", "site-10"],
    "initial": {
        "sites": {"site-1": _site(10.0), "site-2": _site(12.5), "site-10": _site(15.0)},
        "mean_accuracy": 12.5,
        "weighted_accuracy": 12.5,
    },
    "rounds": [
        {
            "round": 1,
            "sites": {"site-1": _site(30.0), "site-2": _site(None), "site-10": _site(40.0, samples=60)},
            "missing": [],
            "mean_accuracy": 35.0,
            "weighted_accuracy": 37.5,
        },
        {
            "round": 2,
            "sites": {
                "site-1": _site(45.0),
                "site-2": {"missing": True, "kind": "payload", "error": "bad"},
                "site-10": _site(50.0),
            },
            "missing": ["site-2"],
            "mean_accuracy": 47.5,
            "weighted_accuracy": 47.5,
        },
    ],
    "best": {"round": 2, "weighted_accuracy": 47.5, "selected_by": "final evaluation (GlobalModelEval)"},
    "errors": [{"site": "site-2", "task": "train", "round": 2, "kind": "payload", "error": "bad shape"}],
}


def _rows(table: str) -> dict[str, list[str]]:
    """The table's body: the lines after the dashes, up to the first line that is not a row."""
    lines = table.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("-----")) + 1
    rows = {}
    for line in lines[start:]:
        cells = line.split()
        if not cells or not (cells[0] == "init" or cells[0].isdigit()) or len(cells) < 3 or cells[1] == "failed":
            break
        rows[cells[0]] = cells[1:]
    return rows


def test_table_rows_columns_and_markers():
    table = format_table(RESULTS)
    lines = table.splitlines()
    assert lines[0] == f"*** {CAVEAT} ***" and lines[-1] == f"*** {CAVEAT} ***"
    header = next(line for line in lines if line.startswith("round"))
    assert header.split() == ["round", "site-1", "site-2", "site-10", "mean", "weighted"]
    rows = _rows(table)
    assert list(rows) == ["init", "1", "2"]
    assert rows["init"] == ["10.0", "12.5", "15.0", "12.5", "12.5"]
    assert rows["1"] == ["30.0", "?", "40.0", "35.0", "37.5"]
    assert rows["2"] == ["45.0", "miss", "50.0", "47.5", "47.5"]
    assert "best: after round 2, weighted accuracy 47.5%" in table
    assert "round 2 site-2 [payload]: bad shape" in table
    assert "miss: no result from the site" in table
    assert "1,024 bytes up" in table


def test_table_without_caveat_for_real_runs_and_without_optional_parts():
    real = {
        "status": "running",
        "algorithm": "fedavg-pl",
        "backbone": "ViT-B-16 with openai weights",
        "data": "manifest ucm.json",
        "rounds": [{"round": 1, "sites": {"a": _site(50.0)}, "mean_accuracy": 50.0, "weighted_accuracy": None}],
    }
    table = format_table(real)
    assert "***" not in table and "miss:" not in table and "best:" not in table
    assert "status running" in table and _rows(table) == {"1": ["50.0", "50.0", "-"]}


def test_caveats():
    assert caveat(RESULTS) == CAVEAT  # a results file from before the recorded `weights` and `data_source`
    synthetic = {"data_source": "synthetic", "weights": "tag:openai", "backbone": "ViT-B-16 with openai weights"}
    assert caveat(synthetic).startswith("synthetic data")
    assert caveat({"data_source": "manifest", "weights": "random"}).startswith("RANDOM-weight CLIP")
    assert caveat({"data_source": "manifest", "weights": "tag:openai"}) is None


def test_labels_come_from_what_is_known_never_from_a_file_name():
    """A real checkpoint under a path with "random" in it, a manifest named "synthetic...", got a caveat; a file of
    random values named vit-b-32-weights.safetensors got none (its zero-shot accuracy at chance warns instead)."""
    real = {
        "weights": "file:0123456789abcdef",
        "data_source": "manifest",
        "backbone": "ViT-B-16 with weights from RANDOM_split_vit.pt (OpenAI CLIP)",
        "data": "manifest SYNTHETIC_ucm10.json",
    }
    assert caveat(real) is None
    old_form_but_a_file = {
        "backbone": "ViT-B-16 with weights from x with RANDOM weights (seed 1).pt (OpenAI CLIP)",
        "data": "manifest SYNTHETIC scenes (.json",
    }
    assert caveat(old_form_but_a_file) is None


def test_site_order_is_natural():
    assert sorted(["site-10", "site-2", "site-1"], key=site_order) == ["site-1", "site-2", "site-10"]


def test_find_results(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_results(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no fedrsclip_results.json"):
        find_results(tmp_path)
    nested = tmp_path / "download" / "job1" / "workspace" / "app_server" / "fedrsclip_results.json"
    nested.parent.mkdir(parents=True)
    nested.write_text(json.dumps(RESULTS))
    assert find_results(tmp_path) == nested
    sim = tmp_path / SIMULATOR_RESULTS
    sim.parent.mkdir(parents=True)
    sim.write_text(json.dumps(RESULTS))
    assert find_results(tmp_path) == sim  # the simulator's place first
    assert find_results(sim) == sim


def test_report_command_exit_codes(tmp_path, capsys):
    assert report_command(tmp_path) == 1
    assert "no fedrsclip_results.json" in capsys.readouterr().err
    path = tmp_path / SIMULATOR_RESULTS
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert report_command(tmp_path) == 1
    assert "cannot read the results file" in capsys.readouterr().err
    path.write_text(json.dumps(RESULTS))
    assert report_command(tmp_path) == 0
    assert "site-10" in capsys.readouterr().out
    path.write_text(json.dumps({**RESULTS, "status": "failed"}))
    assert report_command(tmp_path) == 2
    with pytest.raises(ValueError, match="not a fedrsclip results file"):
        path.write_text("[]")
        load_results(path)
