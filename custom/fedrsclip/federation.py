"""An in-process federation: every site in one Python process, the same trainer and aggregation the FLARE job
uses. For tests, quick experiments and debugging the method without FLARE.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from tqdm.auto import tqdm

from .backbone import load_backbone
from .config import Config
from .data.manifest import centralized
from .features import FeatureSet
from .site import Site
from .trainer import Payload, aggregate, payload_nbytes, zero_shot_accuracy

log = logging.getLogger(__name__)


def summarize(site_metrics: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Mean and sample-weighted mean of per-site accuracies."""
    accs = [m["accuracy"] for m in site_metrics.values() if m.get("samples")]
    weights = [m["samples"] for m in site_metrics.values() if m.get("samples")]
    return {"mean_accuracy": float(np.mean(accs)) if accs else float("nan"),
            "weighted_accuracy": float(np.average(accs, weights=weights)) if accs else float("nan")}


def run_federation(cfg: Config, manifest: Mapping[str, Any], state_dir: str | Path | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """Run cfg.train.rounds rounds over every site of `manifest`; returns the per-round, per-site history."""
    if cfg.algorithm == "centralized":
        manifest = centralized(manifest)
    backbone = load_backbone(cfg.model)
    sites = [Site(cfg, name, manifest, backbone, state_dir, progress=progress) for name in manifest["sites"]]
    algorithm = sites[0].trainer.algorithm
    union_test = FeatureSet.concat([s.test_set for s in sites if s.test_set is not None])
    history: dict[str, Any] = {
        "algorithm": cfg.algorithm, "backbone": backbone.description, "dataset": manifest.get("dataset"),
        "zero_shot": zero_shot_accuracy(backbone, sites[0].classnames, union_test), "rounds": [],
    }
    global_payload: Payload | None = None
    last_shared: dict[str, np.ndarray] = {}
    for rnd in tqdm(range(cfg.train.rounds), desc="rounds", disable=not progress):
        results, per_site = {}, {}
        for site in sites:
            others = [v for k, v in last_shared.items() if k != site.name]
            peers = np.stack(others) if cfg.dpac.negatives == "peers" and others else None
            start = time.perf_counter()
            result = site.train_round(global_payload, rnd, peers=peers)
            results[site.name] = result
            per_site[site.name] = {"samples_train": result.num_samples, "seconds": time.perf_counter() - start,
                                   "bytes_up": payload_nbytes(result.payload),
                                   "bytes_down": payload_nbytes(global_payload or {}), **result.metrics}
        if algorithm.federated:
            global_payload = aggregate(list(results.values()))
            last_shared = {name: r.payload["shared_ctx"] for name, r in results.items()}
        for site in sites:
            per_site[site.name].update(site.evaluate(global_payload))
        record = {"round": rnd + 1, "sites": per_site, **summarize(per_site)}
        if algorithm.federated:  # the shared prompt alone on the union of test splits
            record["global"] = sites[0].trainer.evaluate(union_test, shared_only=True)
        history["rounds"].append(record)
        log.info("round %d: mean accuracy %.2f%% over %d sites", rnd + 1, record["mean_accuracy"], len(sites))
    return history
