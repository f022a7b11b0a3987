"""Per-modality adapters (identity at start, payload names) and MF: each adapter averaged within its modality only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedrsclip.adapters import (
    COMMON,
    ModalityAdapters,
    adapter_keys,
    group_average,
    key_group,
    single_site_groups,
)
from fedrsclip.algorithms import SHARED


def _trained(adapters: ModalityAdapters, seed: int) -> ModalityAdapters:
    """Adapters moved away from their init, as after local training."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapters.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return adapters


def test_adapter_starts_as_the_identity_on_pooled_features_and_tokens():
    adapters = ModalityAdapters(["s2", "s1"], dim=64, rank=8)
    pooled = torch.randn(5, 64).half()
    tokens = torch.randn(5, 9, 64)
    assert torch.equal(adapters.adapt("s2", pooled), pooled.float())
    assert torch.equal(adapters.adapt("s1", tokens), tokens)
    with pytest.raises(KeyError, match="rgb"):
        adapters.adapt("rgb", pooled)


def test_payload_names_are_the_state_dict_names_and_hold_only_the_sites_modalities():
    model = torch.nn.Module()
    model.adapter = ModalityAdapters(["s2", "s1"], dim=32, rank=4)
    names = {n for n, _ in model.named_parameters()}
    assert (
        names
        == set(adapter_keys(["s2", "s1"]))
        == {"adapter.s2.down.weight", "adapter.s2.up.weight", "adapter.s1.down.weight", "adapter.s1.up.weight"}
    )
    sent = model.adapter.payload(["s2"])
    assert sorted(sent) == sorted(adapter_keys(["s2"]))
    assert sent["adapter.s2.down.weight"].shape == (4, 32) and sent["adapter.s2.up.weight"].shape == (32, 4)
    assert all(v.dtype == np.float32 for v in sent.values())
    assert [key_group(k) for k in sent] == ["s2", "s2"] and key_group(SHARED) == COMMON
    with pytest.raises(ValueError, match="adapter key"):
        key_group("adapter.s9.down.weight")


def test_sites_of_a_modality_start_from_the_same_adapter_and_modalities_differ():
    site_a = ModalityAdapters(["s2", "s1"], dim=32, rank=4, seed=3)
    site_b = ModalityAdapters(["s1", "s2"], dim=32, rank=4, seed=3)
    assert all(np.array_equal(site_a.payload(["s2"])[k], site_b.payload(["s2"])[k]) for k in adapter_keys(["s2"]))
    assert not np.array_equal(
        site_a.payload(["s2"])["adapter.s2.down.weight"], site_a.payload(["s1"])["adapter.s1.down.weight"]
    )


def test_load_payload_checks_everything_before_loading_anything():
    adapters = ModalityAdapters(["s2", "s1"], dim=16, rank=4)
    before = {k: v.copy() for k, v in adapters.payload(["s2", "s1"]).items()}
    update = _trained(ModalityAdapters(["s2", "s1"], dim=16, rank=4), 1).payload(["s2", "s1"])
    bad = dict(update, **{"adapter.s1.up.weight": np.zeros((3, 3), np.float32)})
    with pytest.raises(ValueError, match=r"adapter.s1.up.weight of shape \(3, 3\)"):
        adapters.load_payload(bad)
    assert all(np.array_equal(adapters.payload(["s2", "s1"])[k], before[k]) for k in before)  # s2 not loaded either
    with pytest.raises(ValueError, match="without adapter.s2.up.weight"):
        adapters.load_payload({"adapter.s2.down.weight": update["adapter.s2.down.weight"]})
    with pytest.raises(ValueError, match="NaN or Inf"):
        adapters.load_payload(dict(update, **{"adapter.s2.down.weight": np.full((4, 16), np.nan, np.float32)}))
    with pytest.raises(ValueError, match="beyond float32's range"):  # finite in float64, inf once cast
        adapters.load_payload(dict(update, **{"adapter.s2.down.weight": np.full((4, 16), 1e39, np.float64)}))
    with pytest.raises(ValueError, match="modality 's1'"):
        ModalityAdapters(["s2"], dim=16, rank=4).load_payload(update)
    assert adapters.load_payload({SHARED: np.zeros((4, 8)), **update}) == ["s1", "s2"]
    assert all(np.array_equal(adapters.payload(["s2", "s1"])[k], update[k]) for k in update)


def test_each_adapter_is_averaged_only_among_the_sites_of_its_modality():
    # site-1 holds s2, site-2 holds s1, site-3 holds both (paired); all send the shared prompt.
    held = {"site-1": ["s2"], "site-2": ["s1"], "site-3": ["s2", "s1"]}
    weights = {"site-1": 10, "site-2": 30, "site-3": 20}
    rng = np.random.default_rng(0)
    payloads = {}
    for i, (site, mods) in enumerate(held.items()):
        adapters = _trained(ModalityAdapters(["s2", "s1"], dim=16, rank=4), seed=i)
        payloads[site] = {SHARED: rng.normal(size=(4, 8)).astype(np.float32), **adapters.payload(mods)}
    merged = group_average([(payloads[s], weights[s]) for s in held])

    def mean(key, sites):
        total = sum(weights[s] for s in sites)
        return sum(payloads[s][key].astype(np.float64) * weights[s] / total for s in sites)

    assert np.allclose(merged[SHARED], mean(SHARED, held))
    for key in adapter_keys(["s2"]):
        assert np.allclose(merged[key], mean(key, ["site-1", "site-3"]))
    for key in adapter_keys(["s1"]):
        assert np.allclose(merged[key], mean(key, ["site-2", "site-3"]))
    # An s2-only site never reaches the s1 adapter, whatever it sends in its own group.
    altered = dict(payloads["site-1"], **{k: v + 100.0 for k, v in payloads["site-1"].items() if k != SHARED})
    again = group_average([(altered, 10), (payloads["site-2"], 30), (payloads["site-3"], 20)])
    assert all(np.array_equal(again[k], merged[k]) for k in adapter_keys(["s1"]))
    assert not np.allclose(again["adapter.s2.up.weight"], merged["adapter.s2.up.weight"])


def test_group_average_refuses_a_partial_group_and_bad_weights():
    full = ModalityAdapters(["s2"], dim=8, rank=2).payload(["s2"])
    partial = {"adapter.s2.down.weight": full["adapter.s2.down.weight"]}
    with pytest.raises(ValueError, match="part of adapter group s2"):
        group_average([(full, 1), (partial, 1)])
    with pytest.raises(ValueError, match="positive"):
        group_average([(full, 0)])
    with pytest.raises(ValueError, match="no site updates"):
        group_average([])


def test_a_modality_held_by_one_site_only_is_named():
    assert single_site_groups({"site-1": ["s2"], "site-2": ["s2", "s1"], "site-3": ["s2"]}) == {"s1": "site-2"}
    assert single_site_groups({"site-1": ["s2"], "site-2": ["s2"]}) == {}
