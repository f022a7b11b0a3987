"""What may leave a site, and (opt-in) differential privacy of it. Applied in one place: at the end of
`Site.run_round`, which the FLARE executor and the in-process runner both call, so the update they send (the DXO's
data and meta, the in-process aggregation's input) has always been through it.

The allow-list (`check_outgoing`): a payload carries exactly the algorithm's `sends` keys (for full-model
algorithms, `ALL_WEIGHTS`: exactly the trainer's weight entries), each a finite float array of the trainer's shape;
its round record (`protocol.RoundRecord`) carries only named fields and the listed metric names, with numbers as
values. Anything else - a private prompt, an extra key, a NaN, a metric of the raw update - raises `PrivacyError`
and nothing is sent (the local state is not saved).

Differential privacy (privacy.dp_clip_norm / dp_noise_multiplier): the UPDATE of the shared prompt (sent minus
the shared prompt the round started from: the received global model, or in round 1 the deterministic init) is
clipped to L2 norm dp_clip_norm and Gaussian noise of std dp_noise_multiplier x dp_clip_norm is added to it, at the
site, before the allow-list check and before anything leaves (later: before encryption). Every round is one
Gaussian mechanism on the site's whole data set (sample rate 1: full participation, one release per round);
opacus's RDP accountant turns (noise multiplier, releases so far) into the (epsilon, delta) the site reports in its
round metrics (dp_epsilon, dp_delta; dp_rounds is the number of releases). The site counts its releases itself, in
its saved state (`Site.dp_releases`), so a restarted or resumed site keeps counting and no round number a server
sends can lower the count. This is record-level DP for a site's data against whoever sees its updates
(the server, or anyone who sees the aggregate), assuming a site takes part at most once per round. The update's
norm before clipping, and whether it was clipped, describe the raw update: they go to the site's log, never out.
The metrics that do leave (training loss, accuracy on the site's test split, sample counts) are computed without
noise: the guarantee covers the shared prompt, not them (README: Threat model).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Mapping

import numpy as np

from .algorithms import ALL_WEIGHTS, SHARED, Algorithm
from .config import Config
from .protocol import ContributionError, Payload, RoundRecord, RoundResult, as_float32, payload_nbytes, site_seed

log = logging.getLogger(__name__)

DP_SEED_SALT = 104_729  # keeps the noise stream apart from the training seeds derived from the same numbers


class PrivacyError(RuntimeError):
    """A site was about to send something it must not (a key outside the allow-list, a bad array)."""


def allowed_keys(
    algorithm: Algorithm, expected_shapes: Mapping[str, tuple] | None, fused: tuple[str, ...] = ()
) -> set[str]:
    """The payload entries `algorithm` sends (for ALL_WEIGHTS: the trainer's weight entries), with the adapters of
    the modalities `fused` (MF on: the site's own modalities; `Algorithm.outgoing`)."""
    sends = algorithm.outgoing(fused)
    if sends == ALL_WEIGHTS:
        if expected_shapes is None:
            raise PrivacyError(
                f"{algorithm.name} sends every model weight: the check needs the trainer's shapes "
                "to know which keys are weights"
            )
        return set(expected_shapes)
    return set(sends)


def check_outgoing(
    payload: Mapping[str, Any],
    algorithm: Algorithm,
    expected_shapes: Mapping[str, tuple] | None = None,
    site: str = "site",
    record: RoundRecord | None = None,
    fused: tuple[str, ...] = (),
) -> dict[str, np.ndarray]:
    """Refuse any update that is not exactly the algorithm's allow-list: the payload's entries correctly shaped
    floats, finite as the float32 that is sent; the record's fields and metric names those of
    `protocol.RoundRecord`, its bytes_up the payload's. `fused`: the modalities whose adapters this site sends (MF;
    no other modality's ever leaves). Returns the payload as float32 arrays (what is then sent)."""
    allowed = allowed_keys(algorithm, expected_shapes, fused)
    extra = sorted(set(payload) - allowed)
    if extra:
        raise PrivacyError(
            f"{site}: refusing to send {extra[:5]}{' ...' if len(extra) > 5 else ''}: algorithm "
            f"{algorithm.name} may send only {sorted(allowed)[:5]}; nothing was sent"
        )
    missing = sorted(allowed - set(payload))
    if missing:
        raise PrivacyError(f"{site}: the outgoing payload lacks {missing[:5]} that algorithm {algorithm.name} sends")
    out = {}
    for key, value in payload.items():
        array = np.asarray(value)
        if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
            raise PrivacyError(f"{site}: refusing to send {key!r} of dtype {array.dtype}; only numbers are sent")
        if expected_shapes is not None and key in expected_shapes and array.shape != tuple(expected_shapes[key]):
            raise PrivacyError(
                f"{site}: refusing to send {key!r} of shape {array.shape}; the model's is {tuple(expected_shapes[key])}"
            )
        if np.issubdtype(array.dtype, np.floating):
            array, bad = as_float32(array)  # checked as it is sent: beyond float32's range would arrive as inf
        else:
            bad = 0
        if bad:
            raise PrivacyError(
                f"{site}: refusing to send {key!r}: it holds NaN or Inf values (beyond float32's range counts as Inf)"
            )
        out[key] = array
    if record is not None:
        try:
            record.check()
        except ContributionError as exc:
            raise PrivacyError(f"{site}: refusing to send the round record: {exc}; nothing was sent") from None
        if record.bytes_up != payload_nbytes(out):
            raise PrivacyError(
                f"{site}: the round record says {record.bytes_up} bytes up, the payload holds "
                f"{payload_nbytes(out)}; nothing was sent"
            )
    log.info("%s: outgoing keys: %s", site, sorted(out))
    return out


def clip_and_noise(
    update: np.ndarray, clip: float, noise_multiplier: float, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, float]]:
    """L2-clip `update` to `clip`, then add N(0, (noise_multiplier * clip)^2) to every entry."""
    if not clip > 0:
        raise ValueError(f"clip must be positive; got {clip!r}")
    if not noise_multiplier >= 0:
        raise ValueError(f"noise_multiplier must be >= 0; got {noise_multiplier!r}")
    update = np.asarray(update, dtype=np.float64)
    norm = float(np.linalg.norm(update))
    clipped = update * min(1.0, clip / norm) if norm > 0 else update.copy()
    std = noise_multiplier * clip
    noised = clipped + rng.normal(0.0, std, size=update.shape) if std > 0 else clipped
    return noised, {"dp_update_norm": norm, "dp_clipped": norm > clip, "dp_noise_std": std}


def dp_epsilon(noise_multiplier: float, rounds: int, delta: float) -> float:
    """Epsilon after `rounds` full-participation Gaussian releases (opacus RDP accountant); inf without noise."""
    if noise_multiplier <= 0:
        return math.inf
    from opacus.accountants import RDPAccountant  # imported only when DP is on: opacus imports much of torch

    accountant = RDPAccountant()
    for _ in range(rounds):
        accountant.step(noise_multiplier=noise_multiplier, sample_rate=1.0)
    return float(accountant.get_epsilon(delta=delta))


def dp_rng(dp_seed: int | None, site: str, round_idx: int) -> np.random.Generator:
    """The noise generator: reproducible per site and round from privacy.dp_seed, or from OS entropy when null (the
    job's seeds are known to the server, which could then regenerate the noise and subtract it)."""
    if dp_seed is None:
        return np.random.default_rng(int.from_bytes(os.urandom(16), "little"))
    return np.random.default_rng([site_seed(dp_seed + DP_SEED_SALT, site), round_idx])


def dp_warning(cfg: Config) -> str | None:
    """Why the privacy settings give no DP guarantee although DP looks configured, or None."""
    pc = cfg.privacy
    if pc.dp_clip_norm is not None and not pc.dp_noise_multiplier > 0:
        return (
            f"privacy.dp_clip_norm is {pc.dp_clip_norm} but privacy.dp_noise_multiplier is 0: clipping alone "
            "gives no differential-privacy guarantee (epsilon is unbounded and written as null); set "
            "privacy.dp_noise_multiplier (e.g. 1.0) for DP, or privacy.dp_clip_norm: null for none"
        )
    return None


def protect_outgoing(
    result: RoundResult,
    cfg: Config,
    site: str,
    round_idx: int,
    reference: np.ndarray | Mapping[str, np.ndarray] | None,
    releases: int,
) -> RoundResult:
    """DP of the update when configured (`reference`: the shared prompt the round started from, or {key: value
    at the round's start} of every entry sent: a multi-modal site's adapters are clipped and noised together with
    its shared prompt, as one vector; `releases`: this site's releases so far, this one included, as the site
    counts them in its saved state: never the round number a server sends, which a resumed, repeated or forged
    round would make too small). The returned metrics gain the accounting (dp_epsilon, dp_delta, dp_rounds: the
    releases, dp_noise_std); the raw update's norm and whether it was clipped are logged here, at the site, and
    nowhere else."""
    if isinstance(releases, bool) or not isinstance(releases, int) or releases < 1:
        raise PrivacyError(f"{site}: {releases!r} is not a count of releases (this round's included)")
    pc = cfg.privacy
    if pc.dp_clip_norm is None or not result.payload:
        return result
    references = {SHARED: reference} if isinstance(reference, np.ndarray) else dict(reference or {})
    if SHARED not in result.payload or set(result.payload) - {k for k, v in references.items() if v is not None}:
        raise PrivacyError(f"{site}: differential privacy needs the value each sent entry started the round from")
    payload: Payload = dict(result.payload)
    keys = sorted(payload)  # one fixed order: the noise stream is reproducible with privacy.dp_seed
    starts = [np.asarray(references[k], dtype=np.float64) for k in keys]
    update = np.concatenate([(np.asarray(payload[k], dtype=np.float64) - s).ravel() for k, s in zip(keys, starts)])
    noised, info = clip_and_noise(update, pc.dp_clip_norm, pc.dp_noise_multiplier, dp_rng(pc.dp_seed, site, round_idx))
    offset = 0
    for key, start in zip(keys, starts):
        payload[key] = (start + noised[offset : offset + start.size].reshape(start.shape)).astype(np.float32)
        offset += start.size
    log.info(
        "%s: DP round %d: update norm %.4g before clipping to %g (%s); kept at this site, never sent",
        site,
        round_idx + 1,
        info["dp_update_norm"],
        pc.dp_clip_norm,
        "clipped" if info["dp_clipped"] else "not clipped",
    )
    metrics = {
        **result.metrics,
        "dp_noise_std": info["dp_noise_std"],
        "dp_epsilon": dp_epsilon(pc.dp_noise_multiplier, releases, pc.dp_delta),
        "dp_delta": pc.dp_delta,
        "dp_rounds": releases,
    }
    return RoundResult(payload=payload, num_samples=result.num_samples, metrics=metrics)
