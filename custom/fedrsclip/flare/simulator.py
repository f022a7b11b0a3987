"""FLARE's simulator as this package runs it: the command line, the check that its workspace holds nothing the
simulator would delete that it did not make, and where a task's time goes when each task has its own worker."""

from __future__ import annotations

import re
import statistics
import sys
from datetime import datetime
from pathlib import Path
from typing import Any


def simulator_command(
    job: str | Path, workspace: str | Path, sites: int, threads: int, portable: bool = False
) -> list[str]:
    """FLARE's simulator in this Python environment, run as FLARE's SimEnv runs it (its module: the `nvflare
    simulator` command prints a deprecation notice in favour of SimEnv); `portable`: `nvflare simulator` as a user
    types it. The simulator empties `workspace` (but startup/ and local/): it must never be the job folder or hold
    it."""
    base = (
        ["nvflare", "simulator"] if portable else [sys.executable, "-m", "nvflare.private.fed.app.simulator.simulator"]
    )
    return [*base, str(job), "-w", str(workspace), "-n", str(sites), "-t", str(threads)]


SIMULATOR_ENTRIES = re.compile(r"^(server|startup|local|site-\d+)$")  # what the simulator keeps in its workspace


def check_workspace(ws: Path) -> None:
    """The simulator empties its workspace (all but startup/ and local/): refuse one that holds anything else than
    an earlier simulator run's folders, so no user file is deleted (ValueError says what is in the way)."""
    if not ws.exists():
        return
    if not ws.is_dir():
        raise ValueError(f"the workspace {ws} is a file; choose a new folder")
    other = sorted(p.name for p in ws.iterdir() if not SIMULATOR_ENTRIES.match(p.name))
    if other:
        raise ValueError(
            f"the workspace {ws} holds {', '.join(other[:5])}, which is not a simulator workspace's: "
            "the simulator would delete it. Choose a new or empty folder (or an earlier run's workspace)"
        )


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


def last_error_line(log: Path, limit: int = 300) -> str:
    """The last line of a simulator log that reports an error (FLARE's `ERROR` lines, a Python `...Error:`), at most
    `limit` characters; "" when there is none or the log cannot be read."""
    try:
        text = Path(log).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    lines = [line for line in text.splitlines() if re.search(r"ERROR|Error|error:", line)]
    return lines[-1].strip()[-limit:] if lines else ""
