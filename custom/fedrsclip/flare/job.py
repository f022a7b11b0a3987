"""Make a runnable copy of the FLARE job with a different number of sites, rounds or fedrsclip settings.

The copy changes only configuration: meta.json's min_clients, the server's `min_clients` / `num_rounds` variables,
and the executor's `overrides` (appended, so they win over the job's own). For the synthetic demo data the
number of sites is also data.synthetic_sites, so every site builds the same partition over the same sites.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Sequence

from ..io import atomic_write_json

EXECUTOR_PATH = "fedrsclip.flare.executor.FedRSCLIPExecutor"
DEFAULT_JOB = Path(__file__).resolve().parents[3] / "jobs" / "fedrsclip"  # the repository's job folder


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def job_settings(job: str | Path) -> dict:
    """The job's sites (min_clients), rounds and executor overrides."""
    job = Path(job)
    server = _read(job / "app" / "config" / "config_fed_server.json")
    return {"min_clients": server.get("min_clients"), "num_rounds": server.get("num_rounds"),
            "overrides": list(_executor_args(_read(job / "app" / "config" / "config_fed_client.json"))
                              .get("overrides") or [])}


def _executor_args(client: dict) -> dict:
    for entry in client.get("executors", []):
        executor = entry.get("executor", {})
        if executor.get("path") == EXECUTOR_PATH:
            return executor.setdefault("args", {})
    raise ValueError(f"the job's config_fed_client.json has no {EXECUTOR_PATH} executor")


def prepare_job(
    src: str | Path,
    dst: str | Path,
    sites: int | None = None,
    rounds: int | None = None,
    overrides: Sequence[str] = (),
) -> Path:
    """Copy the job folder `src` to `dst` (replaced) and set sites, rounds and extra overrides. Returns `dst`."""
    src, dst = Path(src), Path(dst)
    if not (src / "meta.json").is_file():
        raise FileNotFoundError(f"{src} is not a FLARE job folder (no meta.json)")
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    config = dst / "app" / "config"
    server, client, meta = (_read(config / "config_fed_server.json"), _read(config / "config_fed_client.json"),
                            _read(dst / "meta.json"))
    extra = list(overrides)
    if sites is not None:
        server["min_clients"] = meta["min_clients"] = int(sites)
        extra.insert(0, f"data.synthetic_sites={int(sites)}")
    if rounds is not None:
        server["num_rounds"] = int(rounds)
    args = _executor_args(client)
    current = args.get("overrides") or []
    if isinstance(current, dict):
        raise ValueError("the executor's overrides are a mapping; prepare_job appends 'a.b=c' strings only")
    args["overrides"] = list(current) + extra
    atomic_write_json(config / "config_fed_server.json", server)
    atomic_write_json(config / "config_fed_client.json", client)
    atomic_write_json(dst / "meta.json", meta)
    return dst
