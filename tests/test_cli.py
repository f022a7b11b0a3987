"""One coherent CLI: every (sub)command and option described with its default, FLARE's vocabulary (sites, rounds),
one spelling of --algorithm, --version, and a report that a closed pipe does not turn into a traceback."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import warnings

import pytest

from fedrsclip import __version__
from fedrsclip.cli import build_parser, main
from fedrsclip.results_file import RESULTS_FILE
from helpers import ENV, REPO


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """Every parser under `parser` with the words that reach it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _parsers(child, (*path, name))


COMMANDS = [path for path, _ in _parsers(build_parser())]


def test_every_command_is_walked():
    assert {
        ("run",),
        ("demo",),
        ("job",),
        ("report",),
        ("zeroshot",),
        ("experiment",),
        ("bench",),
        ("data", "partition"),
        ("data", "preview"),
        ("he-context",),
        ("algorithms",),
    } <= set(COMMANDS)


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "fedrsclip")
def test_every_help_runs_and_describes_every_option_and_its_default(path, capsys):
    with pytest.raises(SystemExit) as stop:
        main([*path, "--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    parser = dict(_parsers(build_parser()))[path]
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        name = action.option_strings[-1] if action.option_strings else action.dest
        if isinstance(action, argparse._SubParsersAction):
            assert all(c.help for c in action._choices_actions), f"{path}: a sub-command without help"
            continue
        assert action.help, f"fedrsclip {' '.join(path)} {name} has no help text"
        if action.option_strings and action.default not in (None, False, [], argparse.SUPPRESS):
            assert "default" in action.help.lower() or f"(default: {action.default})" in text, (
                f"fedrsclip {' '.join(path)} {name}: its default {action.default!r} is not shown"
            )


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"fedrsclip {__version__}"


def partition(root, *options) -> int:
    """`fedrsclip data partition` of the synthetic dataset at `root`, with `options`."""
    return main(["data", "partition", "--dataset", "synthetic", "--root", str(root), *options])


def test_partition_speaks_of_sites_and_keeps_clients_for_one_release(synth_root, tmp_path, capsys):
    """`data partition` took --clients where every other command takes --sites."""
    out = tmp_path / "m.json"
    assert partition(synth_root, "--sites", "2", "--quiet", "--no-verify", "--out", str(out)) == 0
    assert len(json.loads(out.read_text())["sites"]) == 2
    help_text = subprocess.run(
        [sys.executable, "-m", "fedrsclip.cli", "data", "partition", "--help"], env=ENV, capture_output=True, text=True
    ).stdout
    assert "--sites" in help_text and "--clients" not in help_text  # the old spelling is hidden
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # run_data_command prints the warning instead of raising it
        assert (
            partition(synth_root, "--clients", "3", "--quiet", "--no-verify", "--out", str(tmp_path / "old.json")) == 0
        )
    assert "--clients is now --sites" in capsys.readouterr().err
    assert len(json.loads((tmp_path / "old.json").read_text())["sites"]) == 3
    assert partition(synth_root, "--quiet", "--out", str(tmp_path / "none.json")) == 2
    assert "--sites N" in capsys.readouterr().err


def test_a_per_class_limit_or_fraction_gives_a_quick_look(synth_root, tmp_path, capsys):
    out = tmp_path / "quick.json"
    assert partition(synth_root, "--sites", "2", "--quiet", "--per-class", "6", "--out", str(out)) == 0
    manifest = json.loads(out.read_text())
    labels = [label for site in manifest["sites"].values() for split in ("train", "test") for _, label in site[split]]
    assert len(labels) == 6 * len(manifest["classes"]) and {labels.count(k) for k in set(labels)} == {6}
    assert manifest["subset"] == {"per_class": 6, "fraction": None, "seed": 0}
    assert "a subset for a quick look: at most 6 images per class" in capsys.readouterr().out
    again = tmp_path / "again.json"
    assert partition(synth_root, "--sites", "2", "--quiet", "--per-class", "6", "--out", str(again)) == 0
    assert json.loads(again.read_text())["sites"] == manifest["sites"]  # seeded: the same subset
    part = tmp_path / "part.json"
    assert partition(synth_root, "--sites", "2", "--quiet", "--fraction", "0.25", "--out", str(part)) == 0
    sites = json.loads(part.read_text())["sites"].values()
    assert sum(len(s["train"]) + len(s["test"]) for s in sites) == 10 * 10  # 40 per class: 10 each


def test_algorithm_is_one_option_and_not_also_a_set(tmp_path, capsys):
    assert (
        main(
            [
                "run",
                "--algorithm",
                "fedavg-pl",
                "--set",
                "algorithm=fedprox",
                "--set",
                "data.source=synthetic",
                "--out",
                str(tmp_path / "r.json"),
            ]
        )
        == 2
    )
    assert "--algorithm and --set algorithm=... say the same thing" in capsys.readouterr().err
    assert main(["job", "--algorithm", "fedavg-pl", "--set", "algorithm=fedprox", "--out", str(tmp_path / "j")]) == 2
    assert "--algorithm and --set algorithm=" in capsys.readouterr().err and not (tmp_path / "j").exists()


def test_report_into_a_closed_pipe_ends_quietly(tmp_path):
    """`fedrsclip report RUN | head` ended in a BrokenPipeError traceback."""
    from test_flare_report import RESULTS

    sites = [f"site-{i}" for i in range(1, 41)]
    rounds = [
        {"round": r, "sites": {s: {"accuracy": 50.0, "loss": 1.0, "samples": 10} for s in sites}}
        for r in range(1, 1001)
    ]
    path = tmp_path / RESULTS_FILE
    path.write_text(json.dumps({**RESULTS, "sites": sites, "rounds": rounds}))
    proc = subprocess.run(
        f"{sys.executable} -m fedrsclip.cli report {path} --no-figures | head -2",
        shell=True,
        env=ENV,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert len(proc.stdout.splitlines()) == 2
    assert "Traceback" not in proc.stderr and "Broken pipe" not in proc.stderr, proc.stderr


def test_the_next_commands_data_synth_prints_run_as_printed(tmp_path, monkeypatch, capsys):
    import shlex

    monkeypatch.chdir(tmp_path)
    assert (
        main(
            [
                "data",
                "synth",
                "--out",
                str(tmp_path / "syn"),
                "--classes",
                "3",
                "--per-class",
                "4",
                "--size",
                "32",
                "--quiet",
            ]
        )
        == 0
    )
    (command,) = [line[len("next: ") :] for line in capsys.readouterr().out.splitlines() if line.startswith("next: ")]
    words = shlex.split(command)
    assert words[0] == "fedrsclip" and main([*words[1:], "--quiet"]) == 0
    assert (tmp_path / "manifest.json").is_file()


def test_a_jobs_class_descriptions_travel_with_it_and_resolve_at_every_site(tmp_path, capsys):
    """--class-descriptions on job: the file is copied into the job; a site resolves the relative setting against
    the job's config folder, wherever its workspace is."""
    from fedrsclip.data.synth import SCENES
    from fedrsclip.flare.job import job_settings
    from fedrsclip.flare.settings import resolve_site_settings

    descriptions = tmp_path / "texts.yaml"
    descriptions.write_text("airplane: an airport apron with airplanes\n")
    assert (
        main(
            [
                "job",
                "--algorithm",
                "fedrsclip",
                "--sites",
                "2",
                "--out",
                str(tmp_path / "job0"),
                "--class-descriptions",
                str(descriptions),
            ]
        )
        == 2
    )  # the demo's 10 classes need a text each
    assert "of the job's 10 classes" in capsys.readouterr().err
    assert not (tmp_path / "job0").exists()
    descriptions.write_text("".join(f"{c}: an aerial image of {c}\n" for c in list(SCENES)[:10]))
    out = tmp_path / "job"
    assert (
        main(
            [
                "job",
                "--algorithm",
                "fedrsclip",
                "--sites",
                "2",
                "--out",
                str(out),
                "--class-descriptions",
                str(descriptions),
            ]
        )
        == 0
    )
    config = out / "app" / "config"
    assert (config / "class_descriptions.yaml").read_text() == descriptions.read_text()
    assert "prompt.class_descriptions=class_descriptions.yaml" in job_settings(out)["overrides"]
    descriptions.unlink()  # the sites never read the original
    site = resolve_site_settings(
        "site-1", config / "fedrsclip.yaml", job_settings(out)["overrides"], tmp_path / "site-1-workspace"
    )
    assert site.cfg.prompt.class_descriptions == str(config / "class_descriptions.yaml")
    capsys.readouterr()
    assert (
        main(
            [
                "job",
                "--algorithm",
                "fedrsclip",
                "--out",
                str(tmp_path / "job2"),
                "--class-descriptions",
                str(descriptions),
            ]
        )
        == 2
    )
    assert "does not exist here" in capsys.readouterr().err and not (tmp_path / "job2").exists()
