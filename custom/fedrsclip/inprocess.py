"""The in-process runner: every site in one Python process, with the FLARE job's semantics: the same round at each
site (`Site.run_round`: evaluate the received model, train, check what leaves), the same gate
(`protocol.check_update` and `protocol.Gate`), the same weighted mean (`protocol.weighted_mean`), the same final
evaluation, and the same results file (`fedrsclip.results_file`). For tests, quick experiments and debugging the
method without FLARE. What only this runner can do, because every site is at hand: `dpac.negatives: peers` (each
site sees the others' shared prompts of the previous round), the zero-shot reference over every site's test
split, and the global model's accuracy with the shared prompt alone (`global` in each round).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from tqdm.auto import tqdm

from .algorithms import get_algorithm
from .config import Config
from .data.manifest import centralized
from .factory import load_shared, make_site
from .protocol import (SHARED, ContributionError, FinalRecord, Gate, Payload, Update, check_update, payload_nbytes,
                       site_order, weighted_mean)
from .results_file import ResultsBook
from .zeroshot import chance_warning, pool as pool_zero_shot

log = logging.getLogger(__name__)

IN_TIME = "in-time: each round's received accuracy, weighted by training samples (as FLARE's IntimeModelSelector)"
FINAL = "final evaluation"


class RunStopped(RuntimeError):
    """A round could not be completed: no update passed the gate (as a FLARE job without --min-clients)."""


def _weighted(evaluations: list[tuple[dict, float]]) -> float | None:
    usable = [(e["accuracy"], w) for e, w in evaluations if e.get("accuracy") is not None and w]
    return sum(a * w for a, w in usable) / sum(w for _, w in usable) if usable else None


def run_inprocess(cfg: Config, manifest: Mapping[str, Any], state_dir: str | Path | None = None,
                  progress: bool = True, data_description: str | None = None,
                  pooled: bool = False) -> dict[str, Any]:
    """Run cfg.train.rounds rounds over every site of `manifest` (`pooled`: all of its data at one site, the
    centralized reference); returns the results (the results file's content, fedrsclip.results_file).

    Raises RunStopped when a site's update is refused by the gate, DataError / PayloadError as a site does."""
    if pooled:
        manifest = centralized(manifest)
    algorithm = get_algorithm(cfg.algorithm)
    names = sorted(manifest["sites"], key=site_order)
    shared = load_shared(cfg)
    sites = [make_site(cfg, name, manifest, shared, state_dir, progress=progress) for name in names]
    description = sites[0].run_description(data_description or f"manifest of {manifest.get('dataset', '?')} "
                                                                f"({len(names)} site{'s' * (len(names) != 1)})")
    book = ResultsBook("in-process", sites=names, num_rounds=cfg.train.rounds, dataset=manifest.get("dataset"))
    book.describe(description)
    gate = Gate()
    received: Payload | None = None
    last_shared: dict[str, np.ndarray] = {}
    for rnd in tqdm(range(cfg.train.rounds), desc="rounds", disable=not progress):
        book.round_started(rnd + 1)
        updates: dict[str, Update] = {}
        for site in sites:
            others = [v for k, v in last_shared.items() if k != site.name]
            peers = np.stack(others) if cfg.dpac.negatives == "peers" and others else None
            update = site.run_round(received, rnd, peers=peers, description=description if rnd == 0 else None,
                                    setup=site.setup_timings if rnd == 0 else None)
            updates[site.name] = update
            book.add_update(site.name, update.record)
        if rnd > 0:  # the model received this round is the global model after round rnd
            book.consider_best(rnd, _weighted([(u.record.received, u.weight) for u in updates.values()]), IN_TIME)
        accepted = _gate(gate, updates, received, book, rnd)
        if algorithm.federated:
            received = weighted_mean((updates[s].payload, updates[s].weight) for s in accepted)
            last_shared = {s: updates[s].payload[SHARED] for s in accepted if SHARED in updates[s].payload}
        record = book.round_done(rnd + 1)
        if algorithm.federated:  # the global model alone (for prompts: the shared prompt, no private part)
            record["global"] = _global_accuracy(sites, received)
        log.info("%s", book.progress_line(rnd + 1))
    for site in sites:
        evaluation = site.evaluate(received)
        book.add_final(site.name, FinalRecord(received=evaluation, bytes_down=payload_nbytes(received or {})))
    book.finish()
    final = book.final_best()
    if final is not None:
        book.best = {"round": final[0], "weighted_accuracy": final[1], "selected_by": FINAL}
    results = book.snapshot()
    zero_shot = pool_zero_shot([site.zero_shot() for site in sites if site.test_set is not None])
    if zero_shot:  # over every site's test split (the per-class parts stay in the sites' predictions)
        results["zero_shot"] = {**{k: zero_shot[k] for k in ("accuracy", "samples", "prompt", "chance")},
                                "warning": chance_warning(zero_shot, "the sites' test splits")}
    return results


def _gate(gate: Gate, updates: dict[str, Update], received: Payload | None, book: ResultsBook, rnd: int) -> list[str]:
    """The sites whose updates pass the server's checks; the others are missing from the round, with the reason.
    RunStopped when none passes."""
    reference = {k: v.shape for k, v in (received or {}).items()} or None
    held, why = {}, {}
    for name, update in updates.items():
        try:
            shapes = check_update(update.payload, update.weight, reference)
            held[name] = (tuple(sorted(shapes.items())), update.record.classes, float(update.weight))
        except ContributionError as exc:
            why[name] = str(exc)
    refused = gate.refuse_minority(held)
    why.update(refused)
    for name, reason in sorted(why.items()):
        book.reject(name, rnd + 1, "train", reason)
        log.error("update of %s for round %d rejected, not aggregated: %s", name, rnd + 1, reason)
    accepted = sorted((s for s in held if s not in refused), key=site_order)
    if not accepted:
        raise RunStopped(f"round {rnd + 1}: no update passed the gate: " + "; ".join(
            f"{s}: {r}" for s, r in sorted(why.items())))
    return accepted


def _global_accuracy(sites: list, received: Payload | None) -> dict[str, Any]:
    evaluations = [site.evaluate_global(received) for site in sites if site.test_set is not None]
    samples = sum(e["samples"] for e in evaluations)
    return {"accuracy": _weighted([(e, e["samples"]) for e in evaluations]), "samples": samples,
            "loss": sum(e["loss"] * e["samples"] for e in evaluations) / samples if samples else None}
