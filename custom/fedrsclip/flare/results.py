"""Server side: one machine-readable results file per run, `<server app root>/fedrsclip_results.json`.

Collected from every task result as it arrives (EventType.BEFORE_PROCESS_SUBMISSION, so failed ones too), written
atomically after every round and at the end. Per round and site it holds what the in-process federation records
(fedrsclip.federation): training samples, seconds, bytes up and down, training metrics, and the accuracy/loss on
the site's own test split of the global model after that round (with the site's private prompt) - measured when
the site receives that model: at the next round's train task, or the final GlobalModelEval task for the last round.
A site without a result for a round is marked {"missing": true, "error": ...}; so is a site whose update the
aggregator rejected (kind "rejected", fedrsclip.flare.aggregator), and, when the job stops mid-round, every site
that had not answered yet.

A task that failed because of the job's own fedrsclip configuration (an unknown algorithm, a bad option) is the
same on every site: the collector then stops the job (system_panic) with that message.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from nvflare.apis.dxo import from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType
from nvflare.widgets.widget import Widget

from ..io import atomic_write_json
from .aggregator import CONTRIBUTION_REJECTED, REJECTION_PROP
from .executor import ERROR_HEADER, ERROR_KIND_HEADER, META_KEY, ROUND_HEADER
from .report import RESULTS_FILE, site_order

RESULTS_FORMAT = 1
_EVAL_KEYS = ("accuracy", "loss", "samples")


def _summarize(site_records: dict[str, dict]) -> dict[str, float | None]:
    from ..federation import summarize  # the in-process federation's mean / sample-weighted mean

    usable = {s: r for s, r in site_records.items() if isinstance(r.get("accuracy"), (int, float))
              and math.isfinite(r["accuracy"]) and r.get("samples")}
    out = summarize(usable)
    return {k: (v if math.isfinite(v) else None) for k, v in out.items()}


class ResultsCollector(Widget):
    def __init__(self, results_file: str = RESULTS_FILE, persistor_id: str = "persistor",
                 train_task_name: str = AppConstants.TASK_TRAIN,
                 validate_task_name: str = AppConstants.TASK_VALIDATION):
        super().__init__()
        self.results_file = results_file
        self.persistor_id = persistor_id
        self.train_task_name = train_task_name
        self.validate_task_name = validate_task_name
        self.path: Path | None = None
        self.results: dict[str, Any] = {}
        self.rounds: dict[int, dict] = {}  # 1-based round -> {"sites": {...}, "missing": {...}}
        self.initial: dict[str, dict] = {}
        self.final: dict[str, dict] = {}
        self.best: dict | None = None
        self.errors: list[dict] = []
        self.num_rounds: int | None = None
        self.sites: list[str] = []
        self.status = "running"
        self.model_files = ("FL_global_model.npz", "best_FL_global_model.npz")

    # ---- events -------------------------------------------------------------------------------------------------
    def handle_event(self, event_type: str, fl_ctx: FLContext):
        try:
            if event_type == EventType.START_RUN:
                self._start(fl_ctx)
            elif event_type == AppEventType.ROUND_STARTED:
                self._round_started(fl_ctx)
            elif event_type == EventType.BEFORE_PROCESS_SUBMISSION:
                self._submission(fl_ctx)
            elif event_type == AppEventType.ROUND_DONE:
                self._round_done(fl_ctx)
            elif event_type == CONTRIBUTION_REJECTED:
                self._rejected(fl_ctx.get_prop(REJECTION_PROP) or {})
            elif event_type == AppEventType.GLOBAL_BEST_MODEL_AVAILABLE:
                value = fl_ctx.get_prop(AppConstants.VALIDATION_RESULT)
                self.best = {"round": int(fl_ctx.get_prop(AppConstants.CURRENT_ROUND, 0)),
                             "weighted_accuracy": float(value) if value is not None else None,
                             "selected_by": "IntimeModelSelector (initial_metrics.accuracy)"}
            elif event_type == EventType.FATAL_SYSTEM_ERROR:
                self.status = "failed"
                reason = fl_ctx.get_prop(FLContextKey.EVENT_DATA, "")
                if reason:
                    self.errors.append({"site": "server", "kind": "fatal", "error": str(reason)})
                open_rounds = [r for r, v in self.rounds.items() if "finished" not in v]
                if open_rounds:  # stopped mid-round: whoever had not answered is missing from it
                    self._mark_absent(self.rounds[max(open_rounds)])
                self._write()
            elif event_type == EventType.END_RUN:
                self._end(fl_ctx)
        except Exception:  # bookkeeping must never take the job down
            self.log_exception(fl_ctx, f"results collector: failed to handle {event_type}")

    def _start(self, fl_ctx: FLContext) -> None:
        self.path = Path(fl_ctx.get_prop(FLContextKey.APP_ROOT)) / self.results_file
        self.sites = sorted((c.name for c in fl_ctx.get_engine().get_clients()), key=site_order)
        persistor = fl_ctx.get_engine().get_component(self.persistor_id)
        self.model_files = (getattr(persistor, "model_file", "FL_global_model.npz"),
                            getattr(persistor, "best_model_file", "best_FL_global_model.npz"))
        self.results = {"format": RESULTS_FORMAT, "job_id": fl_ctx.get_job_id(), "started": time.time()}
        self._write()
        self.log_info(fl_ctx, f"results will be written to {self.path}")

    def _round_started(self, fl_ctx: FLContext) -> None:
        rnd = int(fl_ctx.get_prop(AppConstants.CURRENT_ROUND, 0)) + 1
        self.num_rounds = fl_ctx.get_prop(AppConstants.NUM_ROUNDS, self.num_rounds)
        self.rounds.setdefault(rnd, {"round": rnd, "sites": {}, "missing": {}, "started": time.time()})
        for client in fl_ctx.get_engine().get_clients():
            if client.name not in self.sites:
                self.sites = sorted({*self.sites, client.name}, key=site_order)

    def _submission(self, fl_ctx: FLContext) -> None:
        task = fl_ctx.get_prop(FLContextKey.TASK_NAME)
        if task not in (self.train_task_name, self.validate_task_name):
            return
        result = fl_ctx.get_prop(FLContextKey.TASK_RESULT)
        site = fl_ctx.get_peer_context().get_identity_name(default="?")
        if site not in self.sites:
            self.sites = sorted({*self.sites, site}, key=site_order)
        rc = result.get_return_code(ReturnCode.OK)
        header_round = result.get_header(ROUND_HEADER)
        rnd = int(header_round) + 1 if isinstance(header_round, int) else None
        if rnd is None and task == self.train_task_name:
            contribution = result.get_cookie(AppConstants.CONTRIBUTION_ROUND)
            rnd = int(contribution) + 1 if isinstance(contribution, int) else None
        if rc != ReturnCode.OK:
            kind = result.get_header(ERROR_KIND_HEADER) or rc
            message = result.get_header(ERROR_HEADER) or f"the task {task} failed with return code {rc}; see {site}'s log"
            self._record_error(site, task, rnd, kind, message)
            self.log_error(fl_ctx, f"task {task}" + (f" of round {rnd}" if rnd else "") + f" failed at {site} "
                           f"({kind}): {message}")
            if kind == "config":
                self.status = "failed"
                self._write()
                self.system_panic(f"stopping the job, its configuration is wrong: {message}", fl_ctx)
            return
        try:
            dxo = from_shareable(result)
        except ValueError as exc:
            self._record_error(site, task, rnd, "result", f"not a DXO: {exc}")
            return
        record = dxo.get_meta_prop(META_KEY)
        if not isinstance(record, dict):
            self._record_error(site, task, rnd, "result", "the result carries no fedrsclip record")
            return
        for key in ("algorithm", "backbone", "data", "encryption"):
            if key in record:
                self.results.setdefault(key, record[key])
        received = {k: record.get("received", {}).get(k) for k in _EVAL_KEYS}
        if task == self.train_task_name:
            rnd = int(record["round"])
            entry = {"samples_train": record["samples_train"], "seconds": record["seconds"],
                     "bytes_up": record["bytes_up"], "bytes_down": record["bytes_down"], **record.get("metrics", {})}
            if "bytes_up_plain" in record:  # CKKS: bytes_up is the ciphertext, this the values it encrypts
                entry["bytes_up_plain"] = record["bytes_up_plain"]
            if not record.get("state_continued", True):
                entry["state_restarted"] = True
            self.rounds.setdefault(rnd, {"round": rnd, "sites": {}, "missing": {}})["sites"].setdefault(
                site, {}).update(entry)
            self.rounds[rnd]["missing"].pop(site, None)
            if rnd == 1:
                self.initial[site] = received
            else:  # the accuracy of the global model after the previous round
                self.rounds.setdefault(rnd - 1, {"round": rnd - 1, "sites": {}, "missing": {}})["sites"].setdefault(
                    site, {}).update(received)
        else:
            self.final[site] = {**received, "seconds": record.get("seconds"), "final_state": record.get("final_state")}

    def _record_error(self, site: str, task: str, rnd: int | None, kind: str, message: str) -> None:
        self.errors.append({"site": site, "task": task, "round": rnd, "kind": kind, "error": message})
        if task == self.train_task_name and rnd is not None:
            self.rounds.setdefault(rnd, {"round": rnd, "sites": {}, "missing": {}})["missing"][site] = \
                {"missing": True, "kind": kind, "error": message}
        elif task == self.validate_task_name:
            self.final[site] = {"missing": True, "kind": kind, "error": message}

    def _rejected(self, info: dict) -> None:
        """The aggregator refused a site's update: it did not count in that round."""
        site, rnd = info.get("site", "?"), info.get("round")
        if isinstance(rnd, int):
            self.rounds.get(rnd, {}).get("sites", {}).pop(site, None)
        self._record_error(site, self.train_task_name, rnd, "rejected", str(info.get("error")))

    def _mark_absent(self, record: dict) -> None:
        for site in self.sites:
            if site not in record["sites"] and site not in record["missing"]:
                record["missing"][site] = {"missing": True, "kind": "no_result",
                                           "error": "no result from this site in this round"}

    def _round_done(self, fl_ctx: FLContext) -> None:
        rnd = int(fl_ctx.get_prop(AppConstants.CURRENT_ROUND, 0)) + 1
        record = self.rounds.setdefault(rnd, {"round": rnd, "sites": {}, "missing": {}})
        self._mark_absent(record)
        record["finished"] = time.time()
        self._write()
        if self.sites and not record["sites"]:
            # Every site failed: more rounds would only repeat the failure (the global model cannot change).
            self.status = "failed"
            kinds = sorted({v.get("kind", "?") for v in record["missing"].values()})
            first = next(iter(record["missing"].values()), {}).get("error", "")
            self.system_panic(f"stopping the job: no site completed round {rnd} ({', '.join(kinds)}); first error: "
                              f"{first}", fl_ctx)

    def _end(self, fl_ctx: FLContext) -> None:
        if self.status == "running":
            expected = self.num_rounds or 0
            done = [r for r in self.rounds.values() if "finished" in r]
            self.status = "finished" if len(done) >= expected else "incomplete"
        self._maybe_final_best(fl_ctx)
        self.results["ended"] = time.time()
        self._write()
        self.log_info(fl_ctx, f"results ({self.status}) written to {self.path}")

    def _maybe_final_best(self, fl_ctx: FLContext) -> None:
        """The in-time selector never sees the last round's model: compare its final evaluation here."""
        final_sites = {s: r for s, r in self.final.items() if not r.get("missing")}
        if not final_sites or not self.rounds:
            return
        weights = {s: (self.rounds.get(max(self.rounds), {}).get("sites", {}).get(s, {}).get("samples_train") or 0)
                   for s in final_sites}
        accs = {s: r["accuracy"] for s, r in final_sites.items() if isinstance(r.get("accuracy"), (int, float))}
        total = sum(weights[s] for s in accs)
        if not accs or total <= 0:
            return
        value = sum(accs[s] * weights[s] for s in accs) / total
        if self.best is None or self.best.get("weighted_accuracy") is None or value > self.best["weighted_accuracy"]:
            persistor = fl_ctx.get_engine().get_component(self.persistor_id)
            after = max(r for r, v in self.rounds.items() if "finished" in v) if any(
                "finished" in v for v in self.rounds.values()) else max(self.rounds)
            if persistor is not None and hasattr(persistor, "save_best") and getattr(persistor, "weights", None):
                persistor.save_best(fl_ctx, dict(persistor.weights), after, value)
            self.best = {"round": after, "weighted_accuracy": value,
                         "selected_by": "final evaluation (GlobalModelEval)"}

    # ---- the file -------------------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        rounds = []
        for rnd in sorted(self.rounds):
            src = self.rounds[rnd]
            sites = {s: dict(v) for s, v in src["sites"].items()}
            for s, v in src["missing"].items():
                sites[s] = {**sites.get(s, {}), **v}
            if rnd == max(self.rounds) and self.final:  # the last round's model, evaluated by GlobalModelEval
                for s, v in self.final.items():
                    if not v.get("missing"):
                        sites.setdefault(s, {}).update({k: v.get(k) for k in _EVAL_KEYS})
            present = {s: v for s, v in sites.items() if not v.get("missing")}
            rounds.append({"round": rnd, "sites": _ordered(sites), "missing": sorted(src["missing"], key=site_order),
                           **_summarize(present),
                           **{k: src[k] for k in ("started", "finished") if k in src}})
        out = {**self.results, "status": self.status, "num_rounds": self.num_rounds, "sites": self.sites,
               "initial": {"sites": _ordered(self.initial), **_summarize(self.initial)},
               "rounds": rounds,
               "final": {"sites": _ordered(self.final),
                         **_summarize({s: v for s, v in self.final.items() if not v.get("missing")})},
               "best": self.best, "errors": self.errors}
        if self.path is not None:
            # file names next to this results file: valid on the server and in a downloaded job result
            out["global_model"] = self.model_files[0]
            out["best_model"] = self.model_files[1] if self.best else None
        return _jsonable(out)

    def _write(self) -> None:
        if self.path is not None:
            atomic_write_json(self.path, self.snapshot())


def _ordered(by_site: dict) -> dict:
    return {k: by_site[k] for k in sorted(by_site, key=site_order)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _jsonable(value.item())
    return value
