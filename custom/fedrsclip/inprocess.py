"""The in-process runner: every site in one Python process, with the FLARE job's semantics: the same round at each
site (`Site.run_round`: evaluate the received model, train, check what leaves), the same gate
(`protocol.check_update` and `protocol.Gate`), the same weighted mean (`protocol.weighted_mean`), the same final
evaluation, and the same results file (`fedrsclip.results_file`). For tests, quick experiments and debugging the
method without FLARE. What only this runner can do, because every site is at hand: `dpac.negatives: peers` (each
site sees the others' shared prompts of the previous round), the zero-shot reference over every site's test
split, the global model's accuracy with the shared prompt alone (`global` in each round), and for multi-label
scenes the metrics of every site's final predictions pooled (`pooled`; the FLARE server has the weighted mean of
the sites' rows only).

A site that cannot be built (its data, its configuration or its saved state is wrong) is missing from every round
with the reason in the results' errors, as a FLARE site whose tasks fail; the others go on.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from tqdm.auto import tqdm

from .algorithms import get_algorithm
from .config import Config, ConfigError
from .data.errors import DataError
from .data.manifest import centralized
from .factory import load_shared, make_site
from .mim import inactive_reason
from .multilabel import metrics_by_site
from .protocol import (
    SHARED,
    ContributionError,
    FinalRecord,
    Gate,
    Payload,
    PayloadError,
    Update,
    check_update,
    key_metric,
    lonely_group_warning,
    lonely_groups,
    payload_nbytes,
    signature_shapes,
    site_order,
    weighted_mean,
)
from .results_file import ResultsBook
from .zeroshot import chance_warning
from .zeroshot import pool as pool_zero_shot

log = logging.getLogger(__name__)

IN_TIME = "in-time: each round's received accuracy, weighted by training samples (as FLARE's IntimeModelSelector)"
FINAL = "final evaluation"


class RunStopped(RuntimeError):
    """A round could not be completed: no update passed the gate (as a FLARE job without --min-clients)."""


SETUP_ERRORS = {DataError: "data", ConfigError: "config", PayloadError: "state"}  # a site that cannot be built


def _weighted(evaluations: list[tuple[dict, float]], metric: str = "accuracy") -> float | None:
    usable = [(e[metric], w) for e, w in evaluations if e.get(metric) is not None and w]
    return sum(a * w for a, w in usable) / sum(w for _, w in usable) if usable else None


def _build_sites(cfg: Config, names: list[str], manifest, shared, state_dir, progress, book: ResultsBook) -> list:
    """Every site that can be built; the others are recorded with their reason (task "setup")."""
    sites = []
    for name in names:
        try:
            sites.append(make_site(cfg, name, manifest, shared, state_dir, progress=progress))
        except tuple(SETUP_ERRORS) as exc:
            kind = next(k for t, k in SETUP_ERRORS.items() if isinstance(exc, t))
            message = str(exc) if name in str(exc) else f"{name}: {exc}"
            log.error("%s cannot take part (%s): %s", name, kind, message)
            book.add_error(name, "setup", None, kind, message, train=False)
    return sites


def run_inprocess(
    cfg: Config,
    manifest: Mapping[str, Any],
    state_dir: str | Path | None = None,
    progress: bool = True,
    data_description: str | None = None,
    pooled: bool = False,
) -> dict[str, Any]:
    """Run cfg.train.rounds rounds over every site of `manifest` (`pooled`: all of its data at one site, the
    centralized reference); returns the results (the results file's content, fedrsclip.results_file).

    Raises RunStopped when a site's update is refused by the gate, DataError / PayloadError as a site does."""
    if pooled:
        manifest = centralized(manifest)
    algorithm = get_algorithm(cfg.algorithm)
    names = sorted(manifest["sites"], key=site_order)
    shared = load_shared(cfg)
    book = ResultsBook("in-process", sites=names, num_rounds=cfg.train.rounds, dataset=manifest.get("dataset"))
    data = (
        data_description or f"manifest of {manifest.get('dataset', '?')} ({len(names)} site{'s' * (len(names) != 1)})"
    )
    sites = _build_sites(cfg, names, manifest, shared, state_dir, progress, book)
    if not sites:
        book.describe({"algorithm": cfg.algorithm, "data": data})
        book.status = "failed"
        book.finish()
        return book.snapshot()
    description = sites[0].run_description(data)
    book.describe(description)
    _note_mim(cfg, sites, book)
    gate = Gate()
    received: Payload | None = None
    last_shared: dict[str, np.ndarray] = {}
    for rnd in tqdm(range(cfg.train.rounds), desc="rounds", disable=not progress):
        book.round_started(rnd + 1)
        updates: dict[str, Update] = {}
        for site in sites:
            others = [v for k, v in last_shared.items() if k != site.name]
            peers = np.stack(others) if cfg.dpac.negatives == "peers" and others else None
            update = site.run_round(
                received,
                rnd,
                peers=peers,
                description=description if rnd == 0 else None,
                setup=site.setup_timings if rnd == 0 else None,
            )
            updates[site.name] = update
            book.add_update(site.name, update.record)
        for name in names:  # a site that could not be built is missing from every round, as on FLARE
            if name not in updates and any(e["site"] == name and e["task"] == "setup" for e in book.errors):
                book.rounds[rnd + 1]["missing"][name] = {
                    "missing": True,
                    "kind": "setup",
                    "error": "the site could not be built (see errors)",
                }
        if rnd > 0:  # the model received this round is the global model after round rnd
            evaluations = [(u.record.received, u.weight) for u in updates.values()]
            metric = key_metric(evaluations[0][0])
            book.consider_best(rnd, _weighted(evaluations, metric), IN_TIME, metric)
        accepted = _gate(gate, updates, received, book, rnd)
        if algorithm.federated:
            received = weighted_mean((updates[s].payload, updates[s].weight) for s in accepted)
            last_shared = {s: updates[s].payload[SHARED] for s in accepted if SHARED in updates[s].payload}
            for modality, only in lonely_groups({s: updates[s].payload for s in accepted}).items():
                warning = lonely_group_warning(modality, only, rnd + 1)
                if book.warn(warning):
                    log.warning(warning["message"])
        record = book.round_done(rnd + 1)
        if algorithm.federated:  # the global model alone (for prompts: the shared prompt, no private part)
            record["global"] = _global_accuracy(sites, received)
        log.info("%s", book.progress_line(rnd + 1))
    for site in sites:
        evaluation = site.evaluate(received)
        book.add_final(
            site.name,
            FinalRecord(
                received=evaluation, bytes_down=payload_nbytes(received or {}), modalities=site.evaluate_modalities()
            ),
        )
    book.finish()
    final = book.final_best()
    if final is not None:
        book.consider_best(
            final[0], final[1], FINAL, key_metric(next(v for v in book.final.values() if not v.get("missing")))
        )
    results = book.snapshot()
    zero_shot = pool_zero_shot([site.zero_shot() for site in sites if site.test_set is not None])
    if zero_shot and zero_shot.get("accuracy") is not None:  # over every site's test split (the per-class parts
        # stay in the sites' predictions)
        results["zero_shot"] = {
            **{k: zero_shot[k] for k in ("accuracy", "samples", "prompt", "chance")},
            "warning": chance_warning(zero_shot, "the sites' test splits"),
        }
    elif zero_shot:  # multi-label scenes: the ranking measure (a zero-shot model has no threshold)
        results["zero_shot"] = {k: zero_shot[k] for k in ("mAP", "samples", "prompt")}
    if sites[0].multi_label:
        results["pooled"] = _pooled(sites)
    return results


def _note_mim(cfg: Config, sites: list, book: ResultsBook) -> None:
    """Say (log and results) when MIM is asked for but no site holds paired modalities."""
    if not any(getattr(s, "mim", False) for s in sites):
        return
    reason = inactive_reason({s.name: getattr(s, "modalities", ()) for s in sites})
    if reason:
        log.warning(reason)
        book.warn({"kind": "mim_inactive", "round": None, "message": f"{reason}; multimodal.mim has no effect"})


def _pooled(sites: list) -> dict:
    """Multi-label metrics of every site's final predictions pooled (fedrsclip.multilabel.metrics_by_site)."""
    per_site = {}
    for site in sites:
        if site.test_set is not None:
            scores, _ = site.trainer.predict(site.test_set)
            per_site[site.name] = (scores, site.test_set.labels)
    return metrics_by_site(per_site)["pooled"] if per_site else {}


def _gate(gate: Gate, updates: dict[str, Update], received: Payload | None, book: ResultsBook, rnd: int) -> list[str]:
    """The sites whose updates pass the server's checks; the others are missing from the round, with the reason.
    RunStopped when none passes."""
    reference = {k: v.shape for k, v in (received or {}).items()} or None
    held, why = {}, {}
    for name, update in updates.items():
        try:
            shapes = check_update(update.payload, update.weight, reference)
            held[name] = (signature_shapes(shapes), update.record.classes, float(update.weight))
        except ContributionError as exc:
            why[name] = str(exc)
    refused = gate.refuse_minority(held)
    why.update(refused)
    for name, reason in sorted(why.items()):
        book.reject(name, rnd + 1, "train", reason)
        log.error("update of %s for round %d rejected, not aggregated: %s", name, rnd + 1, reason)
    accepted = sorted((s for s in held if s not in refused), key=site_order)
    if not accepted:
        raise RunStopped(
            f"round {rnd + 1}: no update passed the gate: " + "; ".join(f"{s}: {r}" for s, r in sorted(why.items()))
        )
    return accepted


def _global_accuracy(sites: list, received: Payload | None) -> dict[str, Any]:
    evaluations = [site.evaluate_global(received) for site in sites if site.test_set is not None]
    samples = sum(e["samples"] for e in evaluations)
    out = {
        "accuracy": _weighted([(e, e["samples"]) for e in evaluations]),
        "samples": samples,
        "loss": sum(e["loss"] * e["samples"] for e in evaluations) / samples if samples else None,
    }
    for metric in ("micro_f1", "macro_f1", "mAP"):  # multi-label: the same test-sample-weighted means
        if any(e.get(metric) is not None for e in evaluations):
            out[metric] = _weighted([(e, e["samples"]) for e in evaluations], metric)
    return out
