"""`fedrsclip data ...` end to end through main(argv) and `python -m`."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from fedrsclip.data import load_manifest
from fedrsclip.data.cli import add_data_commands, main, run_data_command

REPO = Path(__file__).resolve().parents[1]


def test_synth_then_partition_then_show(tmp_path, capsys):
    syn = tmp_path / "syn"
    assert main(["data", "synth", "--out", str(syn), "--classes", "4", "--per-class", "6", "--size", "16", "--quiet"]) == 0
    out = tmp_path / "m.json"
    rc = main([
        "data", "partition", "--dataset", "synthetic", "--root", str(syn), "--clients", "3",
        "--scheme", "label-skew", "--classes-per-site", "2", "--seed", "4", "--out", str(out), "--quiet",
    ])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "site-3" in printed and "skipped files: 0" in printed and str(out) in printed
    m = load_manifest(out)
    assert m["scheme"] == "label-skew" and m["seed"] == 4 and len(m["sites"]) == 3
    assert main(["data", "show", str(out)]) == 0
    assert "total" in capsys.readouterr().out


def test_errors_exit_2_with_a_message(tmp_path, capsys):
    rc = main(["data", "partition", "--dataset", "nwpu", "--root", str(tmp_path / "nope"),
               "--clients", "2", "--out", str(tmp_path / "m.json")])
    assert rc == 2
    assert "error: dataset root not found" in capsys.readouterr().err
    rc = main(["data", "partition", "--dataset", "nwpu", "--root", str(tmp_path), "--clients", "2",
               "--beta", "0.3", "--out", str(tmp_path / "m.json")])
    assert rc == 2 and "--beta applies only to --scheme dirichlet" in capsys.readouterr().err


def test_registers_into_another_parser(tmp_path):
    parser = argparse.ArgumentParser(prog="fedrsclip")
    sub = parser.add_subparsers(dest="command")
    add_data_commands(sub)
    args = parser.parse_args(["data", "synth", "--out", str(tmp_path / "s"), "--classes", "2",
                              "--per-class", "1", "--size", "16", "--quiet"])
    assert args.func is run_data_command
    assert run_data_command(args) == 0


def test_python_dash_m(tmp_path):
    syn = tmp_path / "syn"
    env = {**os.environ, "PYTHONPATH": str(REPO / "custom") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "fedrsclip.data.cli", "data"]
    done = subprocess.run([*cmd, "synth", "--out", str(syn), "--classes", "3", "--per-class", "4",
                           "--size", "16", "--quiet"], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "m.json"
    done = subprocess.run([*cmd, "partition", "--dataset", "synthetic", "--root", str(syn), "--clients", "2",
                           "--out", str(out), "--quiet"], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "RuntimeWarning" not in done.stderr
    assert json.loads(out.read_text())["dataset"] == "synthetic"
