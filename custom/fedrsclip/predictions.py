"""What a site's final model predicts on its own test split: per-class confusion counts and a few sample images.

Site-local information (it names the site's image files and shows its class balance): the FLARE executor writes it
into the site's own workspace at the final validate task and never sends it to the server. In a simulation every
workspace is on one machine, so the experiment runner gathers these files into the cell's results for the report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .protocol import site_seed

if TYPE_CHECKING:  # annotations only: the experiment runner reads predictions_path without loading torch
    from .site import Site

PREDICTIONS_SUFFIX = "-predictions.json"  # <site state dir>/<site>-predictions.json
SAMPLES_PER_CLASS = 2


def predictions_path(state_dir: str | Path, site: str) -> Path:
    return Path(state_dir) / f"{site}{PREDICTIONS_SUFFIX}"


def site_predictions(site: Site, samples_per_class: int = SAMPLES_PER_CLASS) -> dict[str, Any]:
    """Confusion counts [true][predicted] over the site's test split, `samples_per_class` (path, true, predicted)
    samples of each class drawn with a seed fixed per site (neither mistakes nor successes are favoured), and the
    zero-shot reference on the same images when the site has a CLIP backbone. Label sets (multi-label scenes):
    per-class TP/FP/FN counts instead of a confusion matrix, and samples with their label lists."""
    classes = list(site.classnames)
    out: dict[str, Any] = {"site": site.name, "algorithm": site.cfg.algorithm, "classes": classes}
    if site.test_set is None or len(site.test_set) == 0:
        return {**out, "samples_test": 0, "confusion": [], "samples": []}
    paths, labels, preds = site.predict_test()
    if labels.ndim == 2:
        out.update(_multilabel(paths, labels.astype(bool), preds.astype(bool), site, samples_per_class))
    else:
        out.update(_single_label(paths, labels, preds, site, samples_per_class, len(classes)))
    zero_shot = site.zero_shot()
    if zero_shot is not None:
        out["zero_shot"] = zero_shot
    return out


def _single_label(
    paths: list[str] | None, labels: np.ndarray, preds: np.ndarray, site: Site, samples_per_class: int, k: int
) -> dict[str, Any]:
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (labels, preds), 1)
    samples = []
    if paths is not None:
        rng = np.random.default_rng(site_seed(site.cfg.train.seed, site.name))
        for cls in range(k):
            index = np.flatnonzero(labels == cls)
            for i in sorted(rng.choice(index, size=min(samples_per_class, len(index)), replace=False)):
                samples.append({"path": paths[i], "true": int(labels[i]), "predicted": int(preds[i])})
    return {
        "samples_test": int(len(labels)),
        "accuracy": float((labels == preds).mean() * 100.0),
        "confusion": confusion.tolist(),
        "samples": samples,
    }


def _multilabel(
    paths: list[str] | None, labels: np.ndarray, preds: np.ndarray, site: Site, samples_per_class: int
) -> dict[str, Any]:
    """Label sets [N, K]: per-class true positives, false positives and false negatives, and `samples_per_class`
    (path, true labels, predicted labels) samples of each class present (drawn with a seed fixed per site)."""
    tp, fp, fn = ((labels & preds).sum(0), (~labels & preds).sum(0), (labels & ~preds).sum(0))
    samples, seen = [], set()
    if paths is not None:
        rng = np.random.default_rng(site_seed(site.cfg.train.seed, site.name))
        for cls in range(labels.shape[1]):
            index = [i for i in np.flatnonzero(labels[:, cls]) if i not in seen]
            for i in sorted(rng.choice(index, size=min(samples_per_class, len(index)), replace=False)):
                seen.add(i)
                samples.append(
                    {
                        "path": paths[i],
                        "true": np.flatnonzero(labels[i]).tolist(),
                        "predicted": np.flatnonzero(preds[i]).tolist(),
                    }
                )
    return {
        "samples_test": int(labels.shape[0]),
        "multi_label": True,
        "per_class": {"tp": tp.tolist(), "fp": fp.tolist(), "fn": fn.tolist()},
        "confusion": [],
        "samples": samples,
    }


def gather_site_predictions(workspace: Path, results: dict[str, Any]) -> dict[str, Any]:
    """Each site's predictions file, where a simulation keeps them all on one machine: next to the final state the
    site reported, or in `workspace`/<site>/<job>/fedrsclip/. {site: predictions}; sites without one left out."""
    out = {}
    for site, final in (results.get("final") or {}).get("sites", {}).items():
        candidates = [predictions_path(Path(final["final_state"]).parent, site)] if final.get("final_state") else []
        candidates += list((workspace / site).glob(f"*/fedrsclip/{predictions_path('.', site).name}"))
        for path in candidates:
            if path.is_file():
                try:
                    out[site] = json.loads(path.read_text())
                except (OSError, UnicodeDecodeError, ValueError) as exc:
                    raise ValueError(
                        f"{site}'s predictions file {path} cannot be read ({exc}); delete it and rerun that run"
                    ) from exc
                break
    return out
