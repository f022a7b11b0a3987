"""MIM (mutual information maximisation, seed 002): InfoNCE between two modalities' adapted features of a scene.

Where a site holds the same scenes in two modalities (BigEarthNet pairs each Sentinel-1 patch with a Sentinel-2
patch), MIM raises the similarity of a scene's two adapted features against the other scenes of the batch.
InfoNCE (van den Oord et al., "Representation Learning with Contrastive Predictive Coding", 2018) is a lower bound
on the mutual information of the two views: log(P) - L <= I(a; b) for P pairs in the batch. Choices where the
seed is silent:

- symmetric, as CLIP's loss: the mean of a -> b and b -> a cross-entropies over cosine similarities / tau;
- tau = 0.1 (`TEMPERATURE`): a site's batch holds tens of pairs, not CLIP's 32k, and a softer distribution than
  CLIP's 0.01 keeps a gradient from every negative;
- on the adapted pooled features (after FW and the modality adapters), so MIM trains the adapters (and nothing of
  the frozen encoder) towards a shared geometry of the two modalities;
- "inactive" when a batch has fewer than 2 pairs (InfoNCE needs a negative) or a site holds one modality: the
  term is then a zero without gradient, `active` is False and `reason` says why (the log says so, never silently).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .features import FeatureSet

TEMPERATURE = 0.1


@dataclass
class MimTerm:
    """The MIM loss of one batch: a scalar (0 without gradient when inactive), whether it is active, why not."""

    loss: torch.Tensor
    active: bool
    pairs: int
    reason: str = ""


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float = TEMPERATURE) -> MimTerm:
    """Symmetric InfoNCE between paired rows a [P, E] and b [P, E] (row i of a and b: one scene).

    Inactive (loss 0) for P < 2. ValueError for mismatched shapes or a temperature <= 0.
    """
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"MIM needs paired features [P, E] of equal shape; got {tuple(a.shape)} and {tuple(b.shape)}")
    if not temperature > 0:
        raise ValueError(f"MIM temperature must be positive; got {temperature}")
    pairs = int(a.shape[0])
    if pairs < 2:
        return MimTerm(
            a.new_zeros(()),
            False,
            pairs,
            f"{pairs} paired scene(s) in the batch; InfoNCE needs at least 2 (one positive and one negative)",
        )
    logits = F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T / temperature
    target = torch.arange(pairs, device=a.device)
    loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    return MimTerm(loss, True, pairs)


def paired_rows(
    first: FeatureSet, second: FeatureSet, pairs: Sequence[tuple[str, str]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices (i [P], j [P]) of the scenes present in both feature sets: first.paths[i] and second.paths[j]
    are one pair of `pairs` [(path in first, path in second)]. Pairs whose either file was skipped (unreadable) are
    left out, so the rows stay aligned by scene."""
    where_first = {p: i for i, p in enumerate(first.paths)}
    where_second = {p: j for j, p in enumerate(second.paths)}
    rows = [(where_first[a], where_second[b]) for a, b in pairs if a in where_first and b in where_second]
    if not rows:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    i, j = zip(*rows)
    return torch.tensor(i), torch.tensor(j)


def inactive_reason(site_modalities: Mapping[str, Sequence[str]]) -> str | None:
    """None when some site holds two or more modalities (MIM can act there); else the log line saying MIM is
    inactive and why, naming each site's modality."""
    if any(len(set(mods)) >= 2 for mods in site_modalities.values()):
        return None
    held = ", ".join(f"{site}: {'+'.join(mods) or 'none'}" for site, mods in site_modalities.items())
    return f"MIM is inactive: no site holds paired modalities of the same scenes ({held})"
