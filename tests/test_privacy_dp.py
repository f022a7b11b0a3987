"""Opt-in differential privacy of the shared-prompt update: clipping, noise scale, seeding, accounting, config."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedrsclip.config import ConfigError
from fedrsclip.privacy import clip_and_noise, dp_epsilon, dp_rng
from helpers import TINY, tiny_config


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


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["privacy.dp_noise_multiplier=1.0"], "dp_clip_norm is null"),
        (["privacy.dp_clip_norm=-1"], "dp_clip_norm must be positive"),
        (["privacy.dp_clip_norm=0"], "dp_clip_norm must be positive"),
        (["privacy.dp_clip_norm=1", "privacy.dp_noise_multiplier=-0.5"], "dp_noise_multiplier must be >= 0"),
        (["privacy.dp_delta=0"], "dp_delta must be between 0 and 1"),
        (["privacy.dp_clip_norm=1", "algorithm=fedavg-full"], "prompt algorithms"),
        (["privacy.dp_epsilon=1"], "unknown setting 'privacy.dp_epsilon'"),
    ],
)
def test_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        tiny_config(*overrides)


def test_federation_with_dp_records_epsilon_per_round(synth_manifest, feature_cache, tmp_path):
    from fedrsclip.inprocess import run_inprocess

    cfg = tiny_config(
        "train.rounds=2",
        "privacy.dp_clip_norm=0.05",
        "privacy.dp_noise_multiplier=1.0",
        "privacy.dp_seed=0",
        cache_dir=feature_cache,
    )
    history = run_inprocess(cfg, synth_manifest, state_dir=tmp_path, progress=False)
    epsilons = []
    for record in history["rounds"]:
        for site, entry in record["sites"].items():
            assert entry["dp_delta"] == 1e-5 and entry["dp_rounds"] == record["round"]
            assert entry["dp_noise_std"] == pytest.approx(0.05)
            assert entry["bytes_up"] == 4 * 64 * 4
        epsilons.append(record["sites"]["site-1"]["dp_epsilon"])
    assert epsilons == [pytest.approx(dp_epsilon(1.0, 1, 1e-5)), pytest.approx(dp_epsilon(1.0, 2, 1e-5))]
    assert 0 < epsilons[0] < epsilons[1] < math.inf


def test_releases_are_counted_at_the_site_and_survive_a_restart(synth_manifest, feature_cache, tmp_path):
    """Issue 11 item 4: the accountant counts the site's own releases, kept in its saved state, whatever round
    number arrives. 5 releases at noise multiplier 1, delta 1e-5 are epsilon 12.30 (the round number the server
    sent, 0, gave 4.73; a negative one gave 0)."""
    from fedrsclip.site import PromptSite

    cfg = tiny_config("privacy.dp_clip_norm=0.05", "privacy.dp_noise_multiplier=1.0", cache_dir=feature_cache)
    make = lambda: PromptSite(cfg, "site-1", synth_manifest, state_dir=tmp_path, progress=False)  # noqa: E731
    site, reported = make(), []
    for round_idx in (0, 0, -1):  # a repeated and a forged round number
        reported.append(site.run_round(None, round_idx).record.metrics)
    site = make()  # a restarted site: a fresh process reads its count from its state file
    for round_idx in (0, 1):
        reported.append(site.run_round(None, round_idx).record.metrics)
    assert reported[-1]["dp_epsilon"] == pytest.approx(12.30, abs=0.01)
    assert [m["dp_rounds"] for m in reported] == [1, 2, 3, 4, 5]
    assert [m["dp_epsilon"] for m in reported] == [pytest.approx(dp_epsilon(1.0, n, 1e-5)) for n in range(1, 6)]
    assert make().dp_releases == 5


def test_statistics_of_the_raw_update_never_leave_a_site(synth_manifest, feature_cache, tmp_path, caplog):
    """The update's norm before clipping and whether it was clipped describe the raw update: they go to the site's
    log only. What leaves (the round record) carries the accounting alone, and its allow-list refuses them."""
    from fedrsclip.inprocess import run_inprocess
    from fedrsclip.privacy import PrivacyError, check_outgoing
    from fedrsclip.protocol import RoundRecord
    from fedrsclip.site import PromptSite

    cfg = tiny_config(
        "train.rounds=1",
        "privacy.dp_clip_norm=0.05",
        "privacy.dp_noise_multiplier=1.0",
        "privacy.dp_seed=0",
        cache_dir=feature_cache,
    )
    site = PromptSite(cfg, "site-1", synth_manifest, state_dir=tmp_path, progress=False)
    with caplog.at_level("INFO", logger="fedrsclip.privacy"):
        update = site.run_round(None, 0)
    assert "update norm" in caplog.text and "kept at this site" in caplog.text
    sent = update.record.to_wire()
    assert {"dp_epsilon", "dp_delta", "dp_rounds", "dp_noise_std"} <= set(sent["metrics"])
    assert not {"dp_update_norm", "dp_clipped"} & set(sent["metrics"])
    with pytest.raises(Exception, match="dp_update_norm.*may not leave a site"):
        RoundRecord.from_wire({**sent, "metrics": {**sent["metrics"], "dp_update_norm": 1.0}})
    record = RoundRecord.from_wire(sent)
    record.metrics = {**record.metrics, "dp_clipped": 1}  # as if a site's code put it back in
    with pytest.raises(PrivacyError, match="dp_clipped"):
        check_outgoing(update.payload, site.algorithm, site.trainer.shapes, "site-1", record)
    results = run_inprocess(cfg, synth_manifest, progress=False)
    text = str(results)
    assert "dp_update_norm" not in text and "dp_clipped" not in text


def test_clipping_alone_is_warned_about_and_epsilon_is_valid_json(synth_manifest, feature_cache, tmp_path, capsys):
    """Only privacy.dp_clip_norm: a warning that it gives no DP guarantee; epsilon (infinite) is written as null,
    never as the bare token Infinity, in strictly valid JSON."""
    import json

    from fedrsclip.cli import main
    from fedrsclip.data.manifest import write_manifest
    from fedrsclip.privacy import dp_warning

    assert dp_warning(tiny_config("privacy.dp_clip_norm=1.0")).startswith("privacy.dp_clip_norm is 1.0 but")
    assert dp_warning(tiny_config("privacy.dp_clip_norm=1.0", "privacy.dp_noise_multiplier=1.0")) is None
    assert dp_warning(tiny_config()) is None
    manifest = write_manifest(synth_manifest, tmp_path / "m.json")
    out = tmp_path / "results.json"
    assert (
        main(
            [
                "run",
                "--manifest",
                str(manifest),
                "--rounds",
                "1",
                "--out",
                str(out),
                *[f"--set={s}" for s in (*TINY, f"data.cache_dir={feature_cache}", "privacy.dp_clip_norm=1.0")],
            ]
        )
        == 0
    )
    assert "clipping alone gives no differential-privacy guarantee" in capsys.readouterr().err
    text = out.read_text()
    assert "Infinity" not in text and "NaN" not in text
    results = json.loads(text, parse_constant=lambda token: pytest.fail(f"invalid JSON token {token}"))
    assert results["rounds"][0]["sites"]["site-1"]["dp_epsilon"] is None
