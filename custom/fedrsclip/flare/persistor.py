"""Server side: the global shared prompt on disk (the final evaluation reads it back through locator.py).

The global model starts empty: the server never builds CLIP, and every site draws the same initial shared prompt
from train.seed. After each round the aggregated prompt is written atomically to `<app root>/FL_global_model.npz`;
the best one (IntimeModelSelector's GLOBAL_BEST_MODEL_AVAILABLE, or the results collector after the final
evaluation) to `best_FL_global_model.npz`. Under HE these hold ciphertext; the sites keep the decrypted prompt.
Each file records the rounds aggregated into it and the job id.

A resumed job (`fedrsclip job --resume`) starts from an earlier job's FL_global_model.npz instead (`resume_from`);
the workflow's start_round must equal the round recorded in it, so the round count continues.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.model import ModelLearnable, ModelLearnableKey, make_model_learnable
from nvflare.app_common.abstract.model_persistor import ModelPersistor
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType

from ..he import HEADER_KEY as HE_HEADER_KEY
from ..he import EncryptedUpdate
from ..protocol import check_update
from .constants import BEST_MODEL_FILE, GLOBAL_MODEL_FILE
from .model_file import load_npz, save_npz


class PromptPersistor(ModelPersistor):
    def __init__(
        self, model_file: str = GLOBAL_MODEL_FILE, best_model_file: str = BEST_MODEL_FILE, resume_from: str = ""
    ):
        """`resume_from`: an earlier job's global model file (relative to the app folder) to start from."""
        super().__init__()
        self.model_file = model_file
        self.best_model_file = best_model_file
        self.resume_from = resume_from
        self.weights: dict[str, Any] = {}
        self.round: int | None = None  # rounds aggregated into self.weights
        self.best_round: int | None = None
        self._app_root: Path | None = None

    def _path(self, fl_ctx: FLContext, name: str) -> Path:
        if self._app_root is None:
            self._app_root = Path(fl_ctx.get_prop(FLContextKey.APP_ROOT))
        return self._app_root / name

    def load_model(self, fl_ctx: FLContext) -> ModelLearnable:
        self._path(fl_ctx, self.model_file)
        if self.resume_from:
            return self._resume(fl_ctx)
        self.log_info(
            fl_ctx,
            "global shared prompt starts empty: every site draws the same initial prompt from train.seed in round 1",
        )
        return make_model_learnable({}, {})

    def _resume(self, fl_ctx: FLContext) -> ModelLearnable:
        path = self._path(fl_ctx, self.resume_from)
        start = fl_ctx.get_prop(AppConstants.START_ROUND, 0)
        try:
            weights, info = load_npz(path)
            if HE_HEADER_KEY in weights:  # a CKKS job's model: ciphertext, checked as far as the server can
                EncryptedUpdate.from_data(weights, str(path))
            else:
                check_update(weights, None, None)
            if info.get("round") != start:
                raise ValueError(
                    f"it holds the global model after round {info.get('round')}, but the workflow's "
                    f"start_round is {start}; they must be equal (fedrsclip job --resume sets both)"
                )
        except Exception as exc:  # missing, truncated, foreign or non-finite: stop and name the file
            self.system_panic(f"cannot resume from the global model {path}: {exc}", fl_ctx)
            return make_model_learnable({}, {})
        self.weights, self.round = weights, start
        self.log_info(
            fl_ctx,
            f"resuming from {path}: the global model after round {start} of job "
            f"{info.get('job_id', '?')}; the next round is {start + 1}",
        )
        return make_model_learnable(weights, {})

    def save_model(self, model: ModelLearnable, fl_ctx: FLContext):
        self.weights = dict(model.get(ModelLearnableKey.WEIGHTS) or {})
        self.round = int(fl_ctx.get_prop(AppConstants.CURRENT_ROUND, 0)) + 1
        path = save_npz(
            self._path(fl_ctx, self.model_file), self.weights, {"round": self.round, "job_id": fl_ctx.get_job_id()}
        )
        self.log_info(fl_ctx, f"global model after round {self.round} saved to {path}")

    def save_best(self, fl_ctx: FLContext, weights: dict[str, Any], after_round: int, metric: float) -> Path:
        self.best_round = after_round
        path = save_npz(
            self._path(fl_ctx, self.best_model_file), weights, {"round": after_round, "weighted_accuracy": metric}
        )
        self.log_info(
            fl_ctx,
            f"best global model so far (after round {after_round}, weighted accuracy {metric:.2f}%) saved to {path}",
        )
        return path

    def handle_event(self, event_type: str, fl_ctx: FLContext):
        if event_type == AppEventType.GLOBAL_BEST_MODEL_AVAILABLE:
            # IntimeModelSelector, at round r's aggregation: the sites' accuracies of the model they received in
            # round r, i.e. the global model after round r (0-based r = rounds aggregated into it).
            model = fl_ctx.get_prop(AppConstants.GLOBAL_MODEL) or {}
            weights = dict(model.get(ModelLearnableKey.WEIGHTS) or {})
            if weights:
                self.save_best(
                    fl_ctx,
                    weights,
                    int(fl_ctx.get_prop(AppConstants.CURRENT_ROUND, 0)),
                    float(fl_ctx.get_prop(AppConstants.VALIDATION_RESULT, float("nan"))),
                )


from .locator import PromptModelLocator  # noqa: E402,F401  the old class path, named by jobs made before 0.2
