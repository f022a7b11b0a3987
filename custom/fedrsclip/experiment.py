"""`fedrsclip experiment`: a grid of algorithms x site counts x partition schemes x seeds, each cell one real FLARE
simulator job (generated from the job template by `prepare_job`, run by `nvflare simulator` in a subprocess).

Layout of the experiment folder:
    experiment.json        the grid and its settings (written at the start)
    cells/<cell>.json      one results file per cell: the run's fedrsclip_results.json, the cell's settings, and
                           each site's predictions file gathered from its own workspace (simulation: all local)
    jobs/<cell>/           the generated job;  runs/<cell>/ its simulator workspace;  runs/<cell>.log its log
    data/, features/       synthetic datasets / manifests and feature caches, shared by the cells that can share

Resumable: a cell whose results file says "finished" is skipped; any other cell (never run, interrupted, failed)
is run again from scratch (the simulator empties its workspace).

The "centralized" column runs each algorithm as the same FLARE job with ONE site that holds all the data pooled
(every site's train and test split; `fedrsclip.data.manifest.centralized`). The partition scheme does not apply to
it, so there is one centralized cell per algorithm and seed, shared by every partition's table.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from tqdm.auto import tqdm

from .algorithms import get_algorithm
from .io import atomic_write_json
from .predictions import predictions_path

EXPERIMENT_FILE = "experiment.json"
CELLS_DIR = "cells"
CELL_FORMAT = 1
CENTRALIZED = "centralized"
POOLED = "pooled"  # the partition label of centralized cells
DEFAULT_SITES = "centralized,2,5,10,15,20,40"
MAX_THREADS = 10  # simulator threads: one process per site up to this; more sites share them (fresh process per task)
_GRID_KEYS = ("algorithm", "train.seed", "data.synthetic_sites", "data.synthetic_scheme", "data.source",
              "data.manifest")


@dataclass(frozen=True)
class Cell:
    algorithm: str
    sites: int | None  # None: centralized (one site, all data pooled)
    partition: str
    seed: int

    @property
    def column(self) -> str:
        return CENTRALIZED if self.sites is None else str(self.sites)

    @property
    def num_sites(self) -> int:
        return 1 if self.sites is None else self.sites

    @property
    def name(self) -> str:
        return f"{self.algorithm}__{self.column}__{self.partition}__seed{self.seed}"

    def describe(self) -> str:
        where = "centralized (1 site, all data)" if self.sites is None else f"{self.sites} sites, {self.partition}"
        return f"{self.algorithm}, {where}, seed {self.seed}"


def parse_sites(text: str) -> list[int | None]:
    """"centralized,2,5" -> [None, 2, 5]."""
    out: list[int | None] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part == CENTRALIZED:
            out.append(None)
        elif part.isdigit() and int(part) >= 1:
            out.append(int(part))
        else:
            raise ValueError(f"--sites: {part!r} is neither 'centralized' nor a positive number of sites")
    if not out:
        raise ValueError("--sites is empty; give e.g. centralized,2,5")
    return list(dict.fromkeys(out))


def build_grid(algorithms: Sequence[str], sites: Sequence[int | None], partitions: Sequence[str],
               seeds: Sequence[int]) -> list[Cell]:
    for name in algorithms:
        get_algorithm(name)  # unknown names stop here, with the list of valid ones
        if name == CENTRALIZED:
            raise ValueError("algorithm 'centralized' is FedRSCLIP on pooled data: ask for it as the column "
                             "(--sites centralized,...) of algorithm fedrsclip (or of any other algorithm)")
    cells = []
    for algorithm in algorithms:
        for seed in seeds:
            if None in sites:
                cells.append(Cell(algorithm, None, POOLED, seed))
            cells += [Cell(algorithm, n, p, seed) for p in partitions for n in sites if n is not None]
    return cells


@dataclass
class DataSource:
    """Where each cell's data comes from: the offline synthetic scenes (default), manifests named by a pattern
    (`{sites}`, `{partition}` filled in), or a dataset folder partitioned here for each site count."""

    manifest: str | None = None
    dataset: str | None = None
    root: str | None = None
    data_seed: int = 0
    description: str = field(init=False, default="")

    def __post_init__(self) -> None:
        if self.manifest and self.dataset:
            raise ValueError("give either --manifest or --dataset/--root, not both")
        if bool(self.dataset) != bool(self.root):
            raise ValueError("--dataset and --root go together (the dataset layout and its folder)")
        self.description = (f"manifests {self.manifest}" if self.manifest else
                            f"{self.dataset} at {self.root}" if self.dataset else "synthetic (data.source: synthetic)")
        self._listing = None

    def check(self, sites: Sequence[int | None], partitions: Sequence[str]) -> None:
        if self.manifest and "{sites}" not in self.manifest and len([n for n in sites if n is not None]) > 1:
            raise ValueError(f"--manifest {self.manifest}: the grid has several site counts, so the pattern needs "
                             "'{sites}' (e.g. ucm{sites}.json, made with fedrsclip data partition --clients N)")
        if self.manifest and "{partition}" not in self.manifest and len(partitions) > 1:
            raise ValueError(f"--manifest {self.manifest}: the grid has several partition schemes, so the pattern "
                             "needs '{partition}'")

    def overrides(self, cell: Cell, grid_sites: Sequence[int | None], out: Path) -> list[str]:
        if not self.manifest and not self.dataset:
            scheme = "uniform" if cell.sites is None else cell.partition  # one site holds everything either way
            return ["data.source=synthetic", f"data.synthetic_scheme={scheme}",
                    f"data.synthetic_dir={out / 'data'}"]
        return ["data.source=manifest", f"data.manifest={self._manifest_for(cell, grid_sites, out)}"]

    def _manifest_for(self, cell: Cell, grid_sites: Sequence[int | None], out: Path) -> Path:
        from .data.manifest import build_manifest, centralized, load_manifest, write_manifest

        if self.dataset:
            path = out / "data" / f"{self.dataset}-{cell.partition}-{cell.num_sites}.json"
            if not path.is_file():
                if self._listing is None:
                    from .data.readers import list_dataset

                    self._listing = list_dataset(self.dataset, self.root, progress=False)
                scheme = "uniform" if cell.sites is None else cell.partition
                write_manifest(build_manifest(self._listing, cell.num_sites, scheme, self.data_seed), path)
            return path
        federated = sorted(n for n in grid_sites if n is not None)
        source = Path(self.manifest.format(sites=cell.sites or (federated[0] if federated else 1),
                                           partition=cell.partition if cell.sites else "uniform")).expanduser()
        if not source.is_file():
            raise FileNotFoundError(f"--manifest: {source} does not exist (for {cell.describe()}); make it with "
                                    f"fedrsclip data partition ... --out {source}")
        manifest = load_manifest(source)
        if cell.sites is None:  # all sites' data pooled at one site
            path = out / "data" / f"centralized-{source.stem}.json"
            if not path.is_file():
                write_manifest(centralized(manifest), path)
            return path
        if len(manifest["sites"]) != cell.sites:
            raise ValueError(f"--manifest: {source} partitions the data over {len(manifest['sites'])} sites, the "
                             f"cell needs {cell.sites}")
        return source.resolve()


def check_overrides(overrides: Sequence[str]) -> None:
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key in _GRID_KEYS:
            raise ValueError(f"--set {item}: {key} is set per cell by the grid (--algorithms, --seeds, --sites, "
                             "--partition, --manifest/--dataset); leave it out")


def cell_path(out: Path, cell: Cell) -> Path:
    return out / CELLS_DIR / f"{cell.name}.json"


def is_finished(path: Path) -> bool:
    from .reporting.cells import finished  # the report's own test of a finished cell

    try:
        return finished(json.loads(path.read_text()))
    except (OSError, ValueError):
        return False


def gather_site_predictions(workspace: Path, results: dict[str, Any]) -> dict[str, Any]:
    """Each site's predictions file from its own workspace (next to its final state)."""
    out = {}
    for site, final in (results.get("final") or {}).get("sites", {}).items():
        candidates = [predictions_path(Path(final["final_state"]).parent, site)] if final.get("final_state") else []
        candidates += list((workspace / site).glob(f"*/fedrsclip/{predictions_path('.', site).name}"))
        for path in candidates:
            if path.is_file():
                out[site] = json.loads(path.read_text())
                break
    return out


