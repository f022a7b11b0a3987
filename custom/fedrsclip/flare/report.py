"""Read a FLARE run's results file and print the per-round, per-site accuracy table."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Mapping

RESULTS_FILE = "fedrsclip_results.json"  # written by fedrsclip.flare.results.ResultsCollector
SIMULATOR_RESULTS = Path("server") / "simulate_job" / "app_server" / RESULTS_FILE
CAVEAT = "synthetic data, RANDOM-weight CLIP — not meaningful accuracy"


def site_order(name: str) -> tuple:
    """site-2 before site-10."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name))


def find_results(workspace: str | Path) -> Path:
    """The results file of a run: `workspace` itself if it is the file, the simulator's place under it, else the
    newest `fedrsclip_results.json` below it (a downloaded job result, a POC server workspace)."""
    workspace = Path(workspace).expanduser()
    if workspace.is_file():
        return workspace
    if not workspace.is_dir():
        raise FileNotFoundError(f"{workspace} does not exist; give the simulator workspace (-w) of a run, or a "
                                f"{RESULTS_FILE} file")
    direct = workspace / SIMULATOR_RESULTS
    if direct.is_file():
        return direct
    found = sorted(workspace.rglob(RESULTS_FILE), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no {RESULTS_FILE} under {workspace}: the run did not start, or this is not its "
                                "workspace (the simulator writes server/simulate_job/app_server/" + RESULTS_FILE + ")")
    return found[-1]


def load_results(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read the results file {path}: {exc}") from exc
    if not isinstance(results, dict) or not isinstance(results.get("rounds"), list):
        raise ValueError(f"{path} is not a fedrsclip results file (no 'rounds' list)")
    return results


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _cell(record: Mapping[str, Any] | None) -> str:
    if not record:
        return "-"
    if record.get("missing"):
        return "miss"
    acc = _num(record.get("accuracy"))
    return f"{acc:.1f}" if acc is not None else "?"


def caveat(results: Mapping[str, Any]) -> str | None:
    """The warning a run on synthetic data and/or a random-weight CLIP needs, or None."""
    synthetic = "SYNTHETIC" in str(results.get("data", "")).upper()
    random = "RANDOM" in str(results.get("backbone", "")).upper()
    if synthetic and random:
        return CAVEAT
    if synthetic:
        return "synthetic data — not meaningful accuracy"
    if random:
        return "RANDOM-weight CLIP — not meaningful accuracy"
    return None


def format_table(results: Mapping[str, Any]) -> str:
    """Accuracy (%) per round (rows) and site (columns), with the mean and the test-sample-weighted mean.

    Row `r` is the global model after round r, evaluated on each site's own test split with that site's private
    prompt; `init` is the starting model. "miss" marks a site with no training result in that round.
    """
    rounds = results.get("rounds", [])
    sites = list(results.get("sites") or sorted({s for r in rounds for s in r.get("sites", {})}, key=site_order))
    rows: list[tuple[str, list[str], float | None, float | None]] = []
    initial = results.get("initial") or {}
    if initial.get("sites"):
        rows.append(("init", [_cell(initial["sites"].get(s)) for s in sites],
                     _num(initial.get("mean_accuracy")), _num(initial.get("weighted_accuracy"))))
    for record in rounds:
        rows.append((str(record.get("round")), [_cell(record.get("sites", {}).get(s)) for s in sites],
                     _num(record.get("mean_accuracy")), _num(record.get("weighted_accuracy"))))
    header = ["round", *sites, "mean", "weighted"]
    body = [[name, *cells, "-" if m is None else f"{m:.1f}", "-" if w is None else f"{w:.1f}"]
            for name, cells, m, w in rows]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    title = f"FedRSCLIP on FLARE: {results.get('algorithm', '?')}, {len(sites)} sites, " \
            f"{len(rounds)}/{results.get('num_rounds') or len(rounds)} rounds, status {results.get('status', '?')}"
    out = []
    note = caveat(results)
    if note:
        out.append(f"*** {note} ***")
    out += [title]
    for key in ("backbone", "data"):
        if results.get(key):
            out.append(f"{key}: {results[key]}")
    out += ["accuracy (%) of the global model after each round on each site's own test split (dual-prompt "
            "algorithms: with the site's private prompt)", line(header), line(["-" * w for w in widths]), *(line(r) for r in body)]
    cells = {c for _, row, _, _ in rows for c in row}
    if "miss" in cells or "?" in cells:
        out.append("miss: no result from the site in that round; ?: not measured (the site's next task failed)")
    best = results.get("best")
    if isinstance(best, Mapping) and _num(best.get("weighted_accuracy")) is not None:
        out.append(f"best: after round {best.get('round')}, weighted accuracy {best['weighted_accuracy']:.1f}% "
                   f"({best.get('selected_by', '')})")
    bytes_up = [v.get("bytes_up") for r in rounds for v in r.get("sites", {}).values()
                if isinstance(v.get("bytes_up"), int)]
    plain = [v.get("bytes_up_plain") for r in rounds for v in r.get("sites", {}).values()
             if isinstance(v.get("bytes_up_plain"), int)]
    if bytes_up:
        out.append(f"sent per site and round: {max(bytes_up):,} bytes up"
                   + (f" (CKKS ciphertext of {max(plain):,} bytes of values)" if plain else ""))
    errors = results.get("errors") or []
    if errors:
        out.append(f"{len(errors)} failed task(s):")
        for err in errors[:20]:
            where = f"round {err['round']} " if err.get("round") else ""
            out.append(f"  {where}{err.get('site')} [{err.get('kind')}]: {err.get('error')}")
        if len(errors) > 20:
            out.append(f"  ... and {len(errors) - 20} more in the results file")
    if note:
        out.append(f"*** {note} ***")
    return "\n".join(out)


def report_command(workspace: str | Path) -> int:
    """An experiment folder (`fedrsclip experiment --out`): write its report.md and figures, print the report;
    0, or 1 when it has no finished cell. Otherwise print the table of the run in `workspace`. 0: a finished run;
    2: the run failed or is incomplete; 1: no readable results file."""
    from ..reporting.cells import is_experiment

    if is_experiment(workspace):
        from ..reporting import write_report

        try:
            path = write_report(workspace)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(path.read_text(encoding="utf-8"))
        print(f"report: {path} (figures next to it)")
        return 0
    try:
        path = find_results(workspace)
        results = load_results(path)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_table(results))
    print(f"results file: {path}")
    return 0 if results.get("status") == "finished" else 2
