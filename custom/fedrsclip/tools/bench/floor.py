"""FLARE's own floor for `-t 1`: the simulator's cost per task when the site does (almost) nothing (issue 14).

With fewer simulator threads than sites, every task runs in a fresh `simulator_worker` process. Part of that cost is
FLARE's alone: the simulator's 1 s pause between tasks, the new process with nvflare's imports, the 1 s retry of
its connection to the worker, the client's cell and app set-up, the task's round trips. To tell that part from the
site's, the bench runs FLARE's own minimal federation, built from FLARE's stock numpy components (the hello-numpy
example: `NPTrainer`, which adds 1 to a 3x3 array and imports no torch), with the job's sites, as many tasks (one
round more than the job's training rounds stands for its final evaluation) and the same server settings, in the same
simulator mode. What the demo job costs above this floor is the site's: torch's import, building the site, training.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from ...flare.job import TASK_REQUEST_INTERVAL
from ...flare.simulator import check_workspace, simulator_command
from .common import progress

_ROUND_DONE = re.compile(r" - Round \d+ finished\.$", re.MULTILINE)  # ScatterAndGather's line per round


def floor_job(sites: int, rounds: int, out: Path) -> Path:
    """Export FLARE's stock numpy federation (`sites` sites, `rounds` rounds of ScatterAndGather) into `out`; returns
    the job folder. Server settings as this project's job: task_request_interval, task_check_period 0.1."""
    from nvflare.apis.dxo import DataKind
    from nvflare.app_common.aggregators import InTimeAccumulateWeightedAggregator
    from nvflare.app_common.np.np_model_persistor import NPModelPersistor
    from nvflare.app_common.np.np_trainer import NPTrainer
    from nvflare.app_common.shareablegenerators import FullModelShareableGenerator
    from nvflare.app_common.workflows.scatter_and_gather import ScatterAndGather
    from nvflare.job_config.api import FedJob

    job = FedJob(name="flare-floor", min_clients=sites)
    job.to_server({"server": {"task_request_interval": TASK_REQUEST_INTERVAL}})
    job.to_server(NPModelPersistor(), id="persistor")
    job.to_server(FullModelShareableGenerator(), id="shareable_generator")
    job.to_server(InTimeAccumulateWeightedAggregator(expected_data_kind=DataKind.WEIGHTS), id="aggregator")
    job.to_server(
        ScatterAndGather(
            min_clients=sites,
            num_rounds=rounds,
            wait_time_after_min_received=0,
            aggregator_id="aggregator",
            persistor_id="persistor",
            shareable_generator_id="shareable_generator",
            task_check_period=0.1,
        ),
        id="scatter_and_gather",
    )
    job.to_clients(NPTrainer(sleep_time=0))  # deprecated by FLARE (it warns) but still its smallest executor
    out.mkdir(parents=True, exist_ok=True)
    job.export_job(str(out))
    return out / job.name


def bench_flare_floor(workdir: Path, sites: int, rounds: int, threads: int = 1) -> dict[str, Any]:
    """Run FLARE's numpy federation in the simulator (`sites` sites, `rounds` rounds, `threads` threads; a fresh
    workspace under `workdir`) and time it. Returns wall_s, exit_code, ok (exit 0 and every round finished), tasks
    (sites x rounds), wall_s_per_task and, with fewer threads than sites, the per-task phases from the simulator's
    log (`task_phases`)."""
    workspace = workdir / f"floor-t{threads}"
    check_workspace(workspace)
    log_path = workdir / f"floor-t{threads}.log"
    progress(f"simulator: FLARE's numpy federation (the floor), {sites} sites, {rounds} rounds, -t {threads}")
    with tempfile.TemporaryDirectory(prefix="fedrsclip-floor-") as tmp:
        job = floor_job(sites, rounds, Path(tmp))
        cmd = simulator_command(job, workspace, sites, threads)
        start = time.perf_counter()
        with open(log_path, "w", encoding="utf-8") as log:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp).returncode
        wall = time.perf_counter() - start
    tasks = sites * rounds
    finished = len(_ROUND_DONE.findall(log_path.read_text(encoding="utf-8", errors="replace")))
    out: dict[str, Any] = {
        "threads": threads,
        "wall_s": wall,
        "exit_code": rc,
        "ok": rc == 0 and finished == rounds,
        "rounds_finished": finished,
        "tasks": tasks,
        "wall_s_per_task": wall / tasks,
        "log": str(log_path),
    }
    if threads < sites:
        out["task_phases"] = task_phases(log_path)
    if not out["ok"]:
        print(
            f"warning: FLARE's numpy federation exited with code {rc} after {finished} of {rounds} rounds; "
            f"see {log_path}",
            file=sys.stderr,
        )
    return out


_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) - ")
_PHASES = {
    "ClientTaskWorker started to run": "worker",
    "Initialize ClientRunner for client": "runner",
    "Finished one task run for client": "done",
}


def task_phases(log_path: str | Path) -> dict[str, Any] | None:
    """Where a task's time goes when each task has its own worker process (`-t 1`), from the simulator's log:
    `between` = the previous task's end to the new worker's first line (FLARE's 1 s pause between tasks, the process
    start, nvflare's imports); `setup` = to "Initialize ClientRunner" (FLARE's client, cell and app set up,
    importing the executor's module: torch); `task` = to "Finished one task run" (the site built from disk, the
    round, the reply). Medians over the tasks; None when the log has none."""
    events: list[tuple[str, float]] = []
    with open(log_path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            match = _STAMP.match(line)
            if not match:
                continue
            kind = next((k for text, k in _PHASES.items() if text in line), None)
            if kind:
                when = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                events.append((kind, when))
    phases: dict[str, list[float]] = {"between": [], "setup": [], "task": []}
    last: dict[str, float] = {}
    for kind, when in events:
        if kind == "worker":
            if "done" in last:
                phases["between"].append(when - last["done"])
            last = {"done": last.get("done", when), "worker": when}
        elif kind == "runner" and "worker" in last:
            phases["setup"].append(when - last["worker"])
            last["runner"] = when
        elif kind == "done" and "runner" in last:
            phases["task"].append(when - last["runner"])
            last = {"done": when}
    if not phases["task"]:
        return None
    return {**{f"{k}_s": statistics.median(v) if v else None for k, v in phases.items()}, "tasks": len(phases["task"])}
