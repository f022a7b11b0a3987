"""Where an experiment folder keeps what (a leaf: the runner and the report both read it):

experiment.json        the grid and its settings (written at the start)
cells/<cell>.json      one results record per cell: the run's fedrsclip_results.json, the cell's settings, and
                       each site's predictions file gathered from its own workspace (simulation: all local)
jobs/<cell>/           the generated job;  runs/<cell>/ its simulator workspace;  runs/<cell>.log its log
data/, features/       synthetic datasets / manifests and feature caches, shared by the cells that can share
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ...algorithms import CENTRALIZED  # noqa: F401  the column of one site holding all the data

EXPERIMENT_FILE = "experiment.json"
CELLS_DIR = "cells"
CELL_FORMAT = 1
POOLED = "pooled"  # the partition label of centralized cells


def cell_path(out: Path, name: str) -> Path:
    return out / CELLS_DIR / f"{name}.json"


def finished(record: dict[str, Any]) -> bool:
    """A cell whose run finished: the report shows it, a rerun skips it."""
    return record.get("returncode") == 0 and (record.get("results") or {}).get("status") == "finished"


def is_finished(path: Path) -> bool:
    try:
        return finished(json.loads(path.read_text()))
    except (OSError, ValueError):
        return False


def is_experiment(folder: str | Path) -> bool:
    folder = Path(folder)
    return (folder / EXPERIMENT_FILE).is_file() or (folder / CELLS_DIR).is_dir()
