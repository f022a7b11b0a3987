"""MIM: symmetric InfoNCE between two modalities' features of the same scenes, and its "inactive" signal."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fedrsclip.features import FeatureSet
from fedrsclip.mim import TEMPERATURE, inactive_reason, info_nce, paired_rows


def test_info_nce_matches_its_formula_and_rewards_aligned_pairs():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(8, 16, generator=gen)
    b = torch.randn(8, 16, generator=gen)
    term = info_nce(a, b)
    sims = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / TEMPERATURE
    by_hand = -0.5 * (torch.diagonal(sims.log_softmax(1)).mean() + torch.diagonal(sims.log_softmax(0)).mean())
    assert term.active and term.pairs == 8 and torch.allclose(term.loss, by_hand)
    aligned = info_nce(a, a + 0.01 * torch.randn(8, 16, generator=gen))
    assert aligned.loss < term.loss
    assert aligned.loss < math.log(8)  # below chance: the pairs are found among the 8


def test_info_nce_trains_two_adapters_towards_each_other():
    gen = torch.Generator().manual_seed(1)
    scenes = torch.randn(32, 8, generator=gen)
    view_a = scenes @ torch.randn(8, 12, generator=gen)  # two "sensors" of the same scenes
    view_b = scenes @ torch.randn(8, 12, generator=gen)
    map_a, map_b = torch.nn.Linear(12, 12), torch.nn.Linear(12, 12)
    optimiser = torch.optim.Adam([*map_a.parameters(), *map_b.parameters()], lr=0.01)
    first = None
    for _ in range(100):
        loss = info_nce(map_a(view_a), map_b(view_b)).loss
        first = float(loss.detach()) if first is None else first
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert float(loss.detach()) < 0.5 * first


def test_fewer_than_two_pairs_is_inactive_with_a_reason():
    term = info_nce(torch.randn(1, 4), torch.randn(1, 4))
    assert not term.active and float(term.loss) == 0.0 and not term.loss.requires_grad
    assert "at least 2" in term.reason
    with pytest.raises(ValueError, match="equal shape"):
        info_nce(torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match="temperature"):
        info_nce(torch.randn(3, 4), torch.randn(3, 4), temperature=0.0)


def test_inactive_reason_names_each_sites_modality():
    assert inactive_reason({"site-1": ["s2"], "site-2": ["s2", "s1"]}) is None
    line = inactive_reason({"site-1": ["s2"], "site-2": ["s1"]})
    assert line.startswith("MIM is inactive") and "site-1: s2" in line and "site-2: s1" in line


def test_paired_rows_follow_paths_and_drop_pairs_with_a_skipped_file():
    def features(paths):
        n = len(paths)
        return FeatureSet(torch.zeros(n, 2), torch.zeros(n, 1, 2), torch.zeros(n, 3), list(paths))

    s2 = features(["s2/a", "s2/b", "s2/c"])
    s1 = features(["s1/c", "s1/a"])  # s1/b was unreadable (skipped at extraction)
    i, j = paired_rows(s2, s1, [("s2/a", "s1/a"), ("s2/b", "s1/b"), ("s2/c", "s1/c")])
    assert i.tolist() == [0, 2] and j.tolist() == [1, 0]
    empty_i, empty_j = paired_rows(s2, s1, [])
    assert empty_i.numel() == 0 and empty_j.numel() == 0
