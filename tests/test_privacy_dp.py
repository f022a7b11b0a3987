"""Opt-in differential privacy of the shared-prompt update: clipping, noise scale, seeding, accounting, config."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedrsclip.config import ConfigError
from fedrsclip.privacy import clip_and_noise, dp_epsilon, dp_rng

from conftest import tiny_config


def test_clipping_bounds_the_norm_and_leaves_small_updates_alone():
    rng = np.random.default_rng(0)
    big = rng.normal(size=(4, 64)) * 10
    clipped, info = clip_and_noise(big, 1.5, 0.0, rng)
    assert np.linalg.norm(clipped) <= 1.5 + 1e-9 and info["dp_clipped"]
    np.testing.assert_allclose(clipped / np.linalg.norm(clipped), big / np.linalg.norm(big))  # direction kept
    small = big / np.linalg.norm(big) * 0.5
    same, info = clip_and_noise(small, 1.5, 0.0, rng)
    np.testing.assert_array_equal(same, small)
    assert not info["dp_clipped"] and info["dp_update_norm"] == pytest.approx(0.5)


def test_noise_scale_is_multiplier_times_clip():
    noised, info = clip_and_noise(np.zeros(20_000), 2.0, 0.7, np.random.default_rng(1))
    assert info["dp_noise_std"] == pytest.approx(1.4)
    assert abs(noised.std() / 1.4 - 1) < 0.03
    assert abs(noised.mean()) < 3 * 1.4 / math.sqrt(20_000)


def test_noise_is_deterministic_per_seed_site_and_round():
    def draw(seed, site, rnd):
        return clip_and_noise(np.zeros(16), 1.0, 1.0, dp_rng(seed, site, rnd))[0]

    np.testing.assert_array_equal(draw(3, "site-1", 0), draw(3, "site-1", 0))
    assert not np.array_equal(draw(3, "site-1", 0), draw(3, "site-2", 0))
    assert not np.array_equal(draw(3, "site-1", 0), draw(3, "site-1", 1))
    assert not np.array_equal(draw(3, "site-1", 0), draw(4, "site-1", 0))
    assert not np.array_equal(draw(None, "site-1", 0), draw(None, "site-1", 0))  # null seed: OS entropy


def test_accountant_epsilon_grows_with_rounds_and_shrinks_with_noise():
    eps = [dp_epsilon(1.0, r, 1e-5) for r in (1, 2, 5)]
    assert 0 < eps[0] < eps[1] < eps[2]
    assert dp_epsilon(2.0, 5, 1e-5) < eps[2]
    assert dp_epsilon(1.0, 5, 1e-3) < eps[2]  # a larger delta buys a smaller epsilon
    assert dp_epsilon(0.0, 1, 1e-5) == math.inf


@pytest.mark.parametrize("overrides, match", [
    (["privacy.dp_noise_multiplier=1.0"], "dp_clip_norm is null"),
    (["privacy.dp_clip_norm=-1"], "dp_clip_norm must be positive"),
    (["privacy.dp_clip_norm=0"], "dp_clip_norm must be positive"),
    (["privacy.dp_clip_norm=1", "privacy.dp_noise_multiplier=-0.5"], "dp_noise_multiplier must be >= 0"),
    (["privacy.dp_delta=0"], "dp_delta must be between 0 and 1"),
    (["privacy.dp_clip_norm=1", "algorithm=fedavg-full"], "prompt algorithms"),
    (["privacy.dp_epsilon=1"], "unknown setting 'privacy.dp_epsilon'"),
])
def test_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        tiny_config(*overrides)


def test_federation_with_dp_records_epsilon_per_round(synth_manifest, feature_cache, tmp_path):
    from fedrsclip.federation import run_federation

    cfg = tiny_config("train.rounds=2", "privacy.dp_clip_norm=0.05", "privacy.dp_noise_multiplier=1.0",
                      "privacy.dp_seed=0", cache_dir=feature_cache)
    history = run_federation(cfg, synth_manifest, state_dir=tmp_path, progress=False)
    epsilons = []
    for record in history["rounds"]:
        for site, entry in record["sites"].items():
            assert entry["dp_delta"] == 1e-5 and entry["dp_rounds"] == record["round"]
            assert entry["dp_noise_std"] == pytest.approx(0.05)
            assert entry["bytes_up"] == 4 * 64 * 4
        epsilons.append(record["sites"]["site-1"]["dp_epsilon"])
    assert epsilons == [pytest.approx(dp_epsilon(1.0, 1, 1e-5)), pytest.approx(dp_epsilon(1.0, 2, 1e-5))]
    assert 0 < epsilons[0] < epsilons[1] < math.inf
