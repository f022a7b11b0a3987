"""Tests of fedrsclip.ot: entropic unbalanced OT between patches and prompts."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import ot as pot  # POT, the independent reference (our module is fedrsclip.ot)
import pytest
import torch
from scipy.optimize import minimize

from fedrsclip.ot import (
    OTConfig,
    OTDivergedError,
    cosine_cost,
    ot_scores,
    solve_plan,
    uniform_plan,
)

TIGHT = dict(tol=1e-9, max_iter=100_000)


def _pot_plan(cost: np.ndarray, a: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    # T 1 <= a, T^T 1 <= b, total mass m = sum(b)  =>  T^T 1 = b: the same problem.
    return pot.partial.entropic_partial_wasserstein(
        a, b, cost, eps, m=float(b.sum()), numItermax=200_000, stopThr=1e-15
    )


def _check_constraints(T: torch.Tensor, a, b, atol: float = 1e-6, row_atol: float | None = None) -> None:
    T = T.double()
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    assert torch.isfinite(T).all()
    assert (T >= 0).all()
    torch.testing.assert_close(T.sum(-2), b.expand_as(T.sum(-2)), rtol=0, atol=atol)
    assert (T.sum(-1) <= a + (atol if row_atol is None else row_atol)).all()


CASES = [  # V, P, eps, seed
    (5, 2, 0.05, 0),
    (12, 3, 0.1, 1),
    (20, 2, 0.2, 2),
    (33, 3, 0.5, 3),
    (50, 2, 0.1, 4),
    (50, 3, 0.05, 5),
]


@pytest.mark.parametrize("V,P,eps,seed", CASES)
@pytest.mark.parametrize("log_domain", [False, True])
def test_plan_matches_pot_fp64(V, P, eps, seed, log_domain):
    g = torch.Generator().manual_seed(seed)
    cost = torch.rand(V, P, generator=g, dtype=torch.float64) * 1.5
    cfg = OTConfig(eps=eps, mass=0.8, log_domain=log_domain, **TIGHT)
    T, n_iter = solve_plan(cost, cfg)
    assert T.dtype == torch.float64 and T.shape == (V, P)
    assert 2 <= n_iter < cfg.max_iter
    a, b = np.full(V, 1.0 / V), np.full(P, 0.8 / P)
    ref = _pot_plan(cost.numpy(), a, b, eps)
    np.testing.assert_allclose(T.numpy(), ref, rtol=1e-5, atol=1e-7 * ref.max())
    _check_constraints(T, a, b, atol=1e-7)


@pytest.mark.parametrize("V,P,eps,seed", CASES[:4])
def test_plan_matches_pot_fp32(V, P, eps, seed):
    g = torch.Generator().manual_seed(seed)
    cost = (torch.rand(V, P, generator=g, dtype=torch.float64) * 1.5).float()
    T, _ = solve_plan(cost, OTConfig(eps=eps, tol=1e-9, max_iter=5000))
    assert T.dtype == torch.float32
    ref = _pot_plan(cost.double().numpy(), np.full(V, 1.0 / V), np.full(P, 0.8 / P), eps)
    np.testing.assert_allclose(T.double().numpy(), ref, rtol=1e-4, atol=1e-6 * ref.max())


def test_custom_marginals_match_pot():
    g = torch.Generator().manual_seed(7)
    V, P, eps = 15, 3, 0.1
    cost = torch.rand(V, P, generator=g, dtype=torch.float64)
    a = torch.rand(V, generator=g, dtype=torch.float64) + 0.1
    a = a / a.sum()
    b = torch.tensor([0.1, 0.3, 0.2], dtype=torch.float64)
    T, _ = solve_plan(cost, OTConfig(eps=eps, **TIGHT), row_mass=a, col_mass=b)
    ref = _pot_plan(cost.numpy(), a.numpy(), b.numpy(), eps)
    np.testing.assert_allclose(T.numpy(), ref, rtol=1e-5, atol=1e-7 * ref.max())
    _check_constraints(T, a, b, atol=1e-7)


def test_infeasible_marginals_rejected():
    cost = torch.rand(4, 2)
    with pytest.raises(ValueError, match="infeasible"):
        solve_plan(cost, OTConfig(), col_mass=torch.tensor([0.7, 0.7]))


def test_log_domain_agrees_with_standard_batched():
    g = torch.Generator().manual_seed(11)
    cost = 1 - (0.1 + 0.3 * torch.rand(4, 6, 49, 2, generator=g))
    T_std, n_std = solve_plan(cost, OTConfig())
    T_log, n_log = solve_plan(cost, OTConfig(log_domain=True))
    assert n_std == n_log
    torch.testing.assert_close(T_log, T_std, rtol=1e-4, atol=1e-7)


def test_log_domain_small_eps_is_finite_and_feasible():
    g = torch.Generator().manual_seed(12)
    V, P = 196, 2
    cost = torch.rand(3, V, P, generator=g) * 2.0  # exp(-cost/0.01) underflows in fp32
    cfg = OTConfig(eps=0.01, log_domain=True, tol=1e-7, max_iter=20_000)
    T, _ = solve_plan(cost, cfg)
    assert T.dtype == torch.float32
    # fp32 in the log domain: exp of sums of ~+-200 loses ~1e-5 relative accuracy
    _check_constraints(T, 1.0 / V, torch.full((P,), 0.4), atol=1e-5, row_atol=1e-4 / V)


def test_log_domain_small_eps_matches_pot():
    g = torch.Generator().manual_seed(13)
    V, P, eps = 40, 2, 0.01
    cost = torch.rand(V, P, generator=g, dtype=torch.float64) * 2.0
    T, _ = solve_plan(cost, OTConfig(eps=eps, log_domain=True, tol=1e-12, max_iter=100_000))
    a, b = np.full(V, 1.0 / V), np.full(P, 0.4)
    ref = pot.partial.entropic_partial_wasserstein_logscale(
        a, b, cost.numpy(), eps, m=0.8, numItermax=100_000, stopThr=1e-15
    )
    np.testing.assert_allclose(T.numpy(), ref, rtol=1e-5, atol=1e-7 * ref.max())
    _check_constraints(T, a, b, atol=1e-9)


def test_batched_equals_individual():
    g = torch.Generator().manual_seed(3)
    cost = torch.rand(3, 5, 30, 2, generator=g, dtype=torch.float64)
    cfg = OTConfig(tol=1e-13, max_iter=100_000)
    T, _ = solve_plan(cost, cfg)
    assert T.shape == cost.shape
    for i in range(3):
        for k in range(5):
            Tik, _ = solve_plan(cost[i, k], cfg)
            torch.testing.assert_close(T[i, k], Tik, rtol=1e-7, atol=1e-12)


def test_brute_force_scipy_tiny():
    V, P, eps, mass = 3, 2, 0.2, 0.8
    C = np.array([[0.1, 0.9], [0.5, 0.3], [0.8, 0.7]])
    a, b = np.full(V, 1.0 / V), np.full(P, mass / P)

    def objective(x):
        T = x.reshape(V, P)
        return float((C * T).sum() + eps * (T * (np.log(T) - 1)).sum())

    def grad(x):
        return (C + eps * np.log(x.reshape(V, P))).ravel()

    cons = [
        {"type": "eq", "fun": lambda x: x.reshape(V, P).sum(0) - b},
        {"type": "ineq", "fun": lambda x: a - x.reshape(V, P).sum(1)},
    ]
    x0 = np.full(V * P, mass / (V * P))
    res = minimize(
        objective,
        x0,
        jac=grad,
        method="SLSQP",
        constraints=cons,
        bounds=[(1e-12, None)] * (V * P),
        options={"ftol": 1e-15, "maxiter": 1000},
    )
    assert res.success, res.message
    T, _ = solve_plan(torch.tensor(C), OTConfig(eps=eps, mass=mass, **TIGHT))
    np.testing.assert_allclose(T.numpy(), res.x.reshape(V, P), atol=1e-5)
    assert objective(T.numpy().ravel()) <= res.fun + 1e-9


def test_default_constraints_realistic_batch():
    g = torch.Generator().manual_seed(5)
    B, K, V, P = 4, 7, 196, 2
    cost = 1 - (0.1 + 0.3 * torch.rand(B, K, V, P, generator=g))
    T, n_iter = solve_plan(cost, OTConfig())
    assert T.shape == cost.shape and T.dtype == torch.float32
    assert 2 <= n_iter <= 100
    # default tol 1e-3: columns exact (v-step last), row caps within a small slack
    _check_constraints(T, 1.0 / V, torch.full((P,), 0.4), atol=1e-2 / V)


ISSUE_COST = [[0.3, 1.4], [1.6, 2.0], [1.7, 0.8], [2.0, 1.9]]  # issue 11, item 14: mass 1.0, eps 0.1


def _row_excess(T, a) -> float:
    """Worst problem's total cap violation sum_v (rowsum_v - a_v)_+ (the issue's measure)."""
    return float((T.double().sum(-1) - torch.as_tensor(a, dtype=torch.float64)).clamp_min(0).sum(-1).max())


@pytest.mark.parametrize("log_domain", [False, True])
def test_default_stop_is_near_the_solution_issue_case(log_domain):
    # The old rule (mean |u_new - u| < tol) stopped here after 10 iterations with row sums
    # [0.50, 0.002, 0.49, 0.004] against the cap 0.25 and score 0.442 (POT: -0.1595).
    cost = torch.tensor(ISSUE_COST, dtype=torch.float64)
    cfg = OTConfig(eps=0.1, mass=1.0, log_domain=log_domain)
    T, n_iter = solve_plan(cost, cfg)
    a, b = np.full(4, 0.25), np.full(2, 0.5)
    ref = _pot_plan(cost.numpy(), a, b, 0.1)
    assert n_iter < cfg.max_iter
    assert _row_excess(T, a) <= cfg.tol * cfg.mass  # the stopping rule's guarantee
    _check_constraints(T, a, b, atol=1e-9, row_atol=cfg.tol * cfg.mass)
    score, ref_score = 1 - float((T * cost).sum()), 1 - float((ref * cost.numpy()).sum())
    assert abs(ref_score - (-0.1595)) < 1e-4
    assert abs(score - ref_score) < 2 * cfg.tol * cfg.mass  # misplaced mass <= tol*mass, moved across costs <= 2
    T_tight, _ = solve_plan(cost, dataclasses.replace(cfg, **TIGHT))
    np.testing.assert_allclose(T_tight.numpy(), ref, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("scale", [0.1, 0.5, 2.0, 10.0])
def test_default_tol_bounds_the_violation_wide_costs_eps001(scale):
    """Costs U(0, scale) at eps 0.01 (log domain): stopping at the default tol leaves every problem's cap
    violation below tol*mass and the distance close to POT's; a tight tol gives POT's plan."""
    g = torch.Generator().manual_seed(1)
    V, P, eps, mass = 49, 2, 0.01, 0.8
    cost = torch.rand(3, V, P, generator=g, dtype=torch.float64) * scale
    a, b = np.full(V, 1.0 / V), np.full(P, mass / P)
    cfg = OTConfig(eps=eps, mass=mass, log_domain=True, max_iter=100_000)
    T, n_iter = solve_plan(cost, cfg)
    assert n_iter < cfg.max_iter
    assert _row_excess(T, a) <= cfg.tol * mass
    _check_constraints(T, a, b, atol=1e-9, row_atol=cfg.tol * mass)
    # POT's log-domain solver is slow at small eps: one problem of the batch is compared with it
    ref = pot.partial.entropic_partial_wasserstein_logscale(
        a, b, cost[0].numpy(), eps, m=mass, numItermax=50_000, stopThr=1e-11
    )
    T_tight, _ = solve_plan(cost[0], dataclasses.replace(cfg, tol=1e-11))
    np.testing.assert_allclose(T_tight.numpy(), ref, rtol=1e-5, atol=1e-7 * ref.max())
    d, d_ref = float((T[0] * cost[0]).sum()), float((ref * cost[0].numpy()).sum())
    # the misplaced mass (<= tol*mass) times the cost range bounds the error of d in practice
    assert abs(d - d_ref) <= cfg.tol * mass * scale


@pytest.mark.parametrize("log_domain", [False, True])
def test_stopping_at_max_iter_is_logged_without_flooding(log_domain, caplog, monkeypatch):
    import fedrsclip.ot as ot_module

    monkeypatch.setattr(ot_module, "_unconverged", 0)
    cost = torch.tensor(ISSUE_COST)
    with caplog.at_level(logging.DEBUG, logger="fedrsclip.ot"):
        solve_plan(cost, OTConfig(eps=0.1, mass=1.0, log_domain=log_domain))  # converges: nothing logged
        assert not caplog.records
        for _ in range(5):
            T, n_iter = solve_plan(cost, OTConfig(eps=0.1, mass=1.0, max_iter=3, log_domain=log_domain))
            assert n_iter == 3 and torch.isfinite(T).all()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(caplog.records) == 5 and len(warnings) == 3  # the 1st, 2nd and 4th; the rest at DEBUG
    assert "ot.max_iter=3" in warnings[0].getMessage() and "row residual of" in warnings[0].getMessage()
    assert warnings[-1].getMessage().endswith("so far: 4)")


def test_max_iter_one_runs_once():
    T, n = solve_plan(torch.rand(2, 10, 2), OTConfig(max_iter=1))
    assert n == 1 and torch.isfinite(T).all()


def test_uniform_plan_constraints():
    cost = torch.rand(2, 3, 20, 2, dtype=torch.float16)
    cfg = OTConfig(mass=0.6)
    T = uniform_plan(cost, cfg)
    assert T.shape == cost.shape and T.dtype == torch.float32
    _check_constraints(T, 1.0 / 20, torch.full((2,), 0.3), atol=1e-7)


def test_plan_has_no_grad():
    cost = torch.rand(3, 10, 2, requires_grad=True)
    T, _ = solve_plan(cost, OTConfig())
    assert not T.requires_grad and T.grad_fn is None


def _features(B=3, V=16, P=2, K=5, D=32, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    pf = torch.randn(B, V, D, generator=g).to(dtype)
    tf = torch.randn(P, K, D, generator=g).to(dtype)
    return pf, tf


@pytest.mark.parametrize("plan", ["ot", "uniform"])
def test_gradient_goes_through_cost_only(plan):
    cfg = OTConfig()
    pf, tf = _features()
    pf.requires_grad_(True)
    tf.requires_grad_(True)
    w = torch.randn(3, 5)  # arbitrary upstream gradient
    scores = ot_scores(pf, tf, cfg, plan=plan)
    assert scores.shape == (3, 5) and scores.dtype == torch.float32
    g_pf, g_tf = torch.autograd.grad((w * scores).sum(), (pf, tf))
    assert torch.isfinite(g_pf).all() and torch.isfinite(g_tf).all()
    assert g_tf.abs().sum() > 0

    # manual recompute: the same plan held fixed (detached), 1 - sum(T * C)
    C = cosine_cost(pf, tf)  # [B, K, V, P]
    T = solve_plan(C.detach(), cfg)[0] if plan == "ot" else uniform_plan(C, cfg)
    manual = 1 - (T.detach() * C).sum((-2, -1))
    torch.testing.assert_close(manual, scores.detach())
    m_pf, m_tf = torch.autograd.grad((w * manual).sum(), (pf, tf))
    torch.testing.assert_close(g_tf, m_tf)
    torch.testing.assert_close(g_pf, m_pf)


def test_cost_matches_explicit_cosine():
    pf, tf = _features(B=2, V=4, P=2, K=3, D=8)
    C = cosine_cost(pf, tf)
    assert C.shape == (2, 3, 4, 2)
    for b in range(2):
        for k in range(3):
            for v in range(4):
                for p in range(2):
                    cos = torch.nn.functional.cosine_similarity(pf[b, v], tf[p, k], dim=0)
                    assert abs(float(C[b, k, v, p]) - (1 - float(cos))) < 1e-5


def test_ot_focuses_on_relevant_patches():
    g = torch.Generator().manual_seed(1)
    B, V, P, K, D = 2, 49, 2, 4, 64
    tf = torch.randn(P, K, D, generator=g)
    pf = torch.randn(B, V, D, generator=g)
    # image 0: 10 patches show class 2 (close to both of its prompts); rest is noise
    pf[0, :10] = tf[0, 2] + tf[1, 2] + 0.1 * torch.randn(10, D, generator=g)
    cfg = OTConfig()
    s_ot = ot_scores(pf, tf, cfg, plan="ot")
    s_uni = ot_scores(pf, tf, cfg, plan="uniform")
    assert s_ot[0, 2] > s_uni[0, 2] + 0.05
    assert s_ot[0].argmax() == 2
    # the uniform plan is feasible with maximal entropy, so OT never scores lower
    assert (s_ot >= s_uni - 1e-5).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_give_finite_fp32(dtype):
    pf, tf = _features(B=2, V=196, P=2, K=6, D=64, dtype=dtype)
    pf.requires_grad_(True)
    tf.requires_grad_(True)
    scores = ot_scores(pf, tf, OTConfig())
    assert scores.dtype == torch.float32 and torch.isfinite(scores).all()
    scores.sum().backward()
    assert tf.grad.dtype == dtype and torch.isfinite(tf.grad.float()).all()
    ref = ot_scores(pf.detach().float(), tf.detach().float(), OTConfig())
    torch.testing.assert_close(scores.detach(), ref, rtol=0, atol=1e-6)


def test_score_range_and_mass():
    pf, tf = _features()
    cfg = OTConfig(mass=0.8)
    s = ot_scores(pf, tf, cfg)
    # d = sum T C with sum T = mass and C in [0, 2]
    assert ((1 - s) >= -1e-6).all() and ((1 - s) <= 2 * 0.8 + 1e-6).all()


@pytest.mark.parametrize(
    "field,value",
    [
        ("eps", 0.0),
        ("eps", -0.1),
        ("eps", float("nan")),
        ("eps", float("inf")),
        ("mass", 0.0),
        ("mass", 1.01),
        ("mass", -0.5),
        ("tol", 0.0),
        ("tol", -1e-3),
        ("max_iter", 0),
        ("max_iter", 2.5),
        ("max_iter", True),
        ("log_domain", "yes"),
    ],
)
def test_config_validation(field, value):
    with pytest.raises(ValueError, match=f"ot\\.{field}"):
        OTConfig(**{field: value})


def test_config_defaults_and_frozen():
    cfg = OTConfig()
    assert (cfg.eps, cfg.mass, cfg.tol, cfg.max_iter, cfg.log_domain) == (0.1, 0.8, 1e-3, 100, False)
    OTConfig(mass=1.0)  # the boundary is allowed
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.eps = 0.2  # type: ignore[misc]


@pytest.mark.parametrize("log_domain", [False, True])
def test_nan_cost_raises_diverged(log_domain):
    cost = torch.rand(2, 8, 2)
    cost[1, 3, 0] = float("nan")
    with pytest.raises(OTDivergedError, match="ot.log_domain: true"):
        solve_plan(cost, OTConfig(log_domain=log_domain))


def test_nan_features_raise_diverged():
    pf, tf = _features()
    pf[0, 0, 0] = float("nan")
    with pytest.raises(OTDivergedError, match="ot.eps"):
        ot_scores(pf, tf, OTConfig())
    with pytest.raises(OTDivergedError):
        ot_scores(pf, tf, OTConfig(), plan="uniform")


def test_bad_arguments():
    pf, tf = _features()
    with pytest.raises(ValueError, match="plan"):
        ot_scores(pf, tf, OTConfig(), plan="sinkhorn")
    with pytest.raises(ValueError):
        ot_scores(pf, tf[..., :-1], OTConfig())
    with pytest.raises(ValueError):
        solve_plan(torch.rand(5), OTConfig())