def _summary(results: dict[str, Any]) -> str:
    final = (results.get("final") or {}).get("weighted_accuracy")
    return f"final accuracy {final:.1f}% (test-sample weighted over sites)" if isinstance(final, (int, float)) \
        else "no final accuracy"


def _first_error(results: dict[str, Any], log: Path) -> str:
    errors = results.get("errors") or []
    if errors:
        return f"{errors[0].get('site')}: {errors[0].get('error')}"
    try:
        lines = [l for l in log.read_text(errors="replace").splitlines() if re.search(r"ERROR|Error|error:", l)]
    except OSError:
        return ""
    return lines[-1][-300:] if lines else ""


def run_cell(cell: Cell, out: Path, template: Path, rounds: int | None, overrides: Sequence[str],
             data: DataSource, grid_sites: Sequence[int | None], max_threads: int) -> dict[str, Any]:
    """Generate the cell's job, run it in the simulator, and write its results file. Returns the record."""
    from .flare.demo import simulator_command
    from .flare.job import prepare_job
    from .flare.report import SIMULATOR_RESULTS, load_results

    cell_overrides = [*overrides, f"algorithm={cell.algorithm}", f"train.seed={cell.seed}",
                      *data.overrides(cell, grid_sites, out),
                      f"data.cache_dir={out / 'features' / f'{cell.column}-{cell.partition}'}"]
    job = prepare_job(template, out / "jobs" / cell.name, sites=cell.num_sites, rounds=rounds,
                      overrides=cell_overrides)
    workspace, log = out / "runs" / cell.name, out / "runs" / f"{cell.name}.log"
    if workspace.exists():  # an interrupted or failed earlier attempt
        shutil.rmtree(workspace)
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
    record = {"format": CELL_FORMAT, "cell": {**asdict(cell), "column": cell.column, "name": cell.name},
              "settings": {"rounds": rounds, "overrides": cell_overrides, "threads": threads,
                           "job": str(job), "workspace": str(workspace), "log": str(log), "command": cmd,
                           "data": data.description},
              "returncode": rc, "seconds": time.time() - start, "results": results,
              "site_predictions": gather_site_predictions(workspace, results)}
    atomic_write_json(cell_path(out, cell), record)
    return record


