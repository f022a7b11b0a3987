"""Server side: the gate that refuses bad updates before they are combined, and the plaintext aggregator behind it
(eq. 6, `protocol.weighted_mean`, the same function the in-process runner uses); the CKKS one is in he/aggregator.py.

An update is refused, logged, and reported to the results collector (event CONTRIBUTION_REJECTED: the site shows
as missing, kind "rejected", for that round) when it is not a WEIGHTS DXO of float arrays, holds NaN or Inf, has
a non-finite or non-positive weight, does not have the global model's keys and shapes, carries no valid round
record (`protocol.RoundRecord`), or was trained on another class list than the federation's (`protocol.Gate`:
the majority's, fixed in the first round).

Multi-modal federations: each modality's adapter is sent only by the sites holding it; the gate compares what
every update must share (`protocol.signature_shapes`: the shared prompt's shapes and the adapters' shapes, whatever
their modality), and the mean of each entry is over the updates that carry it (MF). An adapter group that one site
alone sent is reported (event GROUP_WARNING: a `warnings` entry of the results file).

Fewer accepted updates than `min_clients` stop the job (system_panic) with a message that names every missing site
and why; the workflow then stops before it saves a model, so the global model on disk stays the previous round's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey, ReservedKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.abstract.aggregator import Aggregator
from nvflare.app_common.abstract.model import ModelLearnableKey
from nvflare.app_common.app_constant import AppConstants

from ..he import HEADER_KEY as HE_HEADER_KEY
from ..protocol import (
    ContributionError,
    Gate,
    RoundRecord,
    check_update,
    lonely_group_warning,
    lonely_groups,
    signature_shapes,
    site_order,
    weighted_mean,
)
from .constants import CONTRIBUTION_REJECTED, ERROR_HEADER, GROUP_WARNING, META_KEY, REJECTION_PROP, WARNING_PROP

Held = tuple[Shareable, Any, str, float]  # a held update: (the result, its signature, class list, weight)


class GatedAggregator(Aggregator):
    """Holds each round's updates until the round closes, refuses the bad ones (logged, and reported to the results
    collector), then combines the rest; fewer than `min_clients` stop the job. Subclasses say what a valid update
    is (`_inspect`) and how updates are combined (`_combine`): plaintext weighted mean, or the CKKS sum."""

    def __init__(self, min_clients: int = 1):
        super().__init__()
        if isinstance(min_clients, bool) or not isinstance(min_clients, int) or min_clients < 1:
            raise ValueError(f"min_clients must be a positive integer, got {min_clients!r}")
        self.min_clients = min_clients
        self.gate = Gate()
        self._held: dict[str, Held] = {}  # site -> (update, signature, classes, weight)
        self._why: dict[str, str] = {}  # site -> why it has no accepted update this round

    def _inspect(self, dxo: DXO, site: str, fl_ctx: FLContext) -> Any:
        """The update's signature (what every site's update must share: shapes, for CKKS also the key), or
        ContributionError."""
        raise NotImplementedError

    def _combine(self, held: dict[str, Held], fl_ctx: FLContext) -> tuple[list[str], Shareable]:
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
            self.log_warning(
                fl_ctx,
                f"update of {site} for round {_one_based(rnd)} arrived in round {_one_based(current)}: discarded",
            )
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
            record = RoundRecord.from_wire(dxo.get_meta_prop(META_KEY))
            weight = dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND)
            if weight != record.samples_train:
                raise ContributionError(
                    f"its weight ({MetaKey.NUM_STEPS_CURRENT_ROUND}) is {weight!r}, its record "
                    f"says {record.samples_train} training samples"
                )
            signature = self._inspect(dxo, site, fl_ctx)
        except ContributionError as exc:
            self._reject(site, rnd, str(exc), fl_ctx)
            return False
        self._held[site] = (shareable, signature, record.classes, float(record.samples_train))
        return True

    def aggregate(self, fl_ctx: FLContext) -> Shareable:
        rnd = int(fl_ctx.get_prop(AppConstants.CURRENT_ROUND, 0))
        held, self._held = self._held, {}
        refused = self.gate.refuse_minority({s: (sig, classes, w) for s, (_, sig, classes, w) in held.items()})
        for site, reason in refused.items():
            self._reject(site, rnd, reason, fl_ctx)
            del held[site]
        accepted, model = self._combine(held, fl_ctx) if held else ([], None)
        self._warn_lonely_groups({s: self._keys(held[s][0]) for s in accepted}, rnd, fl_ctx)
        if len(accepted) < self.min_clients:
            self.system_panic(self._shortfall(accepted, rnd, fl_ctx), fl_ctx)
            # nothing new: the workflow stops before it saves a model
            return DXO(DataKind.WEIGHTS, data=dict(global_weights(fl_ctx))).to_shareable()
        return model

    def reset(self, fl_ctx: FLContext):
        self._held, self._why = {}, {}

    def _keys(self, shareable: Shareable) -> list[str]:
        """The payload keys an accepted update carries (plaintext: its data's; CKKS: its header's)."""
        return [k for k in (from_shareable(shareable).data or {}) if k != HE_HEADER_KEY]

    def _warn_lonely_groups(self, senders: dict[str, list[str]], rnd: int, fl_ctx: FLContext) -> None:
        for modality, site in lonely_groups(senders).items():
            warning = lonely_group_warning(modality, site, rnd + 1)
            self.log_warning(fl_ctx, warning["message"])
            fl_ctx.set_prop(WARNING_PROP, warning, private=True, sticky=False)
            self.fire_event(GROUP_WARNING, fl_ctx)

    def _reject(self, site: str, rnd: Any, reason: str, fl_ctx: FLContext) -> None:
        rnd1 = _one_based(rnd)
        self._why[site] = f"rejected: {reason}"
        self.log_error(fl_ctx, f"update of {site} for round {rnd1} rejected, not aggregated: {reason}")
        fl_ctx.set_prop(REJECTION_PROP, {"site": site, "round": rnd1, "error": reason}, private=True, sticky=False)
        self.fire_event(CONTRIBUTION_REJECTED, fl_ctx)

    def _shortfall(self, accepted: list[str], rnd: int, fl_ctx: FLContext) -> str:
        sites = sorted((c.name for c in fl_ctx.get_engine().get_clients()), key=site_order)
        missing = [f"{s} ({self._why.get(s, 'no answer')})" for s in sites if s not in accepted]
        head = (
            f"no site completed round {rnd + 1}"
            if not accepted
            else f"only {len(accepted)} site(s) completed round {rnd + 1} ({', '.join(accepted)})"
        )
        return (
            f"stopping the job: {head}, min_clients is {self.min_clients}; missing: {'; '.join(missing)}. The "
            f"global model of round {rnd} stays on disk: resume from it (README: Reliability)"
        )


class ValidatingAggregator(GatedAggregator):
    """Plaintext: the sample-weighted mean (eq. 6, `protocol.weighted_mean`) of the updates that passed the gate."""

    def __init__(
        self, min_clients: int = 1, expected_data_kind: str = DataKind.WEIGHTS, weigh_by_local_iter: bool = True
    ):
        """
        Args:
            min_clients: the fewest accepted updates a round may aggregate (the workflow's min_clients).
            expected_data_kind / weigh_by_local_iter: accepted for jobs made before 0.2, which name them; the mean is
                always of WEIGHTS, weighted by the sites' training samples.
        """
        super().__init__(min_clients)
        if expected_data_kind != DataKind.WEIGHTS or weigh_by_local_iter is not True:
            raise ValueError(
                "ValidatingAggregator averages WEIGHTS weighted by each site's training samples; drop "
                "expected_data_kind / weigh_by_local_iter from the job's aggregator arguments"
            )
        self.expected_data_kind = expected_data_kind
        self.weigh_by_local_iter = weigh_by_local_iter

    def _inspect(self, dxo: DXO, site: str, fl_ctx: FLContext) -> Any:
        if HE_HEADER_KEY in (dxo.data or {}):
            raise ContributionError(
                "a CKKS-encrypted update reached the plaintext aggregator: the sites run the "
                "job made with --he, the server does not (every participant must run one job)"
            )
        reference = {k: v.shape for k, v in global_weights(fl_ctx).items() if isinstance(v, np.ndarray)} or None
        shapes = check_update(dxo.data, dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND), reference)
        return signature_shapes(shapes)

    def _combine(self, held: dict[str, Held], fl_ctx: FLContext) -> tuple[list[str], Shareable]:
        accepted = sorted(held, key=site_order)  # one fixed order: the float32 sums are the same on every run
        if all(not held[s][1] for s in accepted):  # `local`: nothing is sent, the global model stays empty
            return accepted, DXO(DataKind.WEIGHTS, data={}).to_shareable()
        mean = weighted_mean((from_shareable(held[s][0]).data, held[s][3]) for s in accepted)
        self.log_info(fl_ctx, f"aggregated {len(accepted)} updates (weights {[int(held[s][3]) for s in accepted]})")
        return accepted, DXO(DataKind.WEIGHTS, data=mean, meta={"nr_aggregated": len(accepted)}).to_shareable()


def _one_based(rnd: Any) -> int | None:
    return int(rnd) + 1 if isinstance(rnd, int) else None


def global_weights(fl_ctx: FLContext) -> dict:
    """The current global model's entries (empty before the first aggregation)."""
    model = fl_ctx.get_prop(AppConstants.GLOBAL_MODEL)
    return dict(model.get(ModelLearnableKey.WEIGHTS) or {}) if model else {}
