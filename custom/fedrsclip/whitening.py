"""FW (feature whitening, seed 002): each site whitens its image features with its own statistics before scoring.

Sites with different sensors, seasons and class mixes produce CLIP features with different means and
covariances; whitening each site's features with its own statistics gives every site inputs of zero mean and
(near) isotropic covariance, so the shared prompt and the modality adapters are averaged over sites that start
from aligned distributions. The statistics stay at the site (site-local state, `state_dict` names `fw.*`): they
describe the site's data and are never sent. Choices where the seed is silent:

- ZCA whitening, x' = sqrt(m) W (x - mu) with W = Sigma*^(-1/2) (symmetric): of all whitening maps, ZCA moves
  the features least (Kessy, Lewin & Strimmer, "Optimal whitening and decorrelation", 2018), so the whitened
  features stay near CLIP's embedding space, where the text features live. Full covariance rather than a
  per-dimension std: CLIP's embedding dimensions are strongly correlated (a common "cone" direction), which a
  diagonal scaling leaves in place.
- Sigma* = (1 - a) S + a m I, Ledoit-Wolf shrinkage ("A well-conditioned estimator for large-dimensional
  covariance matrices", 2004) of the sample covariance S towards m I, m = tr(S) / E, with the data-driven a in
  [0, 1]: a site with few images (n < E = 512 is common) gets a near 1 and is mostly just centred; a large site
  gets a near 0 and full whitening. No setting to tune.
- sqrt(m) keeps the average per-dimension variance: features keep their scale (cosines do not care; the
  adapters and MIM see inputs of the size they had).
- The pooled feature and the patch tokens get separate statistics: tokens have their own mean and spread. Token
  statistics use at most `max_samples` tokens, drawn with a fixed seed (their covariance is well estimated long
  before all N x V tokens).
- Fitted on the site's training split; the test split is whitened with the same statistics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .features import FeatureSet

MAX_SAMPLES = 50_000  # rows used to fit one set of statistics (tokens: N x V rows)
_CHUNK = 8192


@dataclass
class WhiteningStats:
    """mean [E], transform [E, E] (sqrt(m) Sigma*^(-1/2)), the shrinkage a and the number of rows fitted."""

    mean: torch.Tensor
    transform: torch.Tensor
    shrinkage: float
    samples: int

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., E] -> whitened [..., E] (float32)."""
        return (x.float() - self.mean.to(x.device)) @ self.transform.to(x.device)  # transform is symmetric


def _rows(x: torch.Tensor, max_samples: int, seed: int) -> torch.Tensor:
    rows = x.reshape(-1, x.shape[-1])
    if rows.shape[0] > max_samples:
        pick = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(seed))[:max_samples]
        rows = rows[pick.sort().values]
    return rows


