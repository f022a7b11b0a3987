"""The results file of a run, one format for both runners: `fedrsclip_results.json`.

The FLARE server writes it (`fedrsclip.flare.results.ResultsCollector`, in the server's app folder), and so does
the in-process runner (`fedrsclip run --out`). `ResultsBook` builds it from the sites' round records:

    {"format": 1, "runner": "flare" | "in-process", "algorithm", "backbone", "data", "status", "num_rounds",
     "sites": [...],
     "initial": {"sites": {site: evaluation}, "mean_accuracy", "weighted_accuracy"},
     "rounds": [{"round": r, "sites": {site: {evaluation of the global model after round r (with the site's
                 private prompt), samples_train, seconds, timings, bytes_up, bytes_down, training metrics} or
                 {"missing": true, "kind", "error"}}, "missing": [...], "mean_accuracy", "weighted_accuracy"}],
     "final": {"sites": {...}, ..., "modalities": {modality: {"sites": {site: evaluation}, "mean_...",
               "weighted_..."}} (multi-modal federations: the final model on one modality only)},
     "best": {"round", "weighted_accuracy" (multi-label: "weighted_micro_f1"), "selected_by"} | null,
     "errors": [{"site", "task", "round", "kind", "error"}],
     "warnings": [{"kind", "round", "message", ...}] (only when there is one)}

An evaluation is `protocol.EVALUATION_KEYS` (accuracy, loss, samples; more metrics go into the same entries); a
multi-label one adds `protocol.MULTILABEL_KEYS` (micro_f1, macro_f1, mAP; accuracy is null), and the summaries their
mean_ and weighted_ forms: the overall row is the test-sample-weighted mean of the sites' rows (a FLARE server
never sees a site's predictions).
Row r's evaluation is measured when a site receives the model after round r: at the start of round r+1 (it
travels in that round's record, `RoundRecord.received`), or at the final evaluation for the last round.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Mapping

from .protocol import EVALUATION_KEYS, MULTILABEL_KEYS, FinalRecord, RoundRecord, key_metric, site_order, summarize

RESULTS_FILE = "fedrsclip_results.json"
RESULTS_FORMAT = 1
SIMULATOR_RESULTS = Path("server") / "simulate_job" / "app_server" / RESULTS_FILE  # under a simulator workspace

_START_PHASES = ("start", "load", "extract")  # a site process's start-up: its first task only (README: Progress)


def find_results(workspace: str | Path) -> Path:
    """The results file of a run: `workspace` itself if it is the file, the simulator's place under it, else the
    newest `fedrsclip_results.json` below it (a downloaded job result, a POC server workspace)."""
    workspace = Path(workspace).expanduser()
    if workspace.is_file():
        return workspace
    if not workspace.is_dir():
        raise FileNotFoundError(
            f"{workspace} does not exist; give the workspace of a run (the simulator's -w), or a {RESULTS_FILE} file"
        )
    direct = workspace / SIMULATOR_RESULTS
    if direct.is_file():
        return direct
    found = sorted(workspace.rglob(RESULTS_FILE), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(
            f"no {RESULTS_FILE} under {workspace}: the run did not start, or this is not its "
            f"workspace (the simulator writes {SIMULATOR_RESULTS})"
        )
    return found[-1]


def load_results(path: str | Path) -> dict[str, Any]:
    """A results file; ValueError naming the file when it cannot be read or is not one."""
    path = Path(path)
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read the results file {path}: {exc}") from exc
    if not isinstance(results, dict) or not isinstance(results.get("rounds"), list):
        raise ValueError(f"{path} is not a fedrsclip results file (no 'rounds' list)")
    return results


def describe_data(data: Any, manifest_path: str | Path | None, modalities: str | None = None) -> str:
    """The data a run used, as the results file says it (`data`: a config.DataConfig; `modalities`: the sites'
    modalities of synthetic-mm data). Synthetic data is named in capitals, and reports and tables warn about it."""
    if data.source == "synthetic-mm":
        return (
            f"SYNTHETIC multi-modal multi-label scenes ({data.synthetic_scenes} S2/S1 pairs, "
            f"{data.synthetic_size}px, seed {data.synthetic_seed}, {data.synthetic_sites} sites holding "
            f"{modalities}, {data.synthetic_scheme})"
        )
    if data.source == "synthetic":
        return (
            f"SYNTHETIC scenes ({data.synthetic_classes} classes, {data.synthetic_per_class}/class, "
            f"{data.synthetic_size}px, seed {data.synthetic_seed}, {data.synthetic_sites} sites, "
            f"{data.synthetic_scheme})"
        )
    return f"manifest {Path(manifest_path).name}" if manifest_path else "manifest"


def _duration(seconds: float) -> str:
    """ "45s", "12 min", "2.5 h"."""
    if seconds < 90:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _evaluation(values: Mapping[str, Any]) -> dict[str, Any]:
    return {**{k: values.get(k) for k in EVALUATION_KEYS}, **{k: values[k] for k in MULTILABEL_KEYS if k in values}}


def best_entry(after_round: int, value: float, metric: str, selected_by: str) -> dict[str, Any]:
    """The results file's `best`: the round, the weighted mean of `metric` (accuracy, or micro_f1 for multi-label
    runs) and what selected it."""
    return {"round": after_round, f"weighted_{metric}": value, "selected_by": selected_by}


def best_value(best: Mapping[str, Any] | None) -> tuple[str, float] | None:
    """(metric, value) of a results file's `best`, or None."""
    for metric in ("accuracy", "micro_f1"):
        value = (best or {}).get(f"weighted_{metric}")
        if isinstance(value, (int, float)):
            return metric, float(value)
    return None


