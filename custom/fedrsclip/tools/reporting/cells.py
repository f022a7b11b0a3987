"""Reading an experiment folder: its grid (experiment.json) and one results record per cell (cells/*.json)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

from ..experiments.layout import CELLS_DIR, CENTRALIZED, EXPERIMENT_FILE, finished

Record = dict[str, Any]


def load_experiment(folder: str | Path) -> tuple[dict[str, Any], list[Record]]:
    """The grid settings and every finished cell's record (unfinished ones are left out of the report)."""
    folder = Path(folder)
    try:
        grid = json.loads((folder / EXPERIMENT_FILE).read_text()) if (folder / EXPERIMENT_FILE).is_file() else {}
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {folder / EXPERIMENT_FILE}: {exc}") from exc
    records = []
    for path in sorted((folder / CELLS_DIR).glob("*.json")):
        try:
            record = json.loads(path.read_text())
            record["cell"]["algorithm"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f"{path} is not a fedrsclip experiment cell ({exc}); delete it and rerun "
                "fedrsclip experiment to redo that cell"
            ) from exc
        record["path"] = str(path)
        records.append(record)
    if not any(finished(r) for r in records):
        raise ValueError(f"no finished cell in {folder / CELLS_DIR}: run fedrsclip experiment --out {folder} first")
    return grid, records


def number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def final_accuracy(record: Record, metric: str = "accuracy") -> float | None:
    """The final global model's accuracy (or another `metric` of protocol.EVALUATION_NAMES: micro_f1, macro_f1, mAP
    for multi-label scenes), each site on its own test split (with its private prompt), weighted by test samples;
    the last round's when the final evaluation is missing."""
    results = record.get("results") or {}
    value = number((results.get("final") or {}).get(f"weighted_{metric}"))
    if value is None and results.get("rounds"):
        value = number(results["rounds"][-1].get(f"weighted_{metric}"))
    return value


def multi_label(records: Iterable[Record]) -> bool:
    """True when the cells' runs are multi-label (micro F1 instead of accuracy)."""
    return any(final_accuracy(r, "micro_f1") is not None for r in records)


def column_key(column: str) -> tuple[int, int]:
    return (0, 0) if column == CENTRALIZED else (1, int(column))


def columns(records: Iterable[Record]) -> list[str]:
    return sorted({r["cell"]["column"] for r in records}, key=column_key)


def select(records: Iterable[Record], **where: Any) -> list[Record]:
    """The finished records whose cell has every `where` value (variant: "" matches cells without one)."""
    return [
        r
        for r in records
        if finished(r) and all((r["cell"].get(k) or ("" if k == "variant" else None)) == v for k, v in where.items())
    ]
