"""Server side: a gate that refuses bad updates before they are combined; the plaintext aggregator behind it
(FLARE's sample-weighted in-time mean) is here, the CKKS one in he_aggregator.py.

An update is refused, logged, and reported to the results collector (event CONTRIBUTION_REJECTED: the site shows
as missing, kind "rejected", for that round) when it is not a WEIGHTS DXO of float arrays, holds NaN or Inf, has
a non-finite or non-positive weight, does not have the global model's keys and shapes, or was trained on another
class list than the federation's (`classes` in the site's round record: `fedrsclip.site.class_fingerprint`).

The class list, and in round 1 (the global model starts empty) the shapes, are the majority's: updates are held
until the round closes and compared then, so one bad site answering first cannot lock the others out. The class
list chosen in the first round holds for the rest of the job.

Fewer accepted updates than `min_clients` (default 1; `fedrsclip job --min-clients` sets it) stop the job
(system_panic) with a message that names every missing site and why; the workflow then stops before it saves a
model, so the global model on disk stays the previous round's.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np

from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey, ReservedKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.abstract.model import ModelLearnableKey
from nvflare.app_common.abstract.aggregator import Aggregator
from nvflare.app_common.aggregators.intime_accumulate_model_aggregator import InTimeAccumulateWeightedAggregator
from nvflare.app_common.app_constant import AppConstants

from ..he import HEADER_KEY as HE_HEADER_KEY
from .executor import ERROR_HEADER, META_KEY
from .report import site_order

CONTRIBUTION_REJECTED = "fedrsclip.contribution_rejected"  # event; its details in the REJECTION_PROP context prop
REJECTION_PROP = "fedrsclip.rejection"  # {"site", "round" (1-based), "error"}


class ContributionError(ValueError):
    """An update that must not be averaged into the global model."""


def check_update(data: Any, weight: Any, reference: dict[str, tuple[int, ...]] | None) -> dict[str, tuple[int, ...]]:
    """The shapes of a valid update; ContributionError says what is wrong with an invalid one."""
    if not isinstance(data, dict):
        raise ContributionError(f"the update is a {type(data).__name__}, not a dict of arrays")
    shapes = {}
    for key, value in data.items():
        if not isinstance(value, np.ndarray):
            raise ContributionError(f"{key} is a {type(value).__name__}, not an array")
        if not np.issubdtype(value.dtype, np.floating):
            raise ContributionError(f"{key} has dtype {value.dtype}, expected floats")
        bad = int(value.size - np.isfinite(value).sum())
        if bad:
            raise ContributionError(f"{key} holds {bad} NaN or Inf values (of {value.size})")
        shapes[key] = tuple(value.shape)
    if weight is not None and (isinstance(weight, bool) or not isinstance(weight, (int, float))
                               or not math.isfinite(weight) or weight <= 0):
        raise ContributionError(f"its weight ({MetaKey.NUM_STEPS_CURRENT_ROUND}) is {weight!r}, expected a positive "
                                "number of training samples")
    if reference:
        if set(shapes) != set(reference):
            raise ContributionError(f"its entries {sorted(shapes)} are not the global model's {sorted(reference)}")
        wrong = {k: v for k, v in shapes.items() if v != reference[k]}
        if wrong:
            key = next(iter(wrong))
            raise ContributionError(f"{key} has shape {wrong[key]}, the global model's is {reference[key]}")
    return shapes


class GatedAggregator(Aggregator):
    """Holds each round's updates until the round closes, refuses the bad ones (logged, and reported to the results
    collector), then combines the rest; fewer than `min_clients` stop the job. Subclasses say what a valid update
    is (`_inspect`) and how updates are combined (`_combine`): plaintext weighted mean, or the CKKS sum."""

    def __init__(self, min_clients: int = 1):
        super().__init__()
        if isinstance(min_clients, bool) or not isinstance(min_clients, int) or min_clients < 1:
            raise ValueError(f"min_clients must be a positive integer, got {min_clients!r}")
        self.min_clients = min_clients
        self.classes: str | None = None  # the federation's class list, fixed in its first round
        self._held: dict[str, tuple[Shareable, dict]] = {}  # site -> (update, {"signature", "classes", "weight"})
        self._why: dict[str, str] = {}  # site -> why it has no accepted update this round

    def _inspect(self, dxo: DXO, site: str, fl_ctx: FLContext) -> Any:
        """The update's signature (what every site's update must share: shapes, for CKKS also the key), or
        ContributionError."""
        raise NotImplementedError

    def _combine(self, held: dict[str, tuple[Shareable, dict]], fl_ctx: FLContext) -> tuple[list[str], Shareable]:
        """(the sites combined, the new global model) from the updates that passed every check."""
        raise NotImplementedError

    def handle_event(self, event_type: str, fl_ctx: FLContext):
        if event_type == EventType.BEFORE_PROCESS_SUBMISSION:  # failed tasks never reach accept(): note why
            result = fl_ctx.get_prop(FLContextKey.TASK_RESULT)
            rc = result.get_return_code(ReturnCode.OK) if isinstance(result, Shareable) else ReturnCode.OK
            if rc != ReturnCode.OK:
                site = fl_ctx.get_peer_context().get_identity_name(default="?")
                self._why[site] = f"failed: {result.get_header(ERROR_HEADER) or rc}"

    def accept(self, shareable: Shareable, fl_ctx: FLContext) -> bool:
        site = shareable.get_peer_prop(key=ReservedKey.IDENTITY_NAME, default="?")
        rnd = shareable.get_cookie(AppConstants.CONTRIBUTION_ROUND)
        if shareable.get_return_code(ReturnCode.OK) != ReturnCode.OK:
            return False
        current = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
        if rnd != current:  # a late answer to an earlier round's task: never held into this round
            self.log_warning(fl_ctx, f"update of {site} for round {_one_based(rnd)} arrived in round "
                                     f"{_one_based(current)}: discarded")
            return False
        if site in self._held:
            self.log_warning(fl_ctx, f"a second update of {site} for round {_one_based(rnd)} ignored")
            return False
        try:
            try:
                dxo = from_shareable(shareable)
            except ValueError as exc:
                raise ContributionError(f"not a DXO ({exc})") from exc
            if dxo.data_kind != DataKind.WEIGHTS:
                raise ContributionError(f"data kind {dxo.data_kind}, expected {DataKind.WEIGHTS}")
            signature = self._inspect(dxo, site, fl_ctx)
        except ContributionError as exc:
            self._reject(site, rnd, str(exc), fl_ctx)
            return False
        record = dxo.get_meta_prop(META_KEY)
        classes = (record.get("metrics") or {}).get("classes") if isinstance(record, dict) else None
        self._held[site] = (shareable, {"signature": signature, "classes": classes,
                                        "weight": dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND) or 1})
        return True

    def aggregate(self, fl_ctx: FLContext) -> Shareable:
        rnd = int(fl_ctx.get_prop(AppConstants.CURRENT_ROUND, 0))
        held, self._held = self._held, {}
        self._refuse_minority(held, rnd, fl_ctx)
        accepted, model = self._combine(held, fl_ctx) if held else ([], None)
        if len(accepted) < self.min_clients:
            self.system_panic(self._shortfall(accepted, rnd, fl_ctx), fl_ctx)
            # nothing new: the workflow stops before it saves a model
            return DXO(DataKind.WEIGHTS, data=dict(_global_weights(fl_ctx))).to_shareable()
        return model

    def reset(self, fl_ctx: FLContext):
        self._held, self._why = {}, {}

    # ---- helpers --------------------------------------------------------------------------------------------------
    def _refuse_minority(self, held: dict[str, tuple[Shareable, dict]], rnd: int, fl_ctx: FLContext) -> None:
        """Drop (and report) the updates whose class list or signature differ from the majority's."""
        if self.classes is None:
            self.classes = _majority({s: v["classes"] for s, (_, v) in held.items()}, held)
        for site in [s for s, (_, v) in held.items() if v["classes"] != self.classes]:
            self._reject(site, rnd, f"trained on another class list ({held[site][1]['classes']}; the federation's "
                                    f"is {self.classes}): check this site's manifest", fl_ctx)
            del held[site]
        signature = {s: v["signature"] for s, (_, v) in held.items()}
        expected = _majority(signature, held)
        for site in [s for s in held if signature[s] != expected]:
            self._reject(site, rnd, f"its update {_describe(signature[site])} differs from the other sites' "
                                    f"{_describe(expected)}", fl_ctx)
            del held[site]

    def _reject(self, site: str, rnd: Any, reason: str, fl_ctx: FLContext) -> None:
        rnd1 = _one_based(rnd)
        self._why[site] = f"rejected: {reason}"
        self.log_error(fl_ctx, f"update of {site} for round {rnd1} rejected, not aggregated: {reason}")
        fl_ctx.set_prop(REJECTION_PROP, {"site": site, "round": rnd1, "error": reason}, private=True, sticky=False)
        self.fire_event(CONTRIBUTION_REJECTED, fl_ctx)

    def _shortfall(self, accepted: list[str], rnd: int, fl_ctx: FLContext) -> str:
        sites = sorted((c.name for c in fl_ctx.get_engine().get_clients()), key=site_order)
        missing = [f"{s} ({self._why.get(s, 'no answer')})" for s in sites if s not in accepted]
        head = (f"no site completed round {rnd + 1}" if not accepted else
                f"only {len(accepted)} site(s) completed round {rnd + 1} ({', '.join(accepted)})")
        return (f"stopping the job: {head}, min_clients is {self.min_clients}; missing: {'; '.join(missing)}. The "
                f"global model of round {rnd} stays on disk: resume from it (README: Reliability)")