def _ordered(by_site: Mapping[str, Any]) -> dict:
    return {k: by_site[k] for k in sorted(by_site, key=site_order)}


class ResultsBook:
    """The results of one run as the sites report them; `snapshot()` is the file's content."""

    def __init__(self, runner: str, sites: list[str] | None = None, num_rounds: int | None = None, **info: Any):
        self.head: dict[str, Any] = {"format": RESULTS_FORMAT, "runner": runner, **info, "started": time.time()}
        self.sites: list[str] = sorted(sites or [], key=site_order)
        self.num_rounds = num_rounds
        self.status = "running"
        self.rounds: dict[int, dict] = {}  # 1-based round -> {"round", "sites", "missing", "started", "finished"}
        self.initial: dict[str, dict] = {}
        self.final: dict[str, dict] = {}
        self.best: dict | None = None
        self.errors: list[dict] = []
        self.warnings: list[dict] = []
        self.modalities: dict[str, dict] = {}  # site -> {modality: evaluation of that modality alone}

    # ---- what arrives ----------------------------------------------------------------------------------------------
    def join(self, site: str) -> None:
        if site not in self.sites:
            self.sites = sorted({*self.sites, site}, key=site_order)

    def describe(self, description: Mapping[str, Any] | None, encryption: str | None = None) -> None:
        """The run's algorithm, backbone and data descriptions (the first that arrive are kept)."""
        for key, value in {**(description or {}), **({"encryption": encryption} if encryption else {})}.items():
            self.head.setdefault(key, value)

    def _round(self, rnd: int) -> dict:
        return self.rounds.setdefault(rnd, {"round": rnd, "sites": {}, "missing": {}})

    def round_started(self, rnd: int) -> None:
        self.rounds.setdefault(rnd, {"round": rnd, "sites": {}, "missing": {}, "started": time.time()})

    def add_update(self, site: str, record: RoundRecord) -> None:
        """A site's round: its training entry in round `record.round`, its evaluation of the model it received in
        the round before (the initial model for round 1)."""
        self.join(site)
        self.describe(record.description, record.encryption)
        rnd = record.round
        entry = self._round(rnd)
        entry["sites"].setdefault(site, {}).update(record.results_entry())
        entry["missing"].pop(site, None)
        received = _evaluation(record.received)
        if rnd == 1:
            self.initial[site] = received
        else:
            self._round(rnd - 1)["sites"].setdefault(site, {}).update(received)

    def add_final(self, site: str, record: FinalRecord) -> None:
        self.join(site)
        self.final[site] = {
            **_evaluation(record.received),
            "seconds": record.seconds,
            "final_state": record.final_state,
        }
        if record.modalities:
            self.modalities[site] = {m: _evaluation(v) for m, v in record.modalities.items()}

    def warn(self, entry: Mapping[str, Any]) -> bool:
        """Keep a warning ({"kind", "message", ...}) once: the same kind for the same modality and site is kept at
        its first round. Returns whether it was new."""
        same = ("kind", "modality", "site")
        if any(all(w.get(k) == entry.get(k) for k in same) for w in self.warnings):
            return False
        self.warnings.append(dict(entry))
        return True

    def add_error(self, site: str, task: str, rnd: int | None, kind: str, message: str, train: bool) -> None:
        """A failed task (`train`: a training round, else the final evaluation); the site is missing there."""
        self.join(site)
        self.errors.append({"site": site, "task": task, "round": rnd, "kind": kind, "error": message})
        if train and rnd is not None:
            self._round(rnd)["missing"][site] = {"missing": True, "kind": kind, "error": message}
        elif not train:
            self.final[site] = {"missing": True, "kind": kind, "error": message}

    def reject(self, site: str, rnd: int | None, task: str, reason: str) -> None:
        """The gate refused a site's update: it does not count in that round."""
        if isinstance(rnd, int):
            self.rounds.get(rnd, {}).get("sites", {}).pop(site, None)
        self.add_error(site, task, rnd, "rejected", reason, train=True)

    def mark_absent(self, rnd: int) -> None:
        """Every site without an entry in round `rnd` is missing from it."""
        record = self._round(rnd)
        for site in self.sites:
            if site not in record["sites"] and site not in record["missing"]:
                record["missing"][site] = {
                    "missing": True,
                    "kind": "no_result",
                    "error": "no result from this site in this round",
                }

    def round_done(self, rnd: int) -> dict:
        self.mark_absent(rnd)
        record = self._round(rnd)
        record["finished"] = time.time()
        return record

    def progress_line(self, rnd: int) -> str:
        """One line after round `rnd`: its wall time, the sites that answered, the slowest site's phases, the
        latest mean accuracy or micro F1 (the model received in this round: after round rnd - 1) and the time left
        (estimated from the rounds after the first, which also starts the sites, or from the first alone less the
        slowest site's start-up phases)."""
        record = self.rounds.get(rnd, {})
        done = {r: v["finished"] - v["started"] for r, v in self.rounds.items() if "finished" in v and "started" in v}
        text = f"round {rnd}/{self.num_rounds or '?'} done" + (f" in {done[rnd]:.1f}s" if rnd in done else "")
        answered = [s for s, v in record.get("sites", {}).items() if not v.get("missing")]
        text += f": {len(answered)}/{len(self.sites)} sites"
        timed = [
            (v.get("seconds") or 0.0, s, v.get("timings") or {})
            for s, v in record.get("sites", {}).items()
            if not v.get("missing")
        ]
        if timed:
            seconds, site, timings = max(timed, key=lambda t: t[0])
            phases = ", ".join(f"{k} {v:.1f}" for k, v in timings.items() if isinstance(v, (int, float)))
            text += f"; slowest {site} {seconds:.1f}s" + (f" ({phases})" if phases else "")
        previous = (
            summarize(self.initial)
            if rnd == 1
            else summarize(
                {s: v for s, v in self.rounds.get(rnd - 1, {}).get("sites", {}).items() if not v.get("missing")}
            )
        )
        for key, name in (("mean_accuracy", "accuracy"), ("mean_micro_f1", "micro F1")):  # micro F1: label sets
            if previous.get(key) is not None:
                text += f"; mean {name} {previous[key]:.1f}% " + (
                    "of the initial model" if rnd == 1 else f"after round {rnd - 1}"
                )
        left = (self.num_rounds or 0) - rnd
        later = [d for r, d in done.items() if r > min(done)] if done else []
        per_round = (sum(later) / len(later)) if later else done.get(rnd)
        if not later and per_round is not None and timed:
            # only the first round so far: it also started the sites, which later rounds do not repeat
            per_round = max(per_round - max(sum(t.get(k) or 0.0 for k in _START_PHASES) for _, _, t in timed), 0.0)
        if left > 0 and per_round is not None:
            text += f"; about {_duration(left * per_round)} left for {left} round{'s' * (left != 1)}"
        return text

    def open_rounds(self) -> list[int]:
        return [r for r, v in self.rounds.items() if "finished" not in v]

    def finish(self) -> str:
        """The run's status at its end: finished when its last round was done (a resumed run starts after the
        earlier run's rounds), else incomplete (unless failed)."""
        if self.status == "running":
            done = [r for r, v in self.rounds.items() if "finished" in v]
            self.status = "finished" if max(done, default=0) >= (self.num_rounds or 0) else "incomplete"
        self.head["ended"] = time.time()
        return self.status

    def final_best(self) -> tuple[int, float] | None:
        """(round, weighted accuracy; micro F1 for multi-label runs) of the final model when it beats the best so
        far: the in-time choice never sees the last round's model. Weighted by the last round's training samples,
        as the in-time choice."""
        final_sites = {s: r for s, r in self.final.items() if not r.get("missing")}
        if not final_sites or not self.rounds:
            return None
        metric = key_metric(next(iter(final_sites.values())))
        last = self.rounds.get(max(self.rounds), {}).get("sites", {})
        weights = {s: (last.get(s, {}).get("samples_train") or 0) for s in final_sites}
        accs = {s: r[metric] for s, r in final_sites.items() if isinstance(r.get(metric), (int, float))}
        total = sum(weights[s] for s in accs)
        if not accs or total <= 0:
            return None
        value = sum(accs[s] * weights[s] for s in accs) / total
        best = best_value(self.best)
        if best is not None and value <= best[1]:
            return None
        finished = [r for r, v in self.rounds.items() if "finished" in v]
        return (max(finished) if finished else max(self.rounds)), value

    def consider_best(self, after_round: int, value: float | None, selected_by: str, metric: str = "accuracy") -> None:
        """Keep (after_round, value of `metric`) as the best model when it beats the best so far."""
        best = best_value(self.best)
        if value is not None and (best is None or value > best[1]):
            self.best = best_entry(after_round, value, metric, selected_by)

    # ---- the file --------------------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        rounds = []
        for rnd in sorted(self.rounds):
            src = self.rounds[rnd]
            sites = {s: dict(v) for s, v in src["sites"].items()}
            for s, v in src["missing"].items():
                sites[s] = {**sites.get(s, {}), **v}
            if rnd == max(self.rounds) and self.final:  # the last round's model, evaluated at the final evaluation
                for s, v in self.final.items():
                    if not v.get("missing"):
                        sites.setdefault(s, {}).update(_evaluation(v))
            present = {s: v for s, v in sites.items() if not v.get("missing")}
            rounds.append(
                {
                    "round": rnd,
                    "sites": _ordered(sites),
                    "missing": sorted(src["missing"], key=site_order),
                    **summarize(present),
                    **{k: v for k, v in src.items() if k not in ("round", "sites", "missing")},
                }
            )
        present = {s: v for s, v in self.final.items() if not v.get("missing")}
        final = {"sites": _ordered(self.final), **summarize(present)}
        if self.modalities:
            by_modality: dict[str, dict] = {}
            for site, rows in self.modalities.items():
                for modality, row in rows.items():
                    by_modality.setdefault(modality, {})[site] = row
            final["modalities"] = {m: {"sites": _ordered(rows), **summarize(rows)} for m, rows in by_modality.items()}
        out = {
            **self.head,
            "status": self.status,
            "num_rounds": self.num_rounds,
            "sites": self.sites,
            "initial": {"sites": _ordered(self.initial), **summarize(self.initial)},
            "rounds": rounds,
            "final": final,
            "best": self.best,
            "errors": self.errors,
        }
        if self.warnings:
            out["warnings"] = list(self.warnings)
        return out
