"""Server side: hands the final global model to FLARE's GlobalModelEval, read from the file the persistor wrote after
the last round (`FL_global_model.npz` in the server's app folder)."""

from __future__ import annotations

from pathlib import Path

from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.model_locator import ModelLocator

from .constants import GLOBAL_MODEL_FILE, GLOBAL_MODEL_NAME
from .model_file import load_npz


class PromptModelLocator(ModelLocator):
    def __init__(self, model_file: str = GLOBAL_MODEL_FILE, persistor_id: str = ""):
        """`model_file`: the persistor's model file, relative to the server's app folder. `persistor_id`: named by
        jobs made before 0.2, unused."""
        super().__init__()
        self.model_file = model_file
        self.persistor_id = persistor_id

    def get_model_names(self, fl_ctx: FLContext) -> list[str]:
        return [GLOBAL_MODEL_NAME]

    def locate_model(self, model_name, fl_ctx: FLContext) -> DXO | None:
        path = Path(fl_ctx.get_prop(FLContextKey.APP_ROOT)) / self.model_file
        try:
            weights, info = load_npz(path)
        except Exception as exc:  # missing, truncated or foreign: name the file
            self.system_panic(
                f"the final global model {path} cannot be read ({exc}); the final evaluation is skipped", fl_ctx
            )
            return None
        return DXO(DataKind.WEIGHTS, data=weights, meta={"round": info.get("round")})
