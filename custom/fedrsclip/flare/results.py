"""Server side: one machine-readable results file per run, `<server app root>/fedrsclip_results.json`, in the format
both runners write (`fedrsclip.results_file`).

Collected from every task result as it arrives (EventType.BEFORE_PROCESS_SUBMISSION, so failed ones too), written
atomically after every round and at the end. A site without a result for a round is marked {"missing": true,
"error": ...}; so is a site whose update the aggregator rejected (kind "rejected", fedrsclip.flare.aggregator), and,
when the job stops mid-round, every site that had not answered yet.

The job is stopped (system_panic) with a message that names what to change when:
- a task failed because of the job's own fedrsclip configuration (an unknown algorithm, a bad option): it is the
  same on every site;
- the number of sites that joined is not the number the job was made for (`sites`: its data is partitioned over
  that many sites; with min_clients below it, between min_clients and `sites` may join);
- every site failed a round: more rounds would only repeat the failure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nvflare.apis.dxo import from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType
from nvflare.widgets.widget import Widget

from ..atomic import atomic_write_json
from ..protocol import ContributionError, FinalRecord, RoundRecord, key_metric
from ..results_file import RESULTS_FILE, ResultsBook, best_entry
from .constants import (
    BEST_MODEL_FILE,
    CONTRIBUTION_REJECTED,
    ERROR_HEADER,
    ERROR_KIND_HEADER,
    GLOBAL_MODEL_FILE,
    GROUP_WARNING,
    META_KEY,
    REJECTION_PROP,
    ROUND_HEADER,
    TASK_TRAIN,
    TASK_VALIDATE,
    WARNING_PROP,
)
from .persistor import PromptPersistor


class ResultsCollector(Widget):
    def __init__(
        self,
        results_file: str = RESULTS_FILE,
        persistor_id: str = "persistor",
        train_task_name: str = TASK_TRAIN,
        validate_task_name: str = TASK_VALIDATE,
        sites: int = 0,
        min_clients: int = 0,
    ):
        """
        Args:
            results_file: written in the server's app folder.
            persistor_id: the PromptPersistor, asked to keep the final model when it is the best.
            train_task_name / validate_task_name: the workflow's task names.
            sites: the number of sites the job was made for (0: not checked); `min_clients`: the fewest that may join
                (0: `sites`). Fewer or more stop the job, naming the setting to change.
        """
        super().__init__()
        self.results_file = results_file
        self.persistor_id = persistor_id
        self.train_task_name = train_task_name
        self.validate_task_name = validate_task_name
        self.sites = sites
        self.min_clients = min_clients
        self.path: Path | None = None
        self.book = ResultsBook("flare")
        self._checked = False

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
                info = fl_ctx.get_prop(REJECTION_PROP) or {}
                self.book.reject(info.get("site", "?"), info.get("round"), self.train_task_name, str(info.get("error")))
            elif event_type == GROUP_WARNING:
                if self.book.warn(fl_ctx.get_prop(WARNING_PROP) or {}):
                    self._write()
            elif event_type == AppEventType.GLOBAL_BEST_MODEL_AVAILABLE:
                value = fl_ctx.get_prop(AppConstants.VALIDATION_RESULT)
                self.book.best = {
                    "round": int(fl_ctx.get_prop(AppConstants.CURRENT_ROUND, 0)),
                    "weighted_accuracy": float(value) if value is not None else None,
                    "selected_by": "IntimeModelSelector (initial_metrics.accuracy)",
                }
            elif event_type == EventType.FATAL_SYSTEM_ERROR:
                self.book.status = "failed"
                reason = fl_ctx.get_prop(FLContextKey.EVENT_DATA, "")
                if reason:
                    self.book.errors.append({"site": "server", "kind": "fatal", "error": str(reason)})
                open_rounds = self.book.open_rounds()
                if open_rounds:  # stopped mid-round: whoever had not answered is missing from it
                    self.book.mark_absent(max(open_rounds))
                self._write()
            elif event_type == EventType.END_RUN:
                self._end(fl_ctx)
        except Exception:  # bookkeeping must never take the job down
            self.log_exception(fl_ctx, f"results collector: failed to handle {event_type}")

    def _start(self, fl_ctx: FLContext) -> None:
        self.path = Path(fl_ctx.get_prop(FLContextKey.APP_ROOT)) / self.results_file
        for client in fl_ctx.get_engine().get_clients():
            self.book.join(client.name)
        self.book.head["job_id"] = fl_ctx.get_job_id()
        self._write()
        self.log_info(fl_ctx, f"results will be written to {self.path}")

    def _round_started(self, fl_ctx: FLContext) -> None:
        rnd = int(fl_ctx.get_prop(AppConstants.CURRENT_ROUND, 0)) + 1
        this_job = fl_ctx.get_prop(AppConstants.NUM_ROUNDS)
        if isinstance(this_job, int):  # a resumed job runs its rounds after the earlier run's (start_round)
            self.book.num_rounds = int(fl_ctx.get_prop(AppConstants.START_ROUND) or 0) + this_job
        self.book.round_started(rnd)
        clients = [c.name for c in fl_ctx.get_engine().get_clients()]
        for name in clients:
            self.book.join(name)
        if not self._checked:
            self._checked = True
            self._check_sites(clients, fl_ctx)

    def _check_sites(self, clients: list[str], fl_ctx: FLContext) -> None:
        """The sites that joined must be those the job was made for (its data is partitioned over them)."""
        if not self.sites:
            return
        fewest = self.min_clients or self.sites
        if fewest <= len(clients) <= self.sites:
            if len(clients) < self.sites:
                self.log_warning(
                    fl_ctx,
                    f"{len(clients)} of the job's {self.sites} sites joined: the others' part of "
                    "the data is not used this run",
                )
            return
        self.book.status = "failed"
        message = (
            f"stopping the job: it was made for {self.sites} sites (its data is partitioned over "
            f"{self.sites}: data.synthetic_sites, or the manifest's sites), and {len(clients)} joined "
            f"({', '.join(clients)}). Run it with {self.sites} sites (nvflare simulator -n {self.sites}), or "
            f"make the job for {len(clients)}: fedrsclip job --sites {len(clients)} ..."
        )
        self.book.errors.append({"site": "server", "kind": "sites", "error": message})
        self._write()
        self.system_panic(message, fl_ctx)

    def _submission(self, fl_ctx: FLContext) -> None:
        task = fl_ctx.get_prop(FLContextKey.TASK_NAME)
        if task not in (self.train_task_name, self.validate_task_name):
            return
        train = task == self.train_task_name
        result = fl_ctx.get_prop(FLContextKey.TASK_RESULT)
        site = fl_ctx.get_peer_context().get_identity_name(default="?")
        rc = result.get_return_code(ReturnCode.OK)
        header_round = result.get_header(ROUND_HEADER)
        rnd = int(header_round) + 1 if isinstance(header_round, int) else None
        if rnd is None and train:
            contribution = result.get_cookie(AppConstants.CONTRIBUTION_ROUND)
            rnd = int(contribution) + 1 if isinstance(contribution, int) else None
        if rc != ReturnCode.OK:
            kind = result.get_header(ERROR_KIND_HEADER) or rc
            message = (
                result.get_header(ERROR_HEADER) or f"the task {task} failed with return code {rc}; see {site}'s log"
            )
            self.book.add_error(site, task, rnd, kind, message, train)
            self.log_error(
                fl_ctx, f"task {task}" + (f" of round {rnd}" if rnd else "") + f" failed at {site} ({kind}): {message}"
            )
            if kind == "config":
                self.book.status = "failed"
                self._write()
                self.system_panic(f"stopping the job, its configuration is wrong: {message}", fl_ctx)
            return
        try:
            meta = from_shareable(result).get_meta_prop(META_KEY)
            if train:
                self.book.add_update(site, RoundRecord.from_wire(meta))
            else:
                self.book.add_final(site, FinalRecord.from_wire(meta))
        except (ValueError, ContributionError) as exc:  # not a DXO, or no valid record: the site is missing
            self.book.add_error(
                site, task, rnd, "result", f"the result carries no valid fedrsclip record: {exc}", train
            )

    def _round_done(self, fl_ctx: FLContext) -> None:
        rnd = int(fl_ctx.get_prop(AppConstants.CURRENT_ROUND, 0)) + 1
        record = self.book.round_done(rnd)
        self._write()
        self.log_info(fl_ctx, self.book.progress_line(rnd))
        if self.book.sites and not record["sites"]:
            # Every site failed: more rounds would only repeat the failure (the global model cannot change).
            self.book.status = "failed"
            kinds = sorted({v.get("kind", "?") for v in record["missing"].values()})
            first = next(iter(record["missing"].values()), {}).get("error", "")
            self.system_panic(
                f"stopping the job: no site completed round {rnd} ({', '.join(kinds)}); first error: {first}", fl_ctx
            )

    def _end(self, fl_ctx: FLContext) -> None:
        status = self.book.finish()
        best = self.book.final_best()
        if best is not None:  # the in-time selector never sees the last round's model: the final evaluation does
            after, value = best
            persistor = fl_ctx.get_engine().get_component(self.persistor_id)
            if isinstance(persistor, PromptPersistor) and persistor.weights:
                persistor.save_best(fl_ctx, dict(persistor.weights), after, value)
            final = next(v for v in self.book.final.values() if not v.get("missing"))
            self.book.best = best_entry(after, value, key_metric(final), "final evaluation (GlobalModelEval)")
        self._write()
        self.log_info(fl_ctx, f"results ({status}) written to {self.path}")

    # ---- the file -------------------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        out = self.book.snapshot()
        # file names next to this results file: valid on the server and in a downloaded job result
        persistor_files = (GLOBAL_MODEL_FILE, BEST_MODEL_FILE)
        out["global_model"] = persistor_files[0]
        out["best_model"] = persistor_files[1] if self.book.best else None
        return out

    def _write(self) -> None:
        if self.path is not None:
            atomic_write_json(self.path, self.snapshot())
