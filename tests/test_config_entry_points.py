"""Bad settings are refused where they enter, before anything is written or trained (issue 11, item 8): the CLI
(`fedrsclip run`, `job`, `experiment`), the site's own configuration file and the FLARE executor; correct values
written as 1e-3 pass every one of them."""

from __future__ import annotations

import pytest

from fedrsclip.cli import main
from fedrsclip.config import ConfigError
from fedrsclip.flare.job import JobSpec, job_settings
from fedrsclip.flare.settings import SITE_CONFIG_ENV, SITE_CONFIG_FILE, SiteConfigError, resolve_site_settings

JOB_YAML = JobSpec().settings_file  # the default job's settings (the offline demo)
SMALL = ["data.synthetic_per_class=4", "data.synthetic_classes=3", "data.synthetic_sites=2"]
BAD = [  # the examples: (override, what the message must say)
    ("dpac.scale=.nan", "dpac.scale must be positive; got nan"),
    ("dpac.weight=.nan", "dpac.weight must be >= 0; got nan"),
    ("dpac.weight=-1", "dpac.weight must be >= 0; got -1"),
    ("train.lr=[0.1", "override 'train.lr=[0.1': the value is not valid YAML"),
]


@pytest.fixture(autouse=True)
def _no_site_env(monkeypatch):
    monkeypatch.delenv(SITE_CONFIG_ENV, raising=False)


def _refused(capsys, argv: list[str], words: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


@pytest.mark.parametrize("override,words", BAD)
def test_job_refuses_and_writes_nothing(tmp_path, capsys, override, words):
    out = tmp_path / "job"
    _refused(capsys, ["job", "--algorithm", "fedrsclip", "--out", str(out), "--set", override], words)
    assert not out.exists()


@pytest.mark.parametrize("override,words", BAD)
def test_run_refuses_before_reading_data_or_writing(tmp_path, capsys, override, words):
    out = tmp_path / "results.json"
    _refused(capsys, ["run", "--manifest", str(tmp_path / "m.json"), "--out", str(out), "--set", override], words)
    assert not out.exists()


@pytest.mark.parametrize("override,words", BAD)
def test_experiment_refuses_and_writes_nothing(tmp_path, capsys, override, words):
    out = tmp_path / "grid"
    _refused(
        capsys, ["experiment", "--out", str(out), "--algorithms", "fedrsclip", "--sites", "2", "--set", override], words
    )
    assert not out.exists()


def test_exponent_values_pass_the_cli_and_reach_the_sites_as_numbers(tmp_path, capsys):
    out = tmp_path / "job"
    assert (
        main(
            [
                "job",
                "--algorithm",
                "fedrsclip",
                "--out",
                str(out),
                "--sites",
                "2",
                "--set",
                "ot.eps=1e-2",
                "--set",
                "ot.tol=1e-4",
                "--set",
                "train.lr=1e-3",
                *[a for o in SMALL[:2] for a in ("--set", o)],
            ]
        )
        == 0
    )
    # the executor reads the job's overrides exactly as written
    overrides = job_settings(out)["overrides"]
    cfg = resolve_site_settings(
        "site-1", out / "app" / "config" / "fedrsclip.yaml", overrides, tmp_path / "ws", None
    ).cfg
    assert (cfg.ot.eps, cfg.ot.tol, cfg.train.lr) == (0.01, 1e-4, 1e-3)


@pytest.mark.parametrize("override,words", BAD)
def test_site_resolution_refuses_bad_job_settings(tmp_path, override, words):
    """What the FLARE executor calls when a task arrives (a job written by hand or by an older version)."""
    with pytest.raises(ConfigError, match=r"\b" + words.replace("[", r"\[").replace("(", r"\(")):
        resolve_site_settings("site-1", JOB_YAML, [override], tmp_path, None)


@pytest.mark.parametrize(
    "text,words",
    [
        ("data:\n  num_workers: -1\n", "data.num_workers must be >= 0; got -1"),
        ("data:\n  synthetic_seed: -2\n", "data.synthetic_seed must be between 0 and"),
        ("model:\n  device: cpu\ndata:\n  num_workers: .inf\n", "data.num_workers must be int; got inf"),
    ],
)
def test_site_file_values_are_range_checked_naming_the_file(tmp_path, text, words):
    local = tmp_path / "local"
    local.mkdir()
    (local / SITE_CONFIG_FILE).write_text(text)
    with pytest.raises(SiteConfigError, match=f"{words}.*{SITE_CONFIG_FILE}"):
        resolve_site_settings("site-1", JOB_YAML, SMALL, tmp_path, local)


def test_executor_stops_a_job_carrying_a_nan_setting(tmp_path):
    """The real FLARE simulator on a job that bypassed the CLI: the sites refuse it by name, nothing trains."""
    import json

    from fedrsclip.results_file import find_results, load_results
    from helpers import make_job, simulate

    job = make_job(tmp_path / "job", sites=1, rounds=2, overrides=["data.synthetic_per_class=10"])
    client = job / "app" / "config" / "config_fed_client.json"  # edited by hand: no check between it and the sites
    config = json.loads(client.read_text())
    config["executors"][0]["executor"]["args"]["overrides"].append("dpac.scale=.nan")
    client.write_text(json.dumps(config))
    ws = tmp_path / "ws"
    proc = simulate(job, ws, 1, 1)
    assert proc.returncode != 0
    assert "dpac.scale must be positive; got nan" in proc.stdout + proc.stderr
    results = load_results(find_results(ws))
    assert results["status"] == "failed" and not any(r.get("mean_accuracy") for r in results["rounds"])
    assert any(e["kind"] == "config" and "dpac.scale" in e["error"] for e in results["errors"])
