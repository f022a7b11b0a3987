"""FLARE's simulator as this package runs it: the command line, and the check that its workspace holds nothing the
simulator would delete that it did not make."""

from __future__ import annotations

import re
import sys
from pathlib import Path


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


def last_error_line(log: Path, limit: int = 300) -> str:
    """The last line of a simulator log that reports an error (FLARE's `ERROR` lines, a Python `...Error:`), at most
    `limit` characters; "" when there is none or the log cannot be read."""
    try:
        text = Path(log).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    lines = [line for line in text.splitlines() if re.search(r"ERROR|Error|error:", line)]
    return lines[-1].strip()[-limit:] if lines else ""
