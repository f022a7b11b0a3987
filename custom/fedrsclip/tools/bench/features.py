"""Feature extraction throughput: `features.extract_features` against raw open_clip `encode_image`."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Sequence

from .common import progress, timed


def raw_open_clip_features(backbone, items: Sequence[tuple[Path, int]], batch_size: int = 64):
    """Decode, preprocess and `model.encode_image` the images, as a user of open_clip would, in batches."""
    import torch

    from ...data.images import load_rgb

    model, device, amp = backbone.model, backbone.device, backbone.amp_dtype
    out = []
    for start in range(0, len(items), batch_size):
        batch = torch.stack([backbone.preprocess(load_rgb(path)) for path, _ in items[start : start + batch_size]])
        with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            out.append(model.encode_image(batch.to(device)).float().cpu())
    return torch.cat(out)


def bench_features(backbone, items: Sequence[tuple[Path, int]], repeats: int) -> tuple[dict, Any]:
    """images/s of features.extract_features and of raw open_clip on `items`; also returns the project's features."""
    from ...features import extract_features

    device = backbone.device
    warm = list(items[: min(len(items), 2)])
    progress(f"features: warm-up on {len(warm)} images")
    extract_features(backbone, warm, progress=False)
    raw_open_clip_features(backbone, warm)
    project, raw = [], []
    features = None
    for r in range(repeats):
        seconds, features = timed(lambda: extract_features(backbone, list(items), progress=False), device)
        project.append(len(items) / seconds)
        seconds, _ = timed(lambda: raw_open_clip_features(backbone, items), device)
        raw.append(len(items) / seconds)
        progress(
            f"features: pass {r + 1}/{repeats}: project {project[-1]:.1f} img/s, raw open_clip "
            f"{raw[-1]:.1f} img/s ({len(items)} images)"
        )
    p, q = statistics.median(project), statistics.median(raw)
    return {
        "feature_images_per_s_project": p,
        "feature_images_per_s_raw": q,
        "feature_throughput_ratio": p / q,
        "feature_images": len(items),
        "feature_repeats": repeats,
    }, features
