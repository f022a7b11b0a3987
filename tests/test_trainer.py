import numpy as np
import pytest
import torch

from fedrsclip.algorithms import ALGORITHMS, SHARED
from fedrsclip.protocol import PayloadError, payload_nbytes, weighted_mean
from fedrsclip.site import PromptSite
from helpers import tiny_config

PROMPT_ALGOS = [a.name for a in ALGORITHMS.values() if a.kind == "prompt"]


@pytest.fixture(scope="module")
def site_factory(tiny_backbone, synth_manifest, feature_cache):
    def make(*overrides, name="site-1", state_dir=None):
        cfg = tiny_config("train.lr=0.05", *overrides, cache_dir=feature_cache)
        return PromptSite(cfg, name, synth_manifest, tiny_backbone, state_dir=state_dir, progress=False)

    return make


@pytest.mark.parametrize("algorithm", PROMPT_ALGOS)
def test_every_algorithm_trains_and_sends_what_it_declares(site_factory, algorithm):
    site = site_factory(f"algorithm={algorithm}")
    update = site.run_round(None, 0)
    algo = ALGORITHMS[algorithm]
    assert set(update.payload) == set(algo.sends)
    if algo.federated:
        width = site.backbone.text_width
        assert update.payload[SHARED].shape == (4, width)
        assert payload_nbytes(update.payload) == 4 * width * 4  # n_ctx x width float32: nothing else
    assert np.isfinite(update.record.metrics["train_loss"]) and update.record.samples_train == len(site.train_set)
    metrics = site.evaluate()
    assert 0 <= metrics["accuracy"] <= 100 and metrics["samples"] == len(site.test_set)


def test_private_prompt_never_in_payload(site_factory):
    site = site_factory("algorithm=fedrsclip")
    payload = site.run_round(None, 0).payload
    private = site.trainer.model.learner.private_ctx.detach().numpy()
    assert list(payload) == [SHARED]
    assert not any(np.allclose(v, private) for v in payload.values())


def test_set_global_refuses_bad_updates(site_factory):
    trainer = site_factory().trainer
    good = trainer.payload()[SHARED]
    for bad, words in [
        ({SHARED: good[:2]}, "shape"),
        ({SHARED: np.full_like(good, np.nan)}, "NaN"),
        ({SHARED: good.astype(np.int64)}, "dtype"),
        ({"other": good}, "no 'shared_ctx'"),
    ]:
        with pytest.raises(PayloadError, match=words):
            trainer.set_global(bad)
    trainer.set_global({SHARED: good * 2})
    np.testing.assert_allclose(trainer.payload()[SHARED], good * 2)


def shared_grad(site, mu: float) -> torch.Tensor:
    trainer = site.trainer
    trainer.cfg.train.fedprox_mu = mu
    learner = trainer.model.learner
    anchor = learner.shared_ctx.detach().clone() - 0.5  # the live prompt has moved away from the global one
    train = site.train_set
    loss, _ = trainer._loss(
        learner.text_features(),
        [(None, train.global_feats[:8].float(), train.tokens[:8], train.labels[:8])],
        None,
        anchor,
    )
    learner.zero_grad()
    loss.backward()
    return learner.shared_ctx.grad.clone()


def test_fedprox_mu_changes_the_gradient(site_factory):
    site = site_factory("algorithm=fedprox")
    g0, g1 = shared_grad(site, 0.0), shared_grad(site, 1.0)
    torch.testing.assert_close(g1 - g0, torch.full_like(g0, 0.5))  # d/dw mu/2 ||w - a||^2 = mu (w - a)


def test_weighted_mean_weights_by_samples():
    a, b = {SHARED: np.zeros((2, 3), np.float32)}, {SHARED: np.ones((2, 3), np.float32)}
    mean = weighted_mean([(a, 30), (b, 10)])[SHARED]
    np.testing.assert_allclose(mean, 0.25)
    assert mean.dtype == np.float32


def test_local_state_survives_a_restart(site_factory, tmp_path):
    site = site_factory(state_dir=tmp_path)
    site.run_round(None, 0)
    before = site.trainer.local_state()
    again = site_factory(state_dir=tmp_path)  # a new process would do exactly this
    after = again.trainer.local_state()
    for key in before:
        assert torch.equal(before[key], after[key])
    assert again.evaluate() == site.evaluate()


def test_site_missing_from_manifest(site_factory):
    from fedrsclip.data.errors import DataError

    with pytest.raises(DataError, match="site-9"):
        site_factory(name="site-9")


def test_peers_dpac_uses_other_sites_prompts(site_factory):
    site = site_factory("dpac.negatives=peers", "dpac.weight=1.0")
    peers = np.random.default_rng(0).normal(0, 0.02, size=(2, *site.trainer.payload()[SHARED].shape))
    with_peers = site.run_round(None, 0, peers=peers.astype(np.float32)).record.metrics
    assert with_peers["train_dpac"] > 0
    without = site_factory("dpac.negatives=peers", name="site-2").run_round(None, 0).record.metrics
    assert without["train_dpac"] == 0.0  # round 1: no peers yet, nothing to contrast with
