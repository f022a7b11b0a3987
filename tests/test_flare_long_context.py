"""A FLARE job with a 248-position backbone and paragraph-long class descriptions, through the CLI and the real
`nvflare simulator` (subprocesses), offline: tiny random CLIP stretched by KPS, synthetic data."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import yaml

from fedrsclip.data.synth import SCENES

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
BIN = Path(sys.executable).parent


def run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, env=ENV, timeout=timeout, errors="replace"
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc


@pytest.mark.slow
def test_job_with_248_positions_and_long_descriptions_runs_in_the_simulator(tmp_path):
    classes = list(SCENES)[:10]
    # each description is longer than a stock CLIP's 77 tokens: only the stretched encoder takes it
    descriptions = {
        c: f"an aerial image of {c}, "
        + ", ".join(["seen from high above with its typical shapes, colours and textures around it"] * 5)
        for c in classes
    }
    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    assert all(77 < len(tokenizer.encode(d)) + 7 <= 248 for d in descriptions.values())  # + [SOS] 4 ctx . [EOT]
    path = tmp_path / "descriptions.yaml"
    path.write_text(yaml.safe_dump(descriptions))
    job, ws = tmp_path / "job", tmp_path / "ws"
    run(
        BIN / "fedrsclip",
        "job",
        "--algorithm",
        "fedrsclip",
        "--sites",
        "2",
        "--rounds",
        "1",
        "--out",
        job,
        "--set",
        "model.context_length=248",
        "--set",
        f"prompt.class_descriptions={path}",
        "--set",
        "data.synthetic_per_class=40",
    )
    proc = run(BIN / "nvflare", "simulator", job, "-w", ws, "-n", "2", "-t", "2")
    results = json.loads((ws / "server" / "simulate_job" / "app_server" / "fedrsclip_results.json").read_text())
    assert results["status"] == "finished" and results["errors"] == []
    assert "248 text positions" in results["backbone"]
    record = results["rounds"][0]
    assert record["missing"] == [] and set(record["sites"]) == {"site-1", "site-2"}
    for entry in record["sites"].values():
        assert 0.0 <= entry["accuracy"] <= 100.0 and entry["samples_train"] > 0
        assert entry["bytes_up"] == 4 * 64 * 4  # the shared prompt: n_ctx x width x float32, whatever the length
    log = proc.stdout + proc.stderr
    assert "Traceback" not in log
    # at each site, from the job's own copy of the file (fedrsclip job ships it in app/config/)
    assert (
        len(re.findall(r"class texts: the descriptions in \S+/config/class_descriptions\.yaml \(10 classes\)", log))
        >= 2
    ), log[-3000:]
