"""The multi-modal path of a site's cached features to class scores, and the missing-modality evaluation.

For one modality m, features go (docs/multimodal.md):
    cached CLIP features (pooled [N, E], tokens [N, V, E])
      -> FW with the site's own statistics for m (optional; fedrsclip.whitening)
      -> the adapter of m (fedrsclip.adapters; MF-averaged among the sites of m)
      -> class scores from the prompts (the algorithm's scoring: cosine or CMFAC), logits [N, K]
      -> the site's sigmoid calibration (fedrsclip.multilabel) -> multi-label loss, F1 and mAP.
FW comes before the adapter so that the adapter, averaged over several sites of m, sees inputs each site aligned
with its own statistics. MIM (fedrsclip.mim) acts on the adapted pooled features of paired scenes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .adapters import ModalityAdapters
from .features import FeatureSet
from .multilabel import SigmoidCalibration, multilabel_metrics
from .whitening import FeatureWhitening

log = logging.getLogger(__name__)

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (pooled [B, E], tokens [B, V, E]) -> logits [B, K]


def prepare(
    pooled: torch.Tensor,
    tokens: torch.Tensor,
    modality: str,
    adapters: ModalityAdapters,
    whitening: FeatureWhitening | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """FW (when given) then the modality's adapter: pooled [B, E], tokens [B, V, E] -> the same shapes, float32."""
    if whitening is not None:
        pooled, tokens = whitening.pooled.apply(pooled), whitening.tokens.apply(tokens)
    return adapters.adapt(modality, pooled), adapters.adapt(modality, tokens)


@torch.no_grad()
def evaluate_modality(
    test: FeatureSet,
    modality: str,
    score: ScoreFn,
    adapters: ModalityAdapters,
    calibration: SigmoidCalibration | None = None,
    whitening: FeatureWhitening | None = None,
    batch_size: int = 100,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Multi-label metrics of a trained federation on a test set of ONE modality (the seed's missing-modality row).

    test: features of `modality` only, with multi-hot labels [N, K]; score: the trained prompts' scoring; the
    modality's adapter from `adapters` (the global one, for a modality the evaluating site does not hold);
    calibration: the evaluating site's (None: scores used as they are); whitening: statistics for `modality`
    (the evaluating site's own for a modality it holds; for one it does not, fit them on the test features with
    fedrsclip.whitening.fit_whitening, which uses no labels). Returns multilabel_metrics' dict plus "modality" and
    "row" ("<modality> only"). ValueError for single-label test data; KeyError when no adapter exists for it.
    """
    if test.labels.ndim != 2:
        raise ValueError(
            "the missing-modality evaluation is multi-label: the test features need multi-hot labels "
            f"[N, K]; got labels of shape {tuple(test.labels.shape)}"
        )
    if modality not in adapters:
        raise KeyError(
            f"no adapter for modality {modality!r} (the federation trained {', '.join(adapters)}); it "
            "cannot be evaluated"
        )
    out = []
    for start in range(0, len(test), batch_size):
        sl = slice(start, start + batch_size)
        pooled, tokens = prepare(
            test.global_feats[sl].to(device), test.tokens[sl].to(device), modality, adapters, whitening
        )
        logits = score(pooled, tokens)
        out.append((calibration(logits) if calibration is not None else logits).float().cpu())
    metrics = multilabel_metrics(torch.cat(out), test.labels)
    return {**metrics, "modality": modality, "row": f"{modality} only"}


def _take(features: FeatureSet, rows: torch.Tensor) -> FeatureSet:
    return FeatureSet(
        features.global_feats[rows],
        features.tokens[rows],
        features.labels[rows],
        [features.paths[i] for i in rows.tolist()],
        list(features.skipped),
    )


@dataclass
class ModalSet:
    """One split of a site in a multi-modal federation: {modality: FeatureSet}, the site's own modality first;
    row i of every set is the same scene (same labels). A site of one modality has one set."""

    sets: dict[str, FeatureSet]

    def __len__(self) -> int:
        return len(self.primary)

    @property
    def primary(self) -> FeatureSet:
        return next(iter(self.sets.values()))

    @property
    def labels(self) -> torch.Tensor:
        return self.primary.labels

    @property
    def paths(self) -> list[str]:
        return self.primary.paths

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return [x for fs in self.sets.values() for x in fs.skipped]

    @staticmethod
    def align(
        primary: tuple[str, FeatureSet], partners: Mapping[str, tuple[FeatureSet, Mapping[str, str]]], where: str = ""
    ) -> "ModalSet":
        """The scenes readable in every modality, aligned row by row. primary: (modality, its features);
        partners: {modality: (its features, {record path: partner path})}. A scene whose patch was skipped
        (unreadable) in any modality is left out of every modality, with a log line."""
        modality, first = primary
        keep = torch.arange(len(first))
        rows: dict[str, torch.Tensor] = {}
        for m, (features, partner_of) in partners.items():
            by_path = {p: i for i, p in enumerate(features.paths)}
            rows[m] = torch.tensor(
                [by_path.get(partner_of.get(path, ""), -1) for path in first.paths], dtype=torch.long
            )
            keep = keep[rows[m][keep] >= 0]
        dropped = len(first) - len(keep)
        if dropped:
            log.warning(
                "%s: %d of %d scenes are left out: a patch of another modality is unreadable (see the "
                "skipped files above)",
                where or modality,
                dropped,
                len(first),
            )
        sets = {modality: _take(first, keep)}
        sets.update({m: _take(partners[m][0], rows[m][keep]) for m in partners})
        return ModalSet(sets)
