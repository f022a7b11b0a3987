"""The offline demo: the FLARE job run by the real `nvflare simulator` (a subprocess), then the accuracy table.

The job's defaults need nothing downloaded or prepared: a small CLIP with random weights, synthetic scenes that
every site generates in its own workspace. Accuracy on them is not meaningful; the demo shows the federation runs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from ..flare.he.context import prepare_simulator_contexts
from ..flare.job import JobSpec, write_job
from ..flare.simulator import check_workspace, last_error_line, simulator_command
from ..results_file import SIMULATOR_RESULTS, load_results
from .reporting.run_table import format_table

# What the demo relays from the simulator's output: the server's line after each round (fedrsclip.flare.results:
# wall time, slowest site by phase, accuracy, time left), each site's line when it is ready (process start, weights,
# image features) and the features' progress while a site extracts them; failures.
_RELAYED = re.compile(r" - ((?:round \d+/\d+ done|site-\d+: ready after|\S+ features: \d+(?:/\d+)? images ).*)")
_SITE_FAILED = re.compile(r"ERROR - task \S+ .*failed at (\S+) \((\S+)\): (.*)")
_FATAL = re.compile(r"ERROR - .*(FATAL_SYSTEM_ERROR.*)")


def _progress(line: str, shown: set) -> None:
    """Print what the user should see of one line of the simulator's output (`_RELAYED`, failures once each)."""
    match = _RELAYED.search(line)
    if match:
        print(f"[demo] {match.group(1)[:400]}", flush=True)
        return
    for pattern in (_SITE_FAILED, _FATAL):
        match = pattern.search(line)
        if match and match.group(0) not in shown:
            shown.add(match.group(0))
            print(f"[demo] {match.group(0).split(' - ', 1)[-1][:400]}", flush=True)
            return


def run_demo(
    workspace: str,
    sites: int = 10,
    threads: int | None = None,
    *,
    rounds: int | None = None,
    overrides: Sequence[str] = (),
    log_file: str | None = None,
    he: bool = False,
    audit: bool = False,
    modalities: str | None = None,
) -> int:
    """Run the job (`fedrsclip.flare.job`, the offline demo settings) in the FLARE simulator with `sites` sites and
    print the per-round, per-site accuracy table.

    workspace: the simulator workspace (emptied by the simulator, except startup/ and local/).
    threads: simulator threads (default: one per site, so each site keeps its process; fewer threads start a
        fresh process per task and take longer, with the same results).
    rounds / overrides: change the job's num_rounds or fedrsclip settings (e.g. ["train.lr=0.01"]) for this run.
    log_file: where the simulator's full output goes (default: <workspace>.log next to the workspace).
    he: the CKKS variant of the job; the workspace's HE contexts are made when missing (kept when present).
    audit: an upload audit widget at every site (fedrsclip bench).
    modalities: a multi-modal federation on synthetic S2/S1 scenes ("s2,s1": what each site holds; the table is then
        micro F1 per site).
    Returns 0 when the run finished and produced its results; the simulator's exit code or 1 otherwise.
    """
    if sites < 1:
        print("error: --sites must be at least 1", file=sys.stderr)
        return 1
    if threads is not None and threads > sites:  # the simulator would stop with the reason only in its log
        print(
            f"error: --threads {threads} is more than --sites {sites}: the simulator runs at most one thread per "
            f"site; give --threads {sites} or fewer",
            file=sys.stderr,
        )
        return 1
    threads = threads or sites
    ws = Path(workspace).expanduser().resolve()
    try:
        check_workspace(ws)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    log_path = Path(log_file) if log_file else ws.with_name(ws.name + ".log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="fedrsclip-job-"))
    try:
        spec = JobSpec(
            sites=sites, rounds=rounds, overrides=tuple(overrides), he=he, audit=audit, modalities=modalities
        )
        run_job = write_job(spec, tmp / spec.name)
        num_rounds = spec.total_rounds()
        if he:
            startup, made = prepare_simulator_contexts(ws)
            print(f"[demo] CKKS-encrypted updates; HE contexts {'made' if made else 'kept'} in {startup}", flush=True)
        cmd = simulator_command(run_job, ws, sites, threads)
        print(
            f"[demo] nvflare simulator: {sites} sites, {num_rounds} rounds, {threads} threads; workspace {ws}; "
            f"full log {log_path}",
            flush=True,
        )
        print(
            f"[demo] round 1 starts the {sites} site processes: each loads its CLIP and extracts its image "
            "features first (the longest part of the run); a line per site when it is ready",
            flush=True,
        )
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.setdefault("HF_HUB_OFFLINE", "1")  # the demo never downloads
        start = time.time()
        shown: set[str] = set()
        with (
            open(log_path, "w", encoding="utf-8") as log,
            subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, errors="replace"
            ) as proc,
        ):
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                _progress(line, shown)
            rc = proc.wait()
        print(f"[demo] simulator exited with code {rc} after {time.time() - start:.0f}s", flush=True)
    except KeyboardInterrupt:
        print("[demo] interrupted", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    try:
        results = load_results(ws / SIMULATOR_RESULTS)
    except (OSError, ValueError) as exc:
        error = last_error_line(log_path) if rc != 0 else ""
        print(f"error: the run left no results ({exc}){'; ' + error if error else ''}; see {log_path}", file=sys.stderr)
        return rc or 1
    print()
    print(format_table(results))
    print(f"results file: {ws / SIMULATOR_RESULTS}")
    if rc != 0:
        return rc
    return 0 if results.get("status") == "finished" else 1
