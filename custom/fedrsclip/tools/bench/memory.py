"""The peak resident memory of one site process (ViT-B/16 on CPU: load, extract features, train a few steps)."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from .common import BATCH, UCMERCED_CLASSES, bench_config, progress


def rss_child(spec: str) -> None:
    """Run in a fresh process: load ViT-B/16 on CPU, extract features, train a few steps; print the peak RSS."""
    import torch

    args = json.loads(spec)
    if args.get("threads"):
        torch.set_num_threads(int(args["threads"]))
    with contextlib.suppress(Exception):  # a FLARE site process has nvflare loaded as well
        import fedrsclip.flare.executor  # noqa: F401
    from ...backbone import load_backbone
    from ...features import extract_features
    from ...trainer import PromptTrainer

    cfg = bench_config("cpu", extra=[f"train.local_epochs={int(args['epochs'])}", f"train.batch_size={BATCH}"])
    backbone = load_backbone(cfg.model)
    items = [(Path(p), int(label)) for p, label in args["items"]]
    features = extract_features(backbone, items, progress=False)
    trainer = PromptTrainer(cfg, backbone, UCMERCED_CLASSES, site="site-1")
    result = trainer.train_round(features)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    hwm_kib = None
    with contextlib.suppress(OSError, ValueError, IndexError):  # Linux: this process's own high-water mark
        hwm_kib = next(
            int(line.split()[1])
            for line in Path("/proc/self/status").read_text().splitlines()
            if line.startswith("VmHWM:")
        )
    print(
        json.dumps(
            {
                "ru_maxrss_mb": peak_kib / 1024,
                "vmhwm_mb": None if hwm_kib is None else hwm_kib / 1024,
                "steps": result.metrics["steps"],
                "images": len(items),
            }
        )
    )


def bench_peak_rss(items: Sequence[tuple[Path, int]], epochs: int, threads: int | None) -> dict:
    spec = json.dumps({"items": [(str(p), int(label)) for p, label in items], "epochs": epochs, "threads": threads})
    progress(f"peak RSS: a fresh site process (ViT-B/16 on CPU, {len(items)} images, {epochs} epoch(s))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    code = f"from fedrsclip.tools.bench.memory import rss_child; rss_child({spec!r})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {
            "peak_rss_mb": None,
            "peak_rss_note": f"the site process failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}",
        }
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    # Linux carries the parent's RSS at fork into the child's ru_maxrss (the pre-exec memory's high-water mark), so
    # it is measured before this process loads a model, and cross-checked with VmHWM (the child's own peak).
    peak = child["ru_maxrss_mb"]
    note = (
        f"ru_maxrss of a fresh process: ViT-B/16 on CPU, features of {child['images']} images, "
        f"{child['steps']} training steps (batch {BATCH}, K=21), nvflare imported"
    )
    if child["vmhwm_mb"] is not None and peak > 1.05 * child["vmhwm_mb"]:
        note += (
            f"; ru_maxrss ({peak:.0f} MB) includes this parent process's memory at fork, so the child's own "
            f"high-water mark VmHWM is reported"
        )
        peak = child["vmhwm_mb"]
    return {
        "peak_rss_mb": peak,
        "peak_rss_mb_ru_maxrss": child["ru_maxrss_mb"],
        "peak_rss_mb_vmhwm": child["vmhwm_mb"],
        "peak_rss_note": note,
    }
