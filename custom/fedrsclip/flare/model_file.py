"""The server's model files (`FL_global_model.npz`, the best one, a resumed job's copy): arrays under their names plus
`__info__` (JSON text: the rounds aggregated into the model, the job id). Numpy only; CKKS ciphertext is stored as
the uint8 arrays it travels as."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write


def save_npz(path: Path, weights: dict[str, Any], info: dict) -> Path:
    """Arrays under their names plus `__info__` (JSON text), written atomically."""
    arrays = {k: np.asarray(v) for k, v in weights.items() if isinstance(v, np.ndarray)}
    opaque = sorted(k for k in weights if k not in arrays)  # e.g. HE ciphertext objects: not numpy
    buf = io.BytesIO()
    np.savez(buf, __info__=np.array(json.dumps({**info, "not_saved": opaque})), **arrays)
    return atomic_write(path, lambda handle: handle.write(buf.getvalue()))


def load_npz(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    with np.load(path, allow_pickle=False) as blob:
        info = json.loads(str(blob["__info__"])) if "__info__" in blob else {}
        return {k: blob[k] for k in blob.files if k != "__info__"}, info
