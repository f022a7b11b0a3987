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
from .floor import bench_flare_floor, task_phases
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
        rc = run_demo(
            str(workspace), sites=sites, threads=threads, rounds=rounds, log_file=str(workdir / f"demo-t{threads}.log")
        )
    wall = time.perf_counter() - start
    out: dict[str, Any] = {"threads": threads, "wall_s": wall, "exit_code": rc}
    try:
        results = load_results(workspace / SIMULATOR_RESULTS)
    except (OSError, ValueError) as exc:
        out["error"] = f"no results file: {exc}"
        return out
    tasks, seconds = _tasks(results)
    out.update(
        status=results.get("status"),
        rounds=len(results.get("rounds", [])),
        train_tasks=tasks,
        site_seconds=seconds,
        wall_s_per_train_task=wall / tasks if tasks else None,
    )
    if threads < sites:
        out["task_phases"] = task_phases(workdir / f"demo-t{threads}.log")
    return out


def bench_sim_threads(workdir: Path, sites: int = 10, rounds: int | None = None) -> dict[str, Any]:
    """sim_demo_t1_s and sim_demo_tn_s: the demo job with `-t 1` and with `-t sites` (rounds: None = the job's);
    sim_floor_t1_s: FLARE's own numpy federation with as many tasks, `-t 1` (`floor`), the part of a `-t 1` task
    that no FLARE job avoids."""
    workdir.mkdir(parents=True, exist_ok=True)
    many = run_demo_timed(workdir, sites, sites, rounds)
    one = run_demo_timed(workdir, sites, 1, rounds)
    ok = all(r["exit_code"] == 0 and r.get("status") == "finished" for r in (one, many))
    # the job's training rounds plus its final evaluation: one task per site each
    floor = bench_flare_floor(workdir, sites, int(one.get("rounds") or 0) + 1, threads=1) if ok else None
    floor_ok = floor is not None and floor["ok"]
    out = {
        "sim_demo_t1_s": one["wall_s"] if ok else None,
        "sim_demo_tn_s": many["wall_s"] if ok else None,
        "sim_demo_ratio": one["wall_s"] / many["wall_s"] if ok else None,
        "sim_floor_t1_s": floor["wall_s"] if floor_ok else None,
        "sim_floor_ratio": floor["wall_s"] / many["wall_s"] if floor_ok else None,
        "sim_demo_t1_over_floor": one["wall_s"] / floor["wall_s"] if floor_ok else None,
        "sim_demo_sites": sites,
        "sim_demo_runs": {"t1": one, "tn": many, "floor_t1": floor},
        "sim_demo_note": (
            f"the offline demo job (fedrsclip-tiny, random weights, synthetic scenes), {sites} sites, "
            f"{one.get('rounds', '?')} rounds, a fresh workspace each; -t 1: every task in a fresh "
            f"simulator worker process ({_per_task(one)})"
        ),
    }
    if floor_ok:
        out["sim_demo_note"] += (
            f"; FLARE's own numpy federation with as many tasks takes {floor['wall_s']:.0f} s with -t 1 "
            f"({floor['wall_s_per_task']:.1f} s per task; {_phases(floor.get('task_phases'))}): "
            f"{floor['wall_s'] / many['wall_s']:.1f}x the demo job's -t {sites} before any site work"
        )
    if not ok:
        out["sim_demo_note"] = "a simulator run failed: " + "; ".join(
            f"-t {r['threads']}: exit {r['exit_code']}, {r.get('error') or r.get('status')}" for r in (one, many)
        )
    elif not floor_ok:
        out["sim_demo_note"] += (
            f"; FLARE's numpy federation failed (exit {floor['exit_code']}, {floor['rounds_finished']} rounds "
            f"finished; see {floor['log']})"
        )
    return out


def _per_task(run: dict) -> str:
    phases = run.get("task_phases")
    if not phases:
        per = run.get("wall_s_per_train_task")
        return "no task recorded" if per is None else f"{per:.1f} s of job wall time per training task"
    return (
        f"{run['wall_s'] / phases['tasks']:.1f} s of job wall time per task ({phases['tasks']} tasks, the final "
        f"evaluation's included); per task (medians): " + _phases(phases)
    )


def _phases(phases: dict | None) -> str:
    if not phases:
        return "no phases in the log"
    return (
        f"{phases['between_s'] or 0:.1f} s from the previous task's end to the new worker, "
        f"{phases['setup_s'] or 0:.1f} s of FLARE client set-up and module imports, "
        f"{phases['task_s']:.1f} s for the task itself"
    )
