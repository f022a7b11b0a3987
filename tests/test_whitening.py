"""FW: Ledoit-Wolf-shrunk ZCA whitening with each site's own statistics (fedrsclip.whitening)."""

from __future__ import annotations

import pytest
import torch

from fedrsclip.adapters import adapter_keys
from fedrsclip.algorithms import SHARED
from fedrsclip.features import FeatureSet
from fedrsclip.whitening import FeatureWhitening, fit_stats, fit_whitening, whiten


def _site(n: int, dim: int, seed: int, shift: float, tokens: int = 3) -> FeatureSet:
    """Correlated features with a site-specific mean and covariance (as two sensors or seasons give)."""
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(dim, dim, generator=gen) / dim**0.5 + torch.eye(dim)
    pooled = torch.randn(n, dim, generator=gen) @ mix + shift
    toks = torch.randn(n, tokens, dim, generator=gen) @ mix - shift
    return FeatureSet(pooled.half(), toks.half(), torch.zeros(n, 4), [f"img{i}" for i in range(n)])


def test_large_site_is_fully_whitened():
    x = _site(4000, 16, 0, shift=3.0).global_feats.float()
    stats = fit_stats(x)
    y = stats.apply(x)
    m = float(torch.trace(torch.cov(x.T))) / 16
    assert stats.shrinkage < 0.05
    assert y.mean(0).abs().max() < 1e-3 * m**0.5 + 1e-4
    before, after = torch.linalg.eigvalsh(torch.cov(x.T)), torch.linalg.eigvalsh(torch.cov(y.T))
    assert before.max() / before.min() > 100  # strongly correlated features ...
    # ... become near isotropic with the variance m kept (the weakest direction is slightly shrunk, by design)
    assert after.max() < 1.01 * m and after.min() > 0.5 * m and (after > 0.9 * m).sum() >= 14
    assert torch.allclose(stats.transform, stats.transform.T)  # ZCA: the symmetric whitening


def test_small_site_is_shrunk_towards_centring_and_stays_finite():
    x = _site(6, 64, 1, shift=2.0).global_feats.float()
    stats = fit_stats(x)
    assert stats.shrinkage > 0.5  # 6 images cannot estimate a 64 x 64 covariance
    assert torch.isfinite(stats.apply(x)).all()
    assert torch.linalg.cond(stats.transform) < 50


def test_isotropic_data_need_no_whitening():
    x = torch.randn(500, 32, generator=torch.Generator().manual_seed(2))
    assert fit_stats(x).shrinkage > 0.8  # the target m I is already right: shrink to it


def test_shrinkage_matches_sklearn():
    from sklearn import covariance  # the reference (requirements.txt: test references)

    x = _site(40, 24, 3, shift=1.0).global_feats.double()
    expected = covariance.ledoit_wolf_shrinkage((x - x.mean(0)).numpy(), assume_centered=True)
    assert fit_stats(x).shrinkage == pytest.approx(expected, rel=1e-4)


def test_two_sites_with_different_distributions_are_aligned_by_their_own_statistics():
    site_a, site_b = _site(600, 16, 4, shift=2.0), _site(600, 16, 5, shift=-1.0)
    gap_before = (site_a.global_feats.float().mean(0) - site_b.global_feats.float().mean(0)).norm()
    white_a = whiten(site_a, fit_whitening(site_a))
    white_b = whiten(site_b, fit_whitening(site_b))
    gap_after = (white_a.global_feats.float().mean(0) - white_b.global_feats.float().mean(0)).norm()
    assert gap_after < 0.02 * gap_before
    cov_a, cov_b = torch.cov(white_a.global_feats.float().T), torch.cov(white_b.global_feats.float().T)
    scale = torch.diagonal(cov_a).mean()
    assert (cov_a / scale - cov_b / torch.diagonal(cov_b).mean()).abs().max() < 0.35  # both near isotropic
    # Tokens get their own statistics (their mean differs from the pooled feature's).
    assert white_a.tokens.float().reshape(-1, 16).mean(0).abs().max() < 0.05 * scale**0.5
    assert white_a.labels is site_a.labels and white_a.paths == site_a.paths
    assert white_a.global_feats.dtype == torch.float16


def test_statistics_are_site_local_state_and_round_trip():
    fw = fit_whitening(_site(50, 8, 6, shift=1.0))
    state = fw.state_dict()
    assert all(k.startswith("fw.") for k in state)
    assert not set(state) & {SHARED, *adapter_keys(["s2", "s1", "rgb"])}  # nothing a site sends
    again = FeatureWhitening.from_state_dict(state)
    x = torch.randn(4, 8)
    assert torch.equal(again.pooled.apply(x), fw.pooled.apply(x))
    assert again.tokens.samples == 150


def test_too_few_or_constant_features_are_refused():
    with pytest.raises(ValueError, match="at least 2 training images"):
        fit_whitening(_site(1, 8, 7, shift=0.0))
    with pytest.raises(ValueError, match="no variance"):
        fit_stats(torch.ones(5, 8))
