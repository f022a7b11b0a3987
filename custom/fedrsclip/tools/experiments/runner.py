"""`fedrsclip experiment`: run every unfinished cell of a grid (tools/experiments/grid.py), each one real FLARE
simulator job (built by `fedrsclip.flare.job`, run by `nvflare simulator` in a subprocess), into an experiment
folder (tools/experiments/layout.py).

Resumable: a cell whose results file says "finished" is skipped; any other cell (never run, interrupted, failed)
is run again from scratch (the simulator empties its workspace). The folder must be new, empty, or an experiment
folder: nothing else in it is ever deleted.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from tqdm.auto import tqdm

from ...atomic import atomic_write_json
from ...data.partition import SCHEMES
from ...flare.job import JobSpec, write_job
from ...flare.simulator import last_error_line, simulator_command
from ...predictions import gather_site_predictions
from ...results_file import SIMULATOR_RESULTS, load_results
from .grid import MAX_THREADS, Cell, DataSource, build_grid, check_overrides, parse_ablate, variant_overrides
from .layout import CELL_FORMAT, CENTRALIZED, EXPERIMENT_FILE, cell_path, is_finished


def _summary(results: dict[str, Any]) -> str:
    final = results.get("final") or {}
    for key, name in (("weighted_accuracy", "accuracy"), ("weighted_micro_f1", "micro F1")):
        if isinstance(final.get(key), (int, float)):
            return f"final {name} {final[key]:.1f}% (test-sample weighted over sites)"
    return "no final accuracy"


def _first_error(results: dict[str, Any], log: Path) -> str:
    errors = results.get("errors") or []
    if errors:
        return f"{errors[0].get('site')}: {errors[0].get('error')}"
    return last_error_line(log)


def run_cell(
    cell: Cell,
    out: Path,
    settings: Path | None,
    rounds: int | None,
    overrides: Sequence[str],
    data: DataSource,
    grid_sites: Sequence[int | None],
    max_threads: int,
) -> dict[str, Any]:
    """Generate the cell's job, run it in the simulator, and write its results file. Returns the record."""
    cell_overrides = [
        *overrides,
        f"algorithm={cell.algorithm}",
        f"train.seed={cell.seed}",
        *data.overrides(cell, grid_sites, out),
        *variant_overrides(cell.variant),
        f"data.cache_dir={out / 'features' / f'{cell.column}-{cell.partition}'}",
    ]
    job = write_job(
        JobSpec(
            sites=cell.num_sites,
            rounds=rounds,
            overrides=tuple(cell_overrides),
            settings=settings,
            modalities=data.modalities,
        ),
        out / "jobs" / cell.name,
    )
    workspace, log = out / "runs" / cell.name, out / "runs" / f"{cell.name}.log"  # the simulator empties it
    log.parent.mkdir(parents=True, exist_ok=True)
    threads = min(cell.num_sites, max_threads)
    cmd = simulator_command(job, workspace, cell.num_sites, threads)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("HF_HUB_OFFLINE", "1")
    start = time.time()
    with open(log, "w", encoding="utf-8") as handle:
        rc = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env).returncode
    try:
        results = load_results(workspace / SIMULATOR_RESULTS)
    except (OSError, ValueError) as exc:
        results = {"status": "no results", "error": str(exc), "rounds": []}
    record = {
        "format": CELL_FORMAT,
        "cell": {**asdict(cell), "column": cell.column, "name": cell.name},
        "settings": {
            "rounds": rounds,
            "overrides": cell_overrides,
            "threads": threads,
            "job": str(job),
            "workspace": str(workspace),
            "log": str(log),
            "command": cmd,
            "data": data.description,
        },
        "returncode": rc,
        "seconds": time.time() - start,
        "results": results,
        "site_predictions": gather_site_predictions(workspace, results),
    }
    atomic_write_json(cell_path(out, cell.name), record)
    return record