class ValidatingAggregator(GatedAggregator):
    """Plaintext: FLARE's sample-weighted in-time mean (eq. 6) of the updates that passed the gate."""

    def __init__(self, min_clients: int = 1, expected_data_kind: str = DataKind.WEIGHTS,
                 weigh_by_local_iter: bool = True, **kwargs):
        """
        Args:
            min_clients: the fewest accepted updates a round may aggregate (the workflow's min_clients).
            expected_data_kind / weigh_by_local_iter / kwargs: InTimeAccumulateWeightedAggregator's.
        """
        super().__init__(min_clients)
        self._mean = InTimeAccumulateWeightedAggregator(expected_data_kind=expected_data_kind,
                                                        weigh_by_local_iter=weigh_by_local_iter, **kwargs)

    def handle_event(self, event_type: str, fl_ctx: FLContext):
        super().handle_event(event_type, fl_ctx)
        self._mean.handle_event(event_type, fl_ctx)  # it sets itself up at START_RUN

    def _inspect(self, dxo: DXO, site: str, fl_ctx: FLContext) -> Any:
        if HE_HEADER_KEY in (dxo.data or {}):
            raise ContributionError("a CKKS-encrypted update reached the plaintext aggregator: the sites run the "
                                    "job made with --he, the server does not (every participant must run one job)")
        shapes = check_update(dxo.data, dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND),
                              _shapes(_global_weights(fl_ctx)))
        return tuple(sorted(shapes.items()))

    def _combine(self, held: dict[str, tuple[Shareable, dict]], fl_ctx: FLContext) -> tuple[list[str], Shareable]:
        if all(not v["signature"] for _, v in held.values()):  # `local`: nothing is sent, the global model stays empty
            return sorted(held, key=site_order), DXO(DataKind.WEIGHTS, data={}).to_shareable()
        self._mean.reset(fl_ctx)
        accepted = []
        for site in sorted(held, key=site_order):
            if self._mean.accept(held[site][0], fl_ctx):
                accepted.append(site)
            else:
                self._reject(site, fl_ctx.get_prop(AppConstants.CURRENT_ROUND),
                             "refused by FLARE's aggregator (see the server log)", fl_ctx)
        return accepted, self._mean.aggregate(fl_ctx)


