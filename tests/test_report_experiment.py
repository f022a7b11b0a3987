"""`fedrsclip report DIR` on an experiment folder: the table layout, and the report of a real one-cell grid run
through the FLARE simulator (site-local prediction files, figures that open)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from fedrsclip.cli import main
from fedrsclip.tools.experiments.runner import run_experiment
from fedrsclip.tools.reporting.tables import TRANSMITTED_HEADER, format_count, mean_std, table, transmitted_values


def report_command(folder) -> int:
    return main(["report", str(folder)])


def _record(algorithm: str, column: str, seed: int, accuracy: float, bytes_up: int) -> dict:
    """A cell record with only what the table reads (layout unit test: the numbers are arbitrary)."""
    partition = "pooled" if column == "centralized" else "uniform"
    return {
        "cell": {"algorithm": algorithm, "column": column, "partition": partition, "seed": seed},
        "returncode": 0,
        "results": {
            "status": "finished",
            "final": {"weighted_accuracy": accuracy},
            "rounds": [{"sites": {"site-1": {"bytes_up": bytes_up}}}],
        },
    }


def test_table_layout_rows_columns_mean_std_and_transmitted():
    records = [
        _record("fedrsclip", col, seed, acc + seed, 8192)
        for col, acc in (("10", 90.0), ("centralized", 92.0), ("2", 91.0))
        for seed in (0, 1)
    ]
    records += [_record("fedavg-pl", "2", 0, 80.0, 8192), _record("local", "2", 0, 70.0, 0)]
    records.append({**_record("fedprox", "2", 0, 99.0, 8192), "returncode": 1})  # unfinished: left out
    text = table(records, "uniform", ["fedavg-pl", "fedprox", "fedrsclip", "local"], zero_shot_row=True)
    lines = text.splitlines()
    assert lines[0] == f"| model (`algorithm`) | centralized | 2 sites | 10 sites | {TRANSMITTED_HEADER} |"
    assert lines[2] == "| FedAvg-PL (`fedavg-pl`) | - | 80.0 | - | 2,048 (2 K) |"
    assert lines[3] == "| FedRSCLIP (`fedrsclip`) | 92.5 ± 0.7 | 91.5 ± 0.7 | 90.5 ± 0.7 | 2,048 (2 K) |"
    assert lines[4] == "| local only (no federation) (`local`) | - | 70.0 | - | 0 (nothing) |"
    assert len(lines) == 5  # no fedprox row (unfinished), no zero-shot row (no site predictions)


def test_zero_shot_row_pools_sites_and_warns_at_chance():
    """The experiment table's zero-shot row: test-sample weighted over a column's sites; at chance (random weights,
    a wrong class list) a warning under the table, as `fedrsclip report RUN` gives for one run."""

    def cell(column, per_site):
        record = _record("fedrsclip", column, 0, 50.0, 8192)
        record["site_predictions"] = {
            f"site-{i + 1}": {"zero_shot": {"accuracy": acc, "samples": n, "chance": 5.0}}
            for i, (acc, n) in enumerate(per_site)
        }
        return record

    records = [cell("2", [(5.0, 100), (4.0, 100)]), cell("10", [(80.0, 30), (90.0, 10)])]
    text = table(records, "uniform", ["fedrsclip"], zero_shot_row=True)
    assert '| zero-shot CLIP ("a satellite photo of {class}.") | 4.5 | 82.5 | 0 (no training) |' in text
    warnings = [line for line in text.splitlines() if line.startswith("**Warning:**")]
    assert len(warnings) == 1 and "the test splits of the 2-site cells" in warnings[0] and "chance (5.0%" in warnings[0]


def test_number_formats():
    assert mean_std([]) == "-" and mean_std([93.38]) == "93.4" and mean_std([1.0, 3.0]) == "2.0 ± 1.4"
    assert format_count(256) == "256" and format_count(5_700_000) == "5,700,000 (5.7 M)"
    assert transmitted_values([]) is None


@pytest.fixture(scope="module")
def one_cell(tmp_path_factory):
    out = tmp_path_factory.mktemp("experiment")
    assert (
        run_experiment(out, ["fedrsclip"], [2], ["uniform"], [0], rounds=1, overrides=["data.synthetic_per_class=10"])
        == 0
    )
    return out


def test_sites_keep_their_predictions_and_the_runner_gathers_them(one_cell):
    record = json.loads((one_cell / "cells" / "fedrsclip__2__uniform__seed0.json").read_text())
    workspace = one_cell / "runs" / "fedrsclip__2__uniform__seed0"
    for site in ("site-1", "site-2"):
        local = workspace / site / "simulate_job" / "fedrsclip" / f"{site}-predictions.json"
        assert json.loads(local.read_text()) == record["site_predictions"][site]
        pred = record["site_predictions"][site]
        assert sum(map(sum, pred["confusion"])) == record["results"]["final"]["sites"][site]["samples"]
        assert sum(pred["confusion"][i][i] for i in range(len(pred["classes"]))) * 100.0 / pred[
            "samples_test"
        ] == pytest.approx(record["results"]["final"]["sites"][site]["accuracy"], abs=1e-4)
        assert {s["true"] for s in pred["samples"]} == set(range(len(pred["classes"])))
        assert 0.0 <= pred["zero_shot"]["accuracy"] <= 100.0
    server = workspace / "server"
    assert not list(server.rglob("*-predictions.json"))
    sample = record["site_predictions"]["site-1"]["samples"][0]["path"]
    assert all(
        sample not in p.read_text(errors="ignore")
        for p in server.rglob("*")
        if p.is_file() and p.suffix in (".json", ".txt", ".log")
    )


def test_report_of_an_experiment_folder(one_cell, capsys):
    assert report_command(one_cell) == 0
    report = (one_cell / "report.md").read_text()
    assert report in capsys.readouterr().out
    assert "synthetic data, RANDOM-weight CLIP" in report and "not comparable with the paper" in report
    assert "| FedRSCLIP (`fedrsclip`) |" in report and "| 256 |" in report  # 4 x 64 values, tiny CLIP
    assert "zero-shot CLIP" in report
    for name in ("accuracy_per_round", "per_site_accuracy", "confusion_matrix", "predictions"):
        with Image.open(one_cell / f"{name}.png") as image:
            assert image.size[0] > 300 and image.size[1] > 200
            image.verify()


def test_report_of_an_empty_experiment_folder(tmp_path, capsys):
    (tmp_path / "cells").mkdir()
    assert report_command(tmp_path) == 1
    assert "no finished cell" in capsys.readouterr().err


def test_report_never_replaces_a_report_md_it_did_not_write(tmp_path, capsys):
    (tmp_path / "cells").mkdir()
    (tmp_path / "report.md").write_text("my notes on this grid")
    assert report_command(tmp_path) == 1
    assert "report.md exists and is not a fedrsclip report" in capsys.readouterr().err
    assert (tmp_path / "report.md").read_text() == "my notes on this grid"


def test_a_corrupt_predictions_file_is_named(tmp_path):
    from fedrsclip.predictions import predictions_path
    from fedrsclip.tools.experiments.runner import gather_site_predictions

    path = predictions_path(tmp_path, "site-1")
    path.write_text('{"confusion": [[1, 2')  # cut off mid-write by hand
    results = {"final": {"sites": {"site-1": {"final_state": str(tmp_path / "site-1-final.pt")}}}}
    with pytest.raises(ValueError, match=f"site-1's predictions file {path} cannot be read"):
        gather_site_predictions(tmp_path, results)