def run_experiment(
    out: str | Path,
    algorithms: Sequence[str],
    sites: Sequence[int | None],
    partitions: Sequence[str],
    seeds: Sequence[int],
    rounds: int | None = None,
    overrides: Sequence[str] = (),
    data: DataSource | None = None,
    settings: str | Path | None = None,
    max_threads: int = MAX_THREADS,
    ablate: str | None = None,
) -> int:
    """Run every unfinished cell of the grid; 0 when every cell finished, 1 otherwise. `settings`: the jobs'
    fedrsclip YAML (default: the package's offline demo settings). `ablate`: multi-modal modules ("mf,fw,mim")
    each switched off in cells of its own next to the full framework's (needs `data.modalities`)."""
    out = Path(out).expanduser().resolve()
    if out.is_dir() and any(out.iterdir()) and not (out / EXPERIMENT_FILE).is_file():
        raise ValueError(
            f"--out {out} is not empty and is not an experiment folder (no {EXPERIMENT_FILE}): choose "
            "a new folder, nothing in this one is touched"
        )
    settings = Path(settings).expanduser().resolve() if settings else None
    data = data or DataSource()
    for option, values, low in (
        ("--seeds", seeds, 0),
        ("--rounds", [] if rounds is None else [rounds], 1),
        ("--threads", [max_threads], 1),
        ("--data-seed", [data.data_seed], 0),
    ):
        wrong = [v for v in values if isinstance(v, bool) or not isinstance(v, int) or v < low]
        if wrong or (option == "--seeds" and not values):
            raise ValueError(
                f"{option}: {wrong[0] if wrong else 'no value'!r} is not an integer >= {low}; nothing was written"
            )
    bad = [p for p in partitions if p not in SCHEMES]
    if bad:
        raise ValueError(f"--partition {bad[0]!r} is not a partition scheme; choose from {', '.join(SCHEMES)}")
    variants = parse_ablate(ablate)
    if ablate and not data.modalities:
        raise ValueError(
            "--ablate switches the multi-modal modules (MF, FW, MIM): give the federation's modalities "
            "too (--modalities, e.g. s2,s1,s2+s1); nothing was written"
        )
    check_overrides(overrides, variants)
    data.check(sites, partitions)
    cells = build_grid(algorithms, sites, partitions, seeds, variants)
    for algorithm in algorithms:  # refuse bad settings before running anything (a seed too large: train.seed)
        for seed in seeds:
            for variant in variants:
                JobSpec(  # the fewest sites of the grid: a --modalities list is checked against them
                    sites=min((n for n in sites if n is not None), default=1),
                    rounds=rounds,
                    settings=settings,
                    modalities=data.modalities,
                    overrides=(*overrides, f"algorithm={algorithm}", f"train.seed={seed}", *variant_overrides(variant)),
                ).config()
    atomic_write_json(
        out / EXPERIMENT_FILE,
        {
            "algorithms": list(algorithms),
            "sites": [CENTRALIZED if n is None else n for n in sites],
            "partitions": list(partitions),
            "seeds": list(seeds),
            "rounds": rounds,
            "overrides": list(overrides),
            "data": data.description,
            "settings": str(settings) if settings else None,
            **({"modalities": data.modalities, "variants": variants} if data.modalities else {}),
            "cells": [c.name for c in cells],
        },
    )
    todo = [c for c in cells if not is_finished(cell_path(out, c.name))]

    def say(text: str) -> None:
        tqdm.write(f"[experiment] {text}", file=sys.stderr)  # above the bar

    say(f"{len(cells)} cells in {out}: {len(cells) - len(todo)} already finished (skipped), {len(todo)} to run")
    failed = 0
    with tqdm(total=len(todo), desc="cells", unit="cell", file=sys.stderr) as bar:
        for index, cell in enumerate(todo, 1):
            bar.set_postfix_str(cell.name)
            record = run_cell(cell, out, settings, rounds, overrides, data, sites, max_threads)
            results, took = record["results"], record["seconds"]
            if is_finished(cell_path(out, cell.name)):
                say(
                    f"{index}/{len(todo)} {cell.describe()}: finished in {took:.0f}s, {_summary(results)} "
                    f"-> {cell_path(out, cell.name).relative_to(out)}"
                )
            else:
                failed += 1
                say(
                    f"{index}/{len(todo)} {cell.describe()}: FAILED (status {results.get('status')}, exit code "
                    f"{record['returncode']}) after {took:.0f}s: "
                    f"{_first_error(results, Path(record['settings']['log']))}"
                    f"; log {record['settings']['log']}; it runs again next time"
                )
            bar.update(1)
    say(f"done: {len(cells) - failed}/{len(cells)} cells finished; report: fedrsclip report {out}")
    return 0 if failed == 0 else 1
