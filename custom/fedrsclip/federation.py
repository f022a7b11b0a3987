"""An in-process federation: every site in one Python process, the same trainer and aggregation the FLARE job
uses. For tests, quick experiments and debugging the method without FLARE.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from .backbone import load_backbone
from .config import Config
from .data.manifest import centralized
from .features import FeatureSet
from .algorithms import get_algorithm
from .site import make_site
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
    algorithm = get_algorithm(cfg.algorithm)
    prompt_based = algorithm.kind == "prompt"
    backbone = load_backbone(cfg.model) if prompt_based else None
    sites = [make_site(cfg, name, manifest, backbone, state_dir, progress=progress) for name in manifest["sites"]]
    tests = [s.test_set for s in sites if s.test_set is not None]
    history: dict[str, Any] = {"algorithm": cfg.algorithm, "dataset": manifest.get("dataset"), "rounds": []}
    if prompt_based:
        union_test = FeatureSet.concat(tests)
        history["backbone"] = backbone.description
        history["zero_shot"] = zero_shot_accuracy(backbone, sites[0].classnames, union_test)
    else:
        union_test = torch.utils.data.ConcatDataset(tests)
        history["backbone"] = f"timm {cfg.classifier.arch} (pretrained={cfg.classifier.pretrained})"
    global_payload: Payload | None = None
    last_shared: dict[str, np.ndarray] = {}
    for rnd in tqdm(range(cfg.train.rounds), desc="rounds", disable=not progress):
        results, per_site = {}, {}
        for site in sites:
            others = [v for k, v in last_shared.items() if k != site.name]
            peers = np.stack(others) if prompt_based and cfg.dpac.negatives == "peers" and others else None
            start = time.perf_counter()
            result = site.train_round(global_payload, rnd, peers=peers)
            results[site.name] = result
            per_site[site.name] = {"samples_train": result.num_samples, "seconds": time.perf_counter() - start,
                                   "bytes_up": payload_nbytes(result.payload),
                                   "bytes_down": payload_nbytes(global_payload or {}), **result.metrics}
        if algorithm.federated:
            global_payload = aggregate(list(results.values()))
            if prompt_based:
                last_shared = {name: r.payload["shared_ctx"] for name, r in results.items()}
        for site in sites:
            per_site[site.name].update(site.evaluate(global_payload))
        record = {"round": rnd + 1, "sites": per_site, **summarize(per_site)}
        if algorithm.federated:  # the global model (for prompts: the shared prompt alone) on all test splits
            kwargs = {"shared_only": True} if prompt_based else {}
            record["global"] = sites[0].trainer.evaluate(union_test, **kwargs)
        history["rounds"].append(record)
        log.info("round %d: mean accuracy %.2f%% over %d sites", rnd + 1, record["mean_accuracy"], len(sites))
    return history
