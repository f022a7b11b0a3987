"""Entropic unbalanced optimal transport between image patches and prompts (CMFAC).

For one image and one class, let ``C in R^{V x P}`` be the cost between the
image's ``V`` local patch features and the class's ``P`` prompt text features
(here ``C_vp = 1 - cos(patch_v, text_p)``, ``P = 2``: shared and private prompt).
The transport plan ``T`` solves (paper eqs. 11-14)::

    min_T  <C, T> + eps * <T, log T - 1>
    s.t.   T 1_P   <= alpha      (row caps: each patch sends at most alpha_v)
           T^T 1_V  = beta       (column masses: each prompt receives beta_p)
           T       >= 0

with the defaults ``alpha = 1/V`` and ``beta = mass/P``; ``mass`` (``gamma``) is the
total transported mass (< 1: only part of the patches is matched, so background
patches can be left out). Paper notation: alpha = row caps (``row_mass``),
beta = column masses (``col_mass``), lambda = ``eps`` (entropic weight).
The class score is ``1 - d_OT`` with ``d_OT = <T*, C>`` (eq. 15).

Solver: with the Gibbs kernel ``K = exp(-C/eps)`` the optimum is
``T = diag(u) K diag(v)``; alternating exact maximisation of the dual gives
``u = min(alpha / (K v), 1)`` (the ``min(., 1)`` is the KKT condition of the
inequality: ``u = exp(-f/eps)`` with multiplier ``f >= 0``) and
``v = beta / (K^T u)``, starting from ``v = 1``. After a ``v``-step the columns are
exact; iterations stop when, for every problem of the batch, the L1 distance of the
row sums ``u * Kv`` to their projection ``min(alpha, Kv)`` (what the next ``u``-step
would make them) is below ``tol`` times the total mass. That residual is zero only at
the fixed point and bounds the cap violation, ``sum_v (T 1 - alpha)_v^+``. At
``max_iter`` the last iterate is used and a warning is logged. The log-domain variant
runs the same iteration, with the same stopping rule, on ``log u``, ``log v`` with
``logsumexp`` and is needed for small ``eps`` (``exp(-C/eps)`` underflows).

The plan is computed without gradient on a detached fp32 copy of the cost; the
distance ``<T, C>`` then carries gradient into ``C`` (so into the features).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .ranges import check_ranges, ranged

__all__ = [
    "OTConfig",
    "OTDivergedError",
    "solve_plan",
    "uniform_plan",
    "cosine_cost",
    "ot_scores",
]

log = logging.getLogger(__name__)
_DIVERGED_HINT = "try `ot.log_domain: true` or a larger `ot.eps`"


@dataclass(frozen=True)
class OTConfig:
    """Settings of the entropic unbalanced OT (config section ``ot``); refused at construction when out of range."""

    eps: float = ranged(0.1, "(0, inf)")
    mass: float = ranged(0.8, "(0, 1]")
    tol: float = ranged(1e-3, "(0, inf)")
    max_iter: int = ranged(100, "[1, inf)")
    log_domain: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, int):
            raise ValueError(f"ot.max_iter must be an integer, got {self.max_iter!r}")
        if not isinstance(self.log_domain, bool):
            raise ValueError(f"ot.log_domain must be true or false, got {self.log_domain!r}")
        check_ranges(self, "ot.")


class OTDivergedError(RuntimeError):
    """The OT plan or distance became non-finite (NaN/inf)."""


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    # fp16/bf16 -> fp32; fp32 stays; fp64 stays (useful for tight tests).
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_cost(cost: Tensor) -> None:
    if not isinstance(cost, Tensor):
        raise TypeError(f"cost must be a torch.Tensor, got {type(cost).__name__}")
    if cost.dim() < 2:
        raise ValueError(f"cost must have shape [..., V, P], got {tuple(cost.shape)}")
    if cost.shape[-1] < 1 or cost.shape[-2] < 1:
        raise ValueError(f"cost needs V >= 1 and P >= 1, got {tuple(cost.shape)}")


def _marginals(
    cost: Tensor, cfg: OTConfig, row_mass: Tensor | None, col_mass: Tensor | None, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """Row caps ``a`` [..., V] and column masses ``b`` [..., P], broadcast to the cost."""
    *lead, V, P = cost.shape
    dev = cost.device
    if row_mass is None:
        a = torch.full((V,), 1.0 / V, dtype=dtype, device=dev)
    else:
        a = torch.as_tensor(row_mass, device=dev).to(dtype)
    if col_mass is None:
        b = torch.full((P,), cfg.mass / P, dtype=dtype, device=dev)
    else:
        b = torch.as_tensor(col_mass, device=dev).to(dtype)
    try:
        a = a.expand(*lead, V)
        b = b.expand(*lead, P)
    except RuntimeError as e:
        raise ValueError(
            f"row_mass {tuple(a.shape)} / col_mass {tuple(b.shape)} do not broadcast to "
            f"the cost's [..., V]={(*lead, V)} / [..., P]={(*lead, P)}"
        ) from e
    if row_mass is not None or col_mass is not None:
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise ValueError("row_mass and col_mass must be finite")
        if (a < 0).any() or (b < 0).any():
            raise ValueError("row_mass and col_mass must be >= 0")
        slack = 1e-6 * max(1.0, float(a.sum(-1).abs().max()) if a.numel() else 1.0)
        if a.numel() and bool((b.sum(-1) > a.sum(-1) + slack).any()):
            raise ValueError(
                "infeasible OT problem: sum(col_mass) exceeds sum(row_mass) "
                "(the prompts must receive no more mass than the patches can send)"
            )
    return a, b


def _raise_if_nonfinite(x: Tensor, what: str, cfg: OTConfig) -> None:
    if not bool(torch.isfinite(x).all()):
        raise OTDivergedError(
            f"OT {what} is not finite (eps={cfg.eps}, log_domain={cfg.log_domain}); "
            f"{_DIVERGED_HINT}, and check the features/cost for NaN or inf."
        )


def _residual(rows: Tensor, projected: Tensor, b: Tensor) -> float:
    """The worst problem's ``||rows - projected||_1 / sum(b)``: the share of the mass the next step would move.

    ``rows = u*Kv`` are the plan's row sums [..., V]; ``projected = min(a, Kv)`` is what they become after the next
    ``u``-step (the projection onto the caps with ``v`` fixed), so the residual is zero exactly at the fixed point
    and bounds the cap violation: ``sum_v (rows_v - a_v)_+ <= residual * sum(b)``.
    """
    moved = (rows - projected).abs().sum(-1)  # [...]
    return float((moved / b.sum(-1).clamp_min(torch.finfo(b.dtype).tiny)).max())


def _iterate_standard(C: Tensor, a: Tensor, b: Tensor, cfg: OTConfig) -> tuple[Tensor, int, float]:
    K = torch.exp(C / -cfg.eps)  # [..., V, P]
    v = torch.ones_like(b)  # [..., P]
    Kv = (K * v.unsqueeze(-2)).sum(-1)  # [..., V]
    u, n_iter, err = torch.ones_like(a), 0, math.inf
    for n_iter in range(1, cfg.max_iter + 1):
        u = torch.clamp(a / Kv, max=1.0)
        v = b / (K * u.unsqueeze(-1)).sum(-2)  # columns exact
        Kv = (K * v.unsqueeze(-2)).sum(-1)  # the next u-step's, computed once
        err = _residual(u * Kv, torch.minimum(a, Kv), b)
        if not err >= cfg.tol:  # converged, or NaN (raised by solve_plan)
            break
    return u.unsqueeze(-1) * K * v.unsqueeze(-2), n_iter, err


def _iterate_log(C: Tensor, a: Tensor, b: Tensor, cfg: OTConfig) -> tuple[Tensor, int, float]:
    logK = C / -cfg.eps  # [..., V, P]
    log_a, log_b = torch.log(a), torch.log(b)
    log_v = torch.zeros_like(b)
    log_Kv = torch.logsumexp(logK + log_v.unsqueeze(-2), dim=-1)  # [..., V]
    log_u, n_iter, err = torch.zeros_like(a), 0, math.inf
    for n_iter in range(1, cfg.max_iter + 1):
        log_u = torch.clamp(log_a - log_Kv, max=0.0)
        log_v = log_b - torch.logsumexp(logK + log_u.unsqueeze(-1), dim=-2)
        log_Kv = torch.logsumexp(logK + log_v.unsqueeze(-2), dim=-1)
        # the standard path's residual, from logs: Kv alone can overflow where u underflows
        err = _residual(torch.exp(log_u + log_Kv), torch.exp(torch.minimum(log_a, log_Kv)), b)
        if not err >= cfg.tol:
            break
    return torch.exp(log_u.unsqueeze(-1) + logK + log_v.unsqueeze(-2)), n_iter, err


def solve_plan(
    cost: Tensor,
    cfg: OTConfig,
    row_mass: Tensor | None = None,
    col_mass: Tensor | None = None,
) -> tuple[Tensor, int]:
    """Entropic unbalanced OT plan for a batch of costs ``[..., V, P]``.

    Solves ``min <C,T> + eps <T, log T - 1>`` s.t. ``T 1 <= a``, ``T^T 1 = b``,
    ``T >= 0`` independently for every leading index (all at once, vectorised).
    ``a`` (``row_mass``, broadcastable to ``[..., V]``) defaults to ``1/V``;
    ``b`` (``col_mass``, broadcastable to ``[..., P]``) defaults to ``cfg.mass/P``.

    Runs under ``torch.no_grad`` on a detached copy of the cost in fp32 (fp64 stays
    fp64). Returns ``(plan, n_iter)``: the plan has the cost's shape and no grad;
    ``n_iter`` is the number of iterations done. Convergence: for every problem of the
    batch, the row sums are within ``cfg.tol * sum(b)`` (L1) of their projection onto
    the caps (see :func:`_residual`); columns are exact. A solve that reaches
    ``cfg.max_iter`` first returns its last iterate and is logged as a warning (the
    1st, 2nd, 4th, 8th, ... time in a process, so a training loop does not flood the log).
    Raises :class:`OTDivergedError` if the plan is not finite.
    """
    _check_cost(cost)
    dtype = _work_dtype(cost.dtype)
    with torch.no_grad():
        C = cost.detach().to(dtype)
        a, b = _marginals(C, cfg, row_mass, col_mass, dtype)
        if C.numel() == 0:
            return torch.zeros_like(C), 0
        plan, n_iter, residual = (_iterate_log if cfg.log_domain else _iterate_standard)(C, a, b, cfg)
        _raise_if_nonfinite(plan, "plan", cfg)
        _raise_if_nonfinite(torch.tensor(residual), "row residual", cfg)  # a NaN one ended the loop early
        if residual >= cfg.tol:
            _report_unconverged(residual, cfg)
    return plan, n_iter


_unconverged = 0  # solves in this process that stopped at max_iter


def _report_unconverged(residual: float, cfg: OTConfig) -> None:
    global _unconverged
    _unconverged += 1
    level = logging.WARNING if _unconverged & (_unconverged - 1) == 0 else logging.DEBUG  # 1, 2, 4, 8, ...
    log.log(
        level,
        "OT stopped at ot.max_iter=%d with a row residual of %.2e (ot.tol=%g): the plan breaks the "
        "patch caps by up to that share of the mass. Raise ot.max_iter, or ot.eps, or ot.tol (solves stopped at "
        "max_iter in this process so far: %d)",
        cfg.max_iter,
        residual,
        cfg.tol,
        _unconverged,
    )


def uniform_plan(cost: Tensor, cfg: OTConfig) -> Tensor:
    """Ablation "uniform plan instead of OT": ``T_vp = b_p / V = mass / (P V)``.

    Satisfies both constraints (rows sum to ``mass/V <= 1/V``, columns to
    ``mass/P``). Same shape as ``cost``, fp32 (fp64 stays fp64), no grad.
    """
    _check_cost(cost)
    V, P = cost.shape[-2], cost.shape[-1]
    return torch.full(cost.shape, cfg.mass / (P * V), dtype=_work_dtype(cost.dtype), device=cost.device)


def cosine_cost(patch_feats: Tensor, text_feats: Tensor) -> Tensor:
    """Cost ``C[b,k,v,p] = 1 - cos(patch_feats[b,v], text_feats[p,k])`` in fp32.

    ``patch_feats``: ``[B, V, D]``; ``text_feats``: ``[P, K, D]``; returns
    ``[B, K, V, P]`` (differentiable w.r.t. both inputs).
    """
    if patch_feats.dim() != 3:
        raise ValueError(f"patch_feats must be [B, V, D], got {tuple(patch_feats.shape)}")
    if text_feats.dim() != 3:
        raise ValueError(f"text_feats must be [P, K, D], got {tuple(text_feats.shape)}")
    B, V, D = patch_feats.shape
    P, K, Dt = text_feats.shape
    if D != Dt:
        raise ValueError(f"feature dims differ: patch_feats D={D}, text_feats D={Dt}")
    dtype = _work_dtype(torch.promote_types(patch_feats.dtype, text_feats.dtype))
    pf = F.normalize(patch_feats.to(dtype), dim=-1)
    tf = F.normalize(text_feats.to(dtype), dim=-1)
    sim = torch.matmul(pf, tf.reshape(P * K, D).t())  # [B, V, P*K]
    sim = sim.view(B, V, P, K).permute(0, 3, 1, 2)  # [B, K, V, P]
    return 1.0 - sim


def ot_scores(patch_feats: Tensor, text_feats: Tensor, cfg: OTConfig, plan: str = "ot") -> Tensor:
    """Class scores ``1 - d_OT`` ``[B, K]`` (paper eq. 15).

    ``patch_feats``: ``[B, V, D]`` local patch features of ``B`` images;
    ``text_feats``: ``[P, K, D]`` text features of ``P`` prompts for ``K`` classes.
    Both are L2-normalised; the cost ``1 - cos`` is built in fp32; the plan is
    ``"ot"`` (:func:`solve_plan`) or ``"uniform"`` (:func:`uniform_plan`) and is held
    fixed, so gradient reaches the features only through the cost.
    Raises :class:`OTDivergedError` if the result is not finite.
    """
    if plan not in ("ot", "uniform"):
        raise ValueError(f"plan must be 'ot' or 'uniform', got {plan!r}")
    C = cosine_cost(patch_feats, text_feats)  # [B, K, V, P]
    if plan == "ot":
        T, _ = solve_plan(C, cfg)
    else:
        T = uniform_plan(C, cfg)
    dist = (T * C).sum(dim=(-2, -1))  # [B, K]
    scores = 1.0 - dist
    _raise_if_nonfinite(scores.detach(), "distance", cfg)
    return scores
