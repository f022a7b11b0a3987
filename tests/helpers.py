"""What several test files share, one copy each: the offline environment, the tiny RANDOM-weight configuration,
the real UC Merced sample's place, a job folder, and a run of the real `nvflare simulator`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data" / "ucmerced-sample"  # ../shared/data from the repository root
TINY = ["model.arch=fedrsclip-tiny", "model.pretrained=null", "model.random_init=true"]
FAST = ["data.synthetic_per_class=40"]  # a smaller synthetic dataset: quicker, same code path
ENV = {k: v for k, v in os.environ.items() if k != "FEDRSCLIP_SITE_CONFIG"}
ENV.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")


def tiny_config(*overrides: str, cache_dir: Path | None = None):
    """The package's configuration with the tiny random-weight CLIP (and `cache_dir` for the features)."""
    from fedrsclip.config import load_config

    extra = [f"data.cache_dir={cache_dir}"] if cache_dir else []
    return load_config(overrides=[*TINY, *extra, *overrides])


def make_job(out: Path, sites: int = 2, rounds: int = 2, overrides=(), **spec) -> Path:
    """The FLARE job for `sites` sites and `rounds` rounds, written into `out` (fedrsclip.flare.job)."""
    from fedrsclip.flare.job import JobSpec, write_job

    return write_job(JobSpec(sites=sites, rounds=rounds, overrides=tuple(overrides), **spec), out)


def simulate(
    job: Path, ws: Path, sites: int, threads: int | None = None, env: dict | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """`nvflare simulator job -w ws -n sites -t threads`; its output is also kept in <ws>.log."""
    from fedrsclip.flare.simulator import simulator_command

    proc = subprocess.run(
        simulator_command(job, ws, sites, threads or sites),
        capture_output=True,
        text=True,
        env={**ENV, **(env or {})},
        timeout=timeout,
        errors="replace",
    )
    (ws.parent / f"{ws.name}.log").write_text(proc.stdout + proc.stderr)
    return proc
