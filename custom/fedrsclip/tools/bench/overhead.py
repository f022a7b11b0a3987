"""FLARE's overhead: the share of a round not spent at the sites, from a simulator run's results file."""

from __future__ import annotations

import contextlib
import io
import statistics
import time
from pathlib import Path

from ...flare.job import JobSpec
from ...results_file import SIMULATOR_RESULTS, load_results
from ..demo import run_demo
from .common import progress
from .upload import upload_from_audits


def overhead_from_results(results: dict) -> dict:
    """The share of round wall time not spent in local training, from a run's `fedrsclip_results.json`.

    Per round: wall = finished - started (server clock); local = the slowest site's task seconds (evaluating the
    received model + training: the sites run in parallel, so the slowest one is the round's critical path). The
    first round also builds every site (backbone, data, features) outside the task's seconds, so it is left out
    when later rounds exist. Returns the median over the rounds used, plus the same with training seconds only.
    """
    rounds = [
        r
        for r in results.get("rounds", [])
        if isinstance(r.get("started"), (int, float)) and isinstance(r.get("finished"), (int, float)) and r.get("sites")
    ]
    if not rounds:
        return {"flare_overhead_fraction": None, "flare_overhead_note": "the results file has no finished round"}
    used = [r for r in rounds if r["round"] != 1] or rounds
    fractions, train_fractions, walls, locals_ = [], [], [], []
    for rnd in used:
        wall = float(rnd["finished"]) - float(rnd["started"])
        sites = [
            s for s in rnd["sites"].values() if not s.get("missing") and isinstance(s.get("seconds"), (int, float))
        ]
        if wall <= 0 or not sites:
            continue
        local = max(float(s["seconds"]) for s in sites)
        train = max(float(s.get("train_seconds", s["seconds"])) for s in sites)
        walls.append(wall)
        locals_.append(local)
        fractions.append(max(0.0, 1.0 - local / wall))
        train_fractions.append(max(0.0, 1.0 - train / wall))
    if not fractions:
        return {"flare_overhead_fraction": None, "flare_overhead_note": "no round with site timings"}
    note = (
        f"median over rounds {[r['round'] for r in used]} of 1 - (slowest site's task seconds) / (round wall "
        "time)"
        + (
            "; round 1 includes site start-up and is left out"
            if len(used) < len(rounds)
            else "; only round 1 available: includes site start-up"
        )
    )
    return {
        "flare_overhead_fraction": statistics.median(fractions),
        "flare_overhead_fraction_train_only": statistics.median(train_fractions),
        "flare_round_wall_s": statistics.median(walls),
        "flare_site_seconds_max": statistics.median(locals_),
        "flare_overhead_s_per_round": statistics.median(w - t for w, t in zip(walls, locals_)),
        "flare_rounds_used": [r["round"] for r in used],
        "flare_overhead_note": note,
    }


class _DemoLines(io.TextIOBase):
    """stdout for the demo: its progress lines go to stderr, its table is dropped (the bench prints its own)."""

    def __init__(self):
        self._buf = ""

    def write(self, text: str) -> int:
        self._buf += text
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            if line.startswith("[demo]"):
                progress(f"FLARE: {line[7:]}")
        return len(text)


def bench_flare_overhead(
    sites: int, rounds: int, workdir: Path, arch: str | None = None, threads: int | None = None
) -> dict:
    """Run the FLARE job (the offline demo's, with an upload audit on every site) in the simulator; compute FLARE's
    overhead from its results file and the real upload from the audits.

    arch: None runs the job's own model (its offline demo: a small random-weight CLIP on synthetic scenes); a
    name (e.g. ViT-B-16, random weights) makes every site load that model - 10 ViT-B/16 sites need ~20 GB of RAM.
    threads: simulator threads (default: one per site).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    workspace = workdir / "flare-ws"
    overrides = [f"model.arch={arch}", "model.pretrained=null", "model.random_init=true"] if arch else []
    model = f"{arch} (random weights)" if arch else f"{JobSpec().config().model.arch} (the demo's random weights)"
    progress(f"FLARE: simulator job, {sites} sites, {rounds} rounds, {model}; this takes minutes")
    start = time.perf_counter()
    with contextlib.redirect_stdout(_DemoLines()):
        rc = run_demo(
            str(workspace),
            sites=sites,
            threads=threads,
            rounds=rounds,
            overrides=overrides,
            log_file=str(workdir / "flare-ws.log"),
            audit=True,
        )
    wall = time.perf_counter() - start
    try:
        results = load_results(workspace / SIMULATOR_RESULTS)
    except (OSError, ValueError) as exc:
        return {
            "flare_overhead_fraction": None,
            "flare_overhead_note": f"the simulator run (exit {rc}) left no results file: {exc}",
        }
    out = overhead_from_results(results)
    out.update(
        flare_sites=sites,
        flare_rounds=rounds,
        flare_threads=threads or sites,
        flare_job_wall_s=wall,
        flare_exit_code=rc,
        flare_model=f"{model}, the job's own data settings",
    )
    if rc != 0:
        out["flare_overhead_note"] = f"the simulator exited with {rc}; " + out.get("flare_overhead_note", "")
    out.update(upload_from_audits(workspace))
    return out


def realistic_overhead(flare: dict, site_round_s: float | None) -> dict:
    """FLARE's share of a round whose local work is a real site's: FLARE's seconds per round (measured in the
    simulator job) against one ViT-B/16 site's round (measured in this process)."""
    overhead = flare.get("flare_overhead_s_per_round")
    if overhead is None or not site_round_s:
        return {}
    return {
        "flare_overhead_fraction_demo_job": flare.get("flare_overhead_fraction"),
        "flare_overhead_fraction": overhead / (overhead + site_round_s),
        "flare_overhead_how": (
            f"FLARE's seconds per round in the {flare.get('flare_sites')}-site simulator job (round wall time - "
            f"the slowest site's task seconds, median of the rounds after the first: {overhead:.2f} s) / (those "
            f"+ one ViT-B/16 site's round measured here: {site_round_s:.2f} s); the demo job's own fraction, "
            "with its tiny model, is flare_overhead_fraction_demo_job"
        ),
    }