def _describe(signature: Any) -> str:
    return str(dict(signature)) if isinstance(signature, tuple) and all(
        isinstance(x, tuple) and len(x) == 2 for x in signature) else str(signature)


def _one_based(rnd: Any) -> int | None:
    return int(rnd) + 1 if isinstance(rnd, int) else None


def _global_weights(fl_ctx: FLContext) -> dict:
    model = fl_ctx.get_prop(AppConstants.GLOBAL_MODEL)
    return dict(model.get(ModelLearnableKey.WEIGHTS) or {}) if model else {}


def _shapes(weights: dict) -> dict[str, tuple[int, ...]] | None:
    shapes = {k: tuple(np.shape(v)) for k, v in weights.items() if isinstance(v, np.ndarray)}
    return shapes or None


def _majority(values: dict[str, Any], held: dict[str, tuple[Shareable, dict]]) -> Any:
    """The most common value; ties go to the larger sample count, then to the first site."""
    if not values:
        return None
    counts, samples = Counter(values.values()), Counter()
    for site, value in values.items():
        samples[value] += held[site][1]["weight"]
    first = {v: min((s for s in values if values[s] == v), key=site_order) for v in counts}
    return sorted(counts, key=lambda v: (-counts[v], -samples[v], site_order(first[v])))[0]
