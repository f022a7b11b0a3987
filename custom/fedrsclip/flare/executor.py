"""The FLARE executor: a thin adapter between FLARE tasks and a `fedrsclip.site.Site` (as FLARE's LearnerExecutor).

train: receive the global shared prompt (empty in round 1: every site then starts from the identical init the
    trainer draws from train.seed) and run `Site.run_round`: evaluate it with this site's private prompt on the
    site's own test split (the accuracy of the global model of the previous round, also sent as
    MetaKey.INITIAL_METRICS for best-model selection; multi-label scenes have no accuracy, so there the best model is
    the final evaluation's choice), train the local epochs, check what leaves; return the
    payload as DXO WEIGHTS with the round record (`protocol.RoundRecord`) in its meta, weighted by the training
    sample count (MetaKey.NUM_STEPS_CURRENT_ROUND: eq. 6).
validate: evaluate the final global model and keep it, with the private prompt, on disk.

WEIGHTS, not WEIGHT_DIFF: the global model starts empty (the server never builds CLIP), so there is no base to add
a difference to in round 1; the payload is 2,048 values either way; the sample-weighted mean of WEIGHTS is eq. 6
exactly; and an encrypted (HE) job aggregates the same WEIGHTS.

A failing task replies EXECUTION_EXCEPTION (TASK_ABORTED when aborted) with the reason in the log and in the reply
headers (ERROR_HEADER, ERROR_KIND_HEADER) for the server's results file. Local state is written only after a
successful round, so a failure never loses or half-writes the private prompt.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.app_common.app_constant import AppConstants

from ..atomic import atomic_torch_save, atomic_write_json
from ..config import ConfigError
from ..data.errors import DataError
from ..he import HEADER_KEY as HE_HEADER_KEY
from ..protocol import COMMON, FinalRecord, PayloadError, key_group, payload_nbytes
from .constants import ERROR_HEADER, ERROR_KIND_HEADER, META_KEY, ROUND_HEADER, STATE_SUBDIR, TASK_TRAIN, TASK_VALIDATE
from .settings import SITE_CONFIG_ENV, SITE_CONFIG_FILE, SiteConfigError, find_site_config, resolve_site_settings


class FedRSCLIPExecutor(Executor):
    def __init__(
        self,
        config: str = "fedrsclip.yaml",
        overrides: list[str] | dict | None = None,
        train_task_name: str = TASK_TRAIN,
        validate_task_name: str = TASK_VALIDATE,
        analytic_sender_id: str = "",
        torch_threads: int = 0,
        start_round: int = 0,
    ):
        """
        Args:
            config: the job's fedrsclip YAML (the package's config schema), relative to the app's config folder.
            overrides: job settings on top of it: ["train.lr=0.05", ...] or a nested mapping.
            train_task_name / validate_task_name: the task names of ScatterAndGather and GlobalModelEval.
            analytic_sender_id: a TBWriter component to stream accuracy and loss to the server ("" for none).
            torch_threads: CPU threads for torch in this site's process (0: torch's default, all cores). Several
                sites simulated on one machine run much faster with 1 than with every process using every core.
            start_round: the rounds an earlier run did before this (resumed) job: its logs count on from there
                (the workflow's task headers count this job's rounds only).
        """
        super().__init__()
        self.config = config
        self.overrides = overrides or []
        self.train_task_name = train_task_name
        self.validate_task_name = validate_task_name
        self.analytic_sender_id = analytic_sender_id
        self.torch_threads = int(torch_threads)
        self.start_round = int(start_round)
        self._site = None  # built at the first task; kept while the process lives (-t N), rebuilt from disk otherwise
        self._settings = None
        self._resumed = False
        self._setup: dict[str, float] | None = None  # phases before the site's first round in this process
        self._described = None  # the site object whose first upload carried the run's descriptions

    # ---- FLARE plumbing ----------------------------------------------------------------------------------------
    def handle_event(self, event_type: str, fl_ctx: FLContext):
        if event_type == EventType.END_RUN:
            self._site = None

    def _paths(self, fl_ctx: FLContext) -> dict[str, Path]:
        workspace = fl_ctx.get_engine().get_workspace()
        job_id = fl_ctx.get_job_id()
        app_root = Path(fl_ctx.get_prop(FLContextKey.APP_ROOT) or workspace.get_app_dir(job_id))
        config = Path(self.config)
        if not config.is_absolute():
            config = app_root / "config" / config
        return {
            "root": Path(workspace.get_root_dir()),
            "local": Path(workspace.get_site_config_dir()),
            "run": Path(workspace.get_run_dir(job_id)),
            "config": config,
        }

    def _get_site(self, fl_ctx: FLContext):
        if self._site is not None:
            return self._site
        start = time.perf_counter()
        setup = _process_start()
        import torch

        # torch and open_clip are imported when a task arrives, not where the job is built or loaded
        from ..factory import make_site
        from ..site import adopt_state, state_file

        if self.torch_threads > 0:
            torch.set_num_threads(self.torch_threads)

        name = fl_ctx.get_identity_name()
        paths = self._paths(fl_ctx)
        settings = resolve_site_settings(name, paths["config"], self.overrides, paths["root"], paths["local"])
        state_dir = paths["run"] / STATE_SUBDIR
        adopted = adopt_state(settings.cfg.train.resume_from, name, state_dir, paths["root"])  # a resumed job
        resumed = state_file(state_dir, name).is_file()
        site = make_site(settings.cfg, name, settings.manifest, state_dir=state_dir, progress=False)
        # load: everything but the features (imports, settings, weights, state), so the phases add up
        extract = site.setup_timings.get("extract", 0.0)
        self._setup = {**setup, "load": time.perf_counter() - start - extract, "extract": extract}
        self.log_info(fl_ctx, f"{name}: ready after {_phases(self._setup)}")
        self.log_info(
            fl_ctx,
            f"{name}: {settings.cfg.algorithm}, {site.description}; data: "
            f"{settings.data_description} ({settings.manifest_path}); {len(site.train_set)} train / "
            f"{len(site.test_set) if site.test_set is not None else 0} test images; local state "
            f"{'resumed from' if resumed else 'will be kept in'} {site.state_path}"
            + (f" (copied from the earlier job's {adopted})" if adopted else "")
            + (f"; site configuration {settings.site_config}" if settings.site_config else ""),
        )
        self._site, self._settings, self._resumed = site, settings, resumed
        return site

    def _where(self, fl_ctx: FLContext) -> str:
        """Where this site's data settings come from, for error messages."""
        name = fl_ctx.get_identity_name()
        try:
            local = self._paths(fl_ctx)["local"]
            applied = find_site_config(name, local)
        except Exception:
            local, applied = Path("<site workspace>/local"), None
        if applied is not None:
            return f"this site's settings are in {applied}"
        return f"set this site's data in {local / SITE_CONFIG_FILE} or a file named by ${SITE_CONFIG_ENV}"

    def _fail(self, fl_ctx: FLContext, rc: str, kind: str, message: str, round_idx: Any) -> Shareable:
        name = fl_ctx.get_identity_name()
        if name not in message:
            message = f"{name}: {message}"
        self.log_error(fl_ctx, f"{kind} error: {message}")
        # A failed round may have left half-trained prompts in memory: the next task starts again from the state
        # on disk (the last completed round), exactly as a fresh process would.
        self._site = None
        reply = make_reply(rc)
        reply.set_header(ERROR_HEADER, message)
        reply.set_header(ERROR_KIND_HEADER, kind)
        reply.set_header(ROUND_HEADER, round_idx)
        return reply

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        round_idx = shareable.get_header(AppConstants.CURRENT_ROUND)
        name = fl_ctx.get_identity_name()
        if task_name not in (self.train_task_name, self.validate_task_name):
            self.log_error(fl_ctx, f"{name}: unknown task {task_name!r}")
            return make_reply(ReturnCode.TASK_UNKNOWN)
        if abort_signal.triggered:
            return self._fail(fl_ctx, ReturnCode.TASK_ABORTED, "aborted", f"task {task_name} aborted", round_idx)
        if shareable.get_header(ERROR_HEADER):  # a task data filter (CKKS decryption) refused the model
            return self._fail(
                fl_ctx,
                ReturnCode.EXECUTION_EXCEPTION,
                shareable.get_header(ERROR_KIND_HEADER) or "filter",
                shareable.get_header(ERROR_HEADER),
                round_idx,
            )
        try:
            try:
                site = self._get_site(fl_ctx)
            except PayloadError as exc:  # the state on disk does not fit the model: refuse, never start over
                return self._fail(
                    fl_ctx,
                    ReturnCode.EXECUTION_EXCEPTION,
                    "state",
                    f"{exc}; the saved local state was left as it is (move it away to start this site from scratch)",
                    round_idx,
                )
            payload = self._global_payload(shareable, site)
            if task_name == self.train_task_name:
                return self._train(site, payload, int(round_idx or 0), shareable, fl_ctx, abort_signal)
            return self._validate(site, payload, shareable, fl_ctx)
        except SiteConfigError as exc:
            return self._fail(fl_ctx, ReturnCode.EXECUTION_EXCEPTION, "site_config", str(exc), round_idx)
        except ConfigError as exc:
            return self._fail(
                fl_ctx,
                ReturnCode.EXECUTION_EXCEPTION,
                "config",
                f"the job's fedrsclip configuration is wrong: {exc}",
                round_idx,
            )
        except DataError as exc:
            return self._fail(
                fl_ctx, ReturnCode.EXECUTION_EXCEPTION, "data", f"{exc} ({self._where(fl_ctx)})", round_idx
            )
        except PayloadError as exc:
            return self._fail(
                fl_ctx,
                ReturnCode.EXECUTION_EXCEPTION,
                "payload",
                f"{exc}; the global model was not loaded, local state left unchanged",
                round_idx,
            )
        except InterruptedError as exc:
            return self._fail(
                fl_ctx,
                ReturnCode.TASK_ABORTED,
                "aborted",
                f"{exc}; local state left as of the previous round",
                round_idx,
            )
        except Exception as exc:  # anything else (backbone, numerical trouble): fail this task, keep the state
            self.log_exception(fl_ctx, f"{name}: task {task_name} failed")
            return self._fail(
                fl_ctx,
                ReturnCode.EXECUTION_EXCEPTION,
                type(exc).__name__,
                f"{type(exc).__name__}: {exc}; local state left as of the previous round",
                round_idx,
            )

    # ---- the model that arrives ------------------------------------------------------------------------------
    def _global_payload(self, shareable: Shareable, site) -> dict[str, np.ndarray] | None:
        try:
            dxo = from_shareable(shareable)
        except ValueError as exc:
            raise PayloadError(f"{site.name}: the task carries no model ({exc})") from exc
        if dxo.data_kind != DataKind.WEIGHTS:
            raise PayloadError(
                f"{site.name}: expected the global model as {DataKind.WEIGHTS}, got {dxo.data_kind} "
                "(the job's shareable generator and aggregator must exchange WEIGHTS)"
            )
        data = dxo.data or {}
        if not data:
            return None  # round 1: nothing aggregated yet; the trainer's shared init is identical on every site
        if HE_HEADER_KEY in data:
            raise PayloadError(
                f"{site.name}: the global model is CKKS-encrypted but this site's job has no "
                "decryption filter: every site must run the job made with --he"
            )
        shapes = site.trainer.shapes
        # Every entry the model has, except adapters: a modality whose sites sent nothing yet has none in the model
        required = {k for k in shapes if key_group(k) == COMMON}
        if not required <= set(data) or not set(data) <= set(shapes):
            unexpected, missing = sorted(set(data) - set(shapes)), sorted(required - set(data))
            raise PayloadError(
                f"{site.name}: the global model does not fit algorithm {site.cfg.algorithm}: "
                f"{len(missing)} missing entries {missing[:3]}, {len(unexpected)} unexpected "
                f"{unexpected[:3]} (check that every site runs the same job)"
            )
        return {key: np.asarray(value) for key, value in data.items()}

    # ---- tasks ----------------------------------------------------------------------------------------------
    def _train(
        self, site, payload, round_idx: int, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal
    ) -> Shareable:
        num_rounds = shareable.get_header(AppConstants.NUM_ROUNDS)
        # The record travels with every upload, so it holds only what the server's results collector reads (the
        # sender's name comes with FLARE's peer context): the run's descriptions and the time it took to build the
        # site go with the first result of each site object (a fresh process, or after a failure), and
        # state_continued only when it is false.
        first = self._described is not site
        update = site.run_round(
            payload,
            round_idx,
            should_abort=lambda: abort_signal.triggered,
            setup=self._setup if first else None,
            state_continued=bool(self._resumed) or round_idx == 0,
            description=site.run_description(self._settings.data_description) if first else None,
        )
        self._described = site
        self._resumed = True  # later rounds in this process continue from memory (and the state file)
        record = update.record
        meta = {MetaKey.NUM_STEPS_CURRENT_ROUND: record.samples_train, META_KEY: record.to_wire()}
        if record.received.get("accuracy") is not None:  # the received model's accuracy, for best-model selection
            meta[MetaKey.INITIAL_METRICS] = {"accuracy": record.received["accuracy"], "loss": record.received["loss"]}
        if not record.state_continued:
            self.log_warning(
                fl_ctx,
                f"{site.name}: round {round_idx + 1} but no local state from earlier rounds: "
                "the private prompt restarted from its initial value",
            )
        received = record.received
        total = f"/{self.start_round + num_rounds}" if isinstance(num_rounds, int) else ""
        self.log_info(
            fl_ctx,
            f"{site.name} round {round_idx + 1}{total}: received global model "
            f"{_score(received)} on {received.get('samples')} own test images; "
            f"trained on {record.samples_train} images, loss "
            f"{record.metrics.get('train_loss') or float('nan'):.4f}; {_phases(record.timings)}",
        )
        self._stream(
            fl_ctx,
            {
                "accuracy": (received.get("accuracy"), round_idx),
                "micro_f1": (received.get("micro_f1"), round_idx),
                "train_loss": (record.metrics.get("train_loss"), round_idx + 1),
            },
        )
        return DXO(DataKind.WEIGHTS, data=dict(update.payload), meta=meta).to_shareable()

    def _validate(self, site, payload, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        from ..predictions import predictions_path, site_predictions
        from ..site import STATE_MODE
        from ..zeroshot import chance_warning

        start = time.perf_counter()
        # a validate task in a fresh process built the site first: that counts in its seconds
        setup = sum(self._setup.values()) if self._described is not site and self._setup else 0.0
        if payload is None and site.algorithm.federated:
            raise PayloadError(f"{site.name}: the model sent for validation is empty")
        metrics = site.evaluate(payload)  # `local` sends nothing: its model is the site's own, already loaded
        final_path = site.state_path.with_name(f"{site.name}-final.pt")
        atomic_torch_save(
            final_path, site.state_blob(global_model=shareable.get_header(AppConstants.MODEL_OWNER)), mode=STATE_MODE
        )  # the private prompt: owner-only, as the state file
        # Confusion counts and sample images name this site's files: kept in its own workspace, never sent.
        predictions_data = site_predictions(site)
        predictions = atomic_write_json(predictions_path(final_path.parent, site.name), predictions_data)
        record = FinalRecord(
            received=metrics,
            seconds=time.perf_counter() - start + setup,
            bytes_down=payload_nbytes(payload or {}),
            final_state=str(final_path),
            modalities=site.evaluate_modalities(),
        )
        self.log_info(
            fl_ctx,
            f"{site.name}: final global model {_score(record.received)} on "
            f"{metrics['samples']} own test images; final shared + private prompts kept in "
            f"{final_path}; predictions (site-local) in {predictions}",
        )
        warning = chance_warning((predictions_data or {}).get("zero_shot") or {}, f"{site.name}'s test split")
        if warning:
            self.log_warning(fl_ctx, f"{site.name}: {warning}")
        self._stream(
            fl_ctx,
            {
                "final_accuracy": (record.received.get("accuracy"), None),
                "final_micro_f1": (record.received.get("micro_f1"), None),
            },
        )
        return DXO(DataKind.METRICS, data=dict(record.received), meta={META_KEY: record.to_wire()}).to_shareable()

    def _stream(self, fl_ctx: FLContext, values: dict[str, tuple[Any, int | None]]) -> None:
        if not self.analytic_sender_id:
            return
        writer = fl_ctx.get_engine().get_component(self.analytic_sender_id)
        if writer is None:
            self.log_warning(
                fl_ctx, f"analytic_sender_id {self.analytic_sender_id!r} names no component; metrics are not streamed"
            )
            self.analytic_sender_id = ""
            return
        for tag, (value, step) in values.items():
            if value is not None and np.isfinite(value):
                writer.add_scalar(tag, float(value), global_step=step)


def _process_start() -> dict[str, float]:
    """{"start": seconds since this process started} for the first site built in the process (a simulator site
    process, a POC or deployed client), else {}: the Python, torch and FLARE start-up before the first task."""
    global _STARTED
    if _STARTED:
        return {}
    _STARTED = True
    return {"start": max(0.0, time.time() - psutil.Process().create_time())}


_STARTED = False  # the process start was reported (with the first site built here)


def _phases(timings: dict) -> str:
    """ "12.3s (start 2.0, load 3.1, extract 6.0, evaluate 0.2, train 1.0)": the phases of protocol.TIMINGS."""
    parts = ", ".join(f"{k} {v:.1f}" for k, v in timings.items() if isinstance(v, (int, float)))
    return f"{sum(v for v in timings.values() if isinstance(v, (int, float))):.1f}s ({parts})"


def _pct(value: Any) -> str:
    return "n/a" if value is None else f"{value:.2f}%"


def _score(evaluation: dict) -> str:
    """ "accuracy 81.20%", or for multi-label scenes "micro F1 40.10%, mAP 55.00%"."""
    if evaluation.get("accuracy") is None and evaluation.get("micro_f1") is not None:
        return f"micro F1 {_pct(evaluation.get('micro_f1'))}, mAP {_pct(evaluation.get('mAP'))}"
    return f"accuracy {_pct(evaluation.get('accuracy'))}"