def fit_stats(x: torch.Tensor, max_samples: int = MAX_SAMPLES, seed: int = 0) -> WhiteningStats:
    """Ledoit-Wolf-shrunk ZCA statistics of rows x [N, E] (or [N, V, E]: every token a row).

    Raises ValueError for fewer than 2 rows or features without variance (every row the same).
    """
    rows = _rows(x, max_samples, seed)
    n, dim = rows.shape
    if n < 2:
        raise ValueError(f"feature whitening needs at least 2 feature rows to estimate a covariance; got {n}")
    mean = torch.zeros(dim, dtype=torch.float64)
    for start in range(0, n, _CHUNK):
        mean += rows[start : start + _CHUNK].double().sum(0)
    mean /= n
    scatter = torch.zeros(dim, dim, dtype=torch.float64)
    fourth = 0.0  # sum_i ||x_i - mu||^4, for the variance of the covariance estimate
    for start in range(0, n, _CHUNK):
        centred = rows[start : start + _CHUNK].double() - mean
        scatter += centred.T @ centred
        fourth += float((centred.pow(2).sum(1) ** 2).sum())
    cov = scatter / n
    m = float(torch.trace(cov)) / dim
    if not m > 0:
        raise ValueError(f"feature whitening: the {n} feature rows have no variance (all identical)")
    # Ledoit & Wolf (2004), lemma 3.2-3.4: d2 = ||S - mI||^2, b2 = min(d2, 1/n^2 sum_i ||x_i x_i' - S||^2),
    # with sum_i ||x_i x_i' - S||_F^2 = sum_i ||x_i||^4 - n ||S||_F^2. Frobenius norms / E, as in the paper.
    frob = float((cov * cov).sum())
    d2 = (frob - 2 * m * float(torch.trace(cov)) + m * m * dim) / dim
    b2 = min(d2, (fourth / n - frob) / n / dim)
    shrinkage = 1.0 if d2 <= 0 else min(max(b2 / d2, 0.0), 1.0)
    target = (1.0 - shrinkage) * cov + shrinkage * m * torch.eye(dim, dtype=torch.float64)
    eigenvalues, vectors = torch.linalg.eigh(target)
    inv_sqrt = (vectors * eigenvalues.clamp(min=1e-12 * m).rsqrt()) @ vectors.T
    return WhiteningStats(mean.float(), (math.sqrt(m) * inv_sqrt).float(), float(shrinkage), int(n))


@dataclass
class FeatureWhitening:
    """A site's FW statistics of one modality: one set for pooled features, one for patch tokens."""

    pooled: WhiteningStats
    tokens: WhiteningStats

    def state_dict(self, prefix: str = "fw") -> dict[str, torch.Tensor]:
        """Site-local state (never sent): {prefix.pooled.mean, .transform, .shrinkage, .samples, same for tokens}."""
        out = {}
        for part in ("pooled", "tokens"):
            s: WhiteningStats = getattr(self, part)
            out.update(
                {
                    f"{prefix}.{part}.mean": s.mean,
                    f"{prefix}.{part}.transform": s.transform,
                    f"{prefix}.{part}.shrinkage": torch.tensor(s.shrinkage),
                    f"{prefix}.{part}.samples": torch.tensor(s.samples),
                }
            )
        return out

    @staticmethod
    def from_state_dict(state: dict[str, torch.Tensor], prefix: str = "fw") -> "FeatureWhitening":
        """The inverse of state_dict; KeyError naming a missing entry."""
        parts = {}
        for part in ("pooled", "tokens"):
            key = f"{prefix}.{part}"
            parts[part] = WhiteningStats(
                state[f"{key}.mean"],
                state[f"{key}.transform"],
                float(state[f"{key}.shrinkage"]),
                int(state[f"{key}.samples"]),
            )
        return FeatureWhitening(**parts)


def fit_whitening(features: FeatureSet, max_samples: int = MAX_SAMPLES, seed: int = 0) -> FeatureWhitening:
    """FW statistics from a site's training FeatureSet (one modality). ValueError for fewer than 2 images."""
    if len(features) < 2:
        raise ValueError(
            f"feature whitening (multimodal.whitening) needs at least 2 training images at a site; this site's "
            f"training split has {len(features)}: set multimodal.whitening: false (--set multimodal.whitening=false), "
            "or give the site more training images (fewer sites, or a larger dataset)"
        )
    return FeatureWhitening(
        fit_stats(features.global_feats, max_samples, seed), fit_stats(features.tokens, max_samples, seed)
    )


def whiten(features: FeatureSet, fw: FeatureWhitening, batch: int = 256) -> FeatureSet:
    """A new FeatureSet with whitened pooled features and tokens (stored in fp16, like the cache); labels, paths
    and skipped entries kept."""
    pooled, tokens = [], []
    for start in range(0, len(features), batch):
        sl = slice(start, start + batch)
        pooled.append(fw.pooled.apply(features.global_feats[sl]).half())
        tokens.append(fw.tokens.apply(features.tokens[sl]).half())
    return FeatureSet(
        torch.cat(pooled), torch.cat(tokens), features.labels, list(features.paths), list(features.skipped)
    )