def run_experiment(out: str | Path, algorithms: Sequence[str], sites: Sequence[int | None],
                   partitions: Sequence[str], seeds: Sequence[int], rounds: int | None = None,
                   overrides: Sequence[str] = (), data: DataSource | None = None, template: str | Path | None = None,
                   max_threads: int = MAX_THREADS) -> int:
    """Run every unfinished cell of the grid; 0 when every cell finished, 1 otherwise."""
    from .config import load_config
    from .data.partition import SCHEMES
    from .flare.job import DEFAULT_JOB

    out = Path(out).expanduser().resolve()
    template = Path(template or DEFAULT_JOB)
    data = data or DataSource()
    bad = [p for p in partitions if p not in SCHEMES]
    if bad:
        raise ValueError(f"--partition {bad[0]!r} is not a partition scheme; choose from {', '.join(SCHEMES)}")
    check_overrides(overrides)
    data.check(sites, partitions)
    cells = build_grid(algorithms, sites, partitions, seeds)
    template_cfg = template / "app" / "config" / "fedrsclip.yaml"
    for algorithm in algorithms:  # refuse bad settings before running anything
        load_config(template_cfg if template_cfg.is_file() else None, [*overrides, f"algorithm={algorithm}"])
    atomic_write_json(out / EXPERIMENT_FILE, {
        "algorithms": list(algorithms), "sites": [CENTRALIZED if n is None else n for n in sites],
        "partitions": list(partitions), "seeds": list(seeds), "rounds": rounds, "overrides": list(overrides),
        "data": data.description, "template": str(template), "cells": [c.name for c in cells]})
    todo = [c for c in cells if not is_finished(cell_path(out, c))]
    say = lambda text: tqdm.write(f"[experiment] {text}", file=sys.stderr)  # above the bar
    say(f"{len(cells)} cells in {out}: {len(cells) - len(todo)} already finished (skipped), {len(todo)} to run")
    failed = 0
    with tqdm(total=len(todo), desc="cells", unit="cell", file=sys.stderr) as bar:
        for index, cell in enumerate(todo, 1):
            bar.set_postfix_str(cell.name)
            record = run_cell(cell, out, template, rounds, overrides, data, sites, max_threads)
            results, took = record["results"], record["seconds"]
            if is_finished(cell_path(out, cell)):
                say(f"{index}/{len(todo)} {cell.describe()}: finished in {took:.0f}s, {_summary(results)} "
                    f"-> {cell_path(out, cell).relative_to(out)}")
            else:
                failed += 1
                say(f"{index}/{len(todo)} {cell.describe()}: FAILED (status {results.get('status')}, exit code "
                    f"{record['returncode']}) after {took:.0f}s: {_first_error(results, Path(record['settings']['log']))}"
                    f"; log {record['settings']['log']}; it runs again next time")
            bar.update(1)
    say(f"done: {len(cells) - failed}/{len(cells)} cells finished; report: fedrsclip report {out}")
    return 0 if failed == 0 else 1
