"""`fedrsclip data ...` end to end through main(argv) and `python -m`."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedrsclip.data import load_manifest
from fedrsclip.data.cli import add_data_commands, main, run_data_command

REPO = Path(__file__).resolve().parents[1]


def test_synth_then_partition_then_show(tmp_path, capsys):
    syn = tmp_path / "syn"
    assert (
        main(["data", "synth", "--out", str(syn), "--classes", "4", "--per-class", "6", "--size", "16", "--quiet"]) == 0
    )
    out = tmp_path / "m.json"
    rc = main(
        [
            "data",
            "partition",
            "--dataset",
            "synthetic",
            "--root",
            str(syn),
            "--sites",
            "3",
            "--scheme",
            "label-skew",
            "--classes-per-site",
            "2",
            "--seed",
            "4",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "site-3" in printed and "skipped files: 0" in printed and str(out) in printed
    m = load_manifest(out)
    assert m["scheme"] == "label-skew" and m["seed"] == 4 and len(m["sites"]) == 3
    assert main(["data", "show", str(out)]) == 0
    assert "total" in capsys.readouterr().out


def test_partition_replaces_only_a_manifest(tmp_path, capsys):
    """--out may be a new file or an earlier manifest (replaced); any other file is refused and kept."""
    syn = tmp_path / "syn"
    assert (
        main(["data", "synth", "--out", str(syn), "--classes", "2", "--per-class", "4", "--size", "16", "--quiet"]) == 0
    )
    partition = ["data", "partition", "--dataset", "synthetic", "--root", str(syn), "--quiet", "--out"]
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": true}')
    assert main([*partition, str(notes), "--clients", "2"]) == 2
    assert "is not a fedrsclip manifest" in capsys.readouterr().err and notes.read_text() == '{"mine": true}'
    assert main([*partition, str(tmp_path), "--clients", "2"]) == 2
    assert "is a folder" in capsys.readouterr().err
    manifest = tmp_path / "m.json"
    assert main([*partition, str(manifest), "--clients", "2"]) == 0
    assert main([*partition, str(manifest), "--clients", "1"]) == 0  # re-partitioned: the manifest is replaced
    assert len(load_manifest(manifest)["sites"]) == 1


def test_errors_exit_2_with_a_message(tmp_path, capsys):
    rc = main(
        [
            "data",
            "partition",
            "--dataset",
            "nwpu",
            "--root",
            str(tmp_path / "nope"),
            "--sites",
            "2",
            "--out",
            str(tmp_path / "m.json"),
        ]
    )
    assert rc == 2
    assert "error: dataset root not found" in capsys.readouterr().err
    rc = main(
        [
            "data",
            "partition",
            "--dataset",
            "nwpu",
            "--root",
            str(tmp_path),
            "--sites",
            "2",
            "--beta",
            "0.3",
            "--out",
            str(tmp_path / "m.json"),
        ]
    )
    assert rc == 2 and "--beta applies only to --scheme dirichlet" in capsys.readouterr().err


def test_registers_into_another_parser(tmp_path):
    parser = argparse.ArgumentParser(prog="fedrsclip")
    sub = parser.add_subparsers(dest="command")
    add_data_commands(sub)
    args = parser.parse_args(
        ["data", "synth", "--out", str(tmp_path / "s"), "--classes", "2", "--per-class", "1", "--size", "16", "--quiet"]
    )
    assert args.func is run_data_command
    assert run_data_command(args) == 0


def test_python_dash_m(tmp_path):
    syn = tmp_path / "syn"
    env = {**os.environ, "PYTHONPATH": str(REPO / "custom") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "fedrsclip.data.cli", "data"]
    done = subprocess.run(
        [*cmd, "synth", "--out", str(syn), "--classes", "3", "--per-class", "4", "--size", "16", "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    out = tmp_path / "m.json"
    done = subprocess.run(
        [*cmd, "partition", "--dataset", "synthetic", "--root", str(syn), "--sites", "2", "--out", str(out), "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "RuntimeWarning" not in done.stderr
    assert json.loads(out.read_text())["dataset"] == "synthetic"


BEN = REPO.parent / "shared/data/bigearthnet-sample"


def test_classes_prints_folders_names_and_tokens(tmp_path, capsys):
    from PIL import Image

    for name in ("aGrass", "bField", "cIndustry", "dRiverLake"):
        (tmp_path / "rsscn7" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "rsscn7" / name / "1.jpg")
    assert main(["data", "classes", "--dataset", "imagefolder", "--root", str(tmp_path / "rsscn7")]) == 0
    out = capsys.readouterr().out
    assert "dRiverLake  river lake" in out and "aGrass      grass" in out and "at most 70 tokens" in out
    (tmp_path / "rsscn7" / "eGrass").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "rsscn7" / "eGrass" / "1.jpg")
    assert main(["data", "classes", "--dataset", "imagefolder", "--root", str(tmp_path / "rsscn7")]) == 2
    captured = capsys.readouterr()
    assert "eGrass      grass" in captured.out
    assert "'aGrass', 'eGrass' all get the class name 'grass'" in captured.err


def test_partition_counts_skipped_files_by_reason_and_takes_image_settings(tmp_path, capsys):
    from PIL import Image

    root = tmp_path / "ds"
    for cls in ("beach", "forest"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (20 + i * 20, 20), (i * 50, 0, 0)).save(root / cls / f"{i}.png")
    (root / "forest" / "broken.png").write_text("no")
    out = tmp_path / "m.json"
    rc = main(
        [
            "data",
            "partition",
            "--dataset",
            "imagefolder",
            "--root",
            str(root),
            "--sites",
            "2",
            "--quiet",
            "--out",
            str(out),
            "--set",
            "data.max_pixels=700",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    # 40x20 and 60x20 exceed 700 pixels in each class; one file is not an image at all
    assert "skipped files: 5 (too large 4, unreadable 1)" in printed
    assert (
        main(
            [
                "data",
                "partition",
                "--dataset",
                "imagefolder",
                "--root",
                str(root),
                "--sites",
                "2",
                "--out",
                str(out),
                "--set",
                "train.lr=1",
            ]
        )
        == 2
    )
    assert "--set takes data.* settings" in capsys.readouterr().err


@pytest.mark.skipif(not BEN.is_dir(), reason=f"real BigEarthNet sample not found at {BEN}")
def test_preview_writes_what_the_encoder_sees(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from fedrsclip.data import load_rgb
    from fedrsclip.data.composite import image_settings

    patch = sorted((BEN / "S2").iterdir())[0]
    out = tmp_path / "preview.png"
    assert main(["data", "preview", str(patch), "--out", str(out), "--set", "data.composite=false-color"]) == 0
    assert "modality s2, composite B08,B04,B03" in capsys.readouterr().out
    written = np.asarray(Image.open(out))
    assert np.array_equal(written, np.asarray(load_rgb(patch, image_settings("s2", "false-color"))))
    # an existing file is never replaced without --force
    assert main(["data", "preview", str(patch), "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    s1 = sorted((BEN / "S1").iterdir())[0]
    assert main(["data", "preview", str(patch), str(s1), "--out", str(out), "--force"]) == 0
    assert Image.open(out).size == (120 + 4 + 120, 120)
    assert (
        main(["data", "preview", str(patch), "--out", str(tmp_path / "p.png"), "--set", "data.composite=VV,VH,B02"])
        == 2
    )
    assert "modality s2 has no band VV" in capsys.readouterr().err
