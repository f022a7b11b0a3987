"""The offline demo job in the simulator with one thread and with one thread per site (issue 14).

With fewer threads than sites, FLARE's simulator runs every task in a fresh worker process (`simulator_worker`):
Python, nvflare, torch and the site are started again for each task, so the job's time grows with the cost of a
start. Both runs are the same job (the demo's: `fedrsclip-tiny` with random weights, synthetic scenes), on a fresh
workspace each, one after the other on the same machine.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from ...results_file import SIMULATOR_RESULTS, load_results
from ..demo import run_demo
from .common import progress
from .overhead import _DemoLines


def _tasks(results: dict) -> tuple[int, float]:
    """Site tasks recorded in a results file and the sum of their seconds (setup + evaluate + train)."""
    count, seconds = 0, 0.0
    for rnd in results.get("rounds", []):
        for site in (rnd.get("sites") or {}).values():
            if isinstance(site.get("seconds"), (int, float)):
                count += 1
                seconds += float(site["seconds"])
    return count, seconds


def run_demo_timed(workdir: Path, sites: int, threads: int, rounds: int | None) -> dict[str, Any]:
    """One demo job in the simulator: its wall time, exit code and what its results file says about the tasks."""
    workspace = workdir / f"demo-t{threads}"
    progress(f"simulator: the demo job, {sites} sites, -t {threads}; this takes minutes")
    start = time.perf_counter()
    with contextlib.redirect_stdout(_DemoLines()):
        rc = run_demo(str(workspace), sites=sites, threads=threads, rounds=rounds,
                      log_file=str(workdir / f"demo-t{threads}.log"))
    wall = time.perf_counter() - start
    out: dict[str, Any] = {"threads": threads, "wall_s": wall, "exit_code": rc}
    try:
        results = load_results(workspace / SIMULATOR_RESULTS)
    except (OSError, ValueError) as exc:
        out["error"] = f"no results file: {exc}"
        return out
    tasks, seconds = _tasks(results)
    out.update(status=results.get("status"), rounds=len(results.get("rounds", [])), train_tasks=tasks,
               site_seconds=seconds, wall_s_per_train_task=wall / tasks if tasks else None)
    return out


def bench_sim_threads(workdir: Path, sites: int = 10, rounds: int | None = None) -> dict[str, Any]:
    """sim_demo_t1_s and sim_demo_tn_s: the demo job with `-t 1` and with `-t sites` (rounds: None = the job's)."""
    workdir.mkdir(parents=True, exist_ok=True)
    many = run_demo_timed(workdir, sites, sites, rounds)
    one = run_demo_timed(workdir, sites, 1, rounds)
    ok = all(r["exit_code"] == 0 and r.get("status") == "finished" for r in (one, many))
    out = {"sim_demo_t1_s": one["wall_s"] if ok else None, "sim_demo_tn_s": many["wall_s"] if ok else None,
           "sim_demo_ratio": one["wall_s"] / many["wall_s"] if ok else None, "sim_demo_sites": sites,
           "sim_demo_runs": {"t1": one, "tn": many},
           "sim_demo_note": (f"the offline demo job (fedrsclip-tiny, random weights, synthetic scenes), {sites} sites, "
                             f"{one.get('rounds', '?')} rounds, a fresh workspace each; -t 1: every task in a fresh "
                             f"simulator worker process ({_per_task(one)})")}
    if not ok:
        out["sim_demo_note"] = "a simulator run failed: " + "; ".join(
            f"-t {r['threads']}: exit {r['exit_code']}, {r.get('error') or r.get('status')}" for r in (one, many))
    return out


def _per_task(run: dict) -> str:
    per = run.get("wall_s_per_train_task")
    if per is None:
        return "no task recorded"
    return (f"{per:.1f} s of job wall time per training task, of which the site's own seconds "
            f"{run['site_seconds'] / max(run['train_tasks'], 1):.1f} s")
