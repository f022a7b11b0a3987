"""Multi-label scenes (issue 16, seed 002): the loss on class scores, its sigmoid calibration, F1 and mAP.

A multi-label scene (BigEarthNet: 1 to ~5 of the 19 classes per patch) has a multi-hot target t [B, K]. The
prompt model's class scores stay what they are for single-label data, logits = logit_scale * cos [B, K]
(logit_scale ~ 100 for a trained CLIP), and the multi-label path adds two things. The full design note, with
the choices where the seed is silent, is docs/multimodal.md.

Calibration (`SigmoidCalibration`): z_k = logits_k + b_k with a learnable per-class bias b [K]. A softmax needs
no bias (it is shift-invariant), a sigmoid does: every CLIP cosine of an image with a text sits in a narrow band
(about 0.2-0.35 for a trained CLIP), so sigmoid(100 * cos) is ~1 for every class and BCE starts saturated. CLIP's
own temperature is kept (differences of 0.02-0.05 in cosine become 2-5 logits: a usable sigmoid slope, and the
same scores as the single-label path); only the offset is learned. b starts from the data (`init_from`):
b_k = logit(pi) - median_n(logits_nk), pi the site's overall positive rate, so each class starts with a
probability near pi on a typical image instead of ~1. b is fitted to the site's own label prior, so it is
site-local state: never sent (like the private prompt). Its gradient is O(1) per sample, so it wants a larger
learning rate than the prompts (`BIAS_LR`).

Loss (`multilabel_loss`): binary cross-entropy per class, summed over classes and averaged over the batch (the
usual multi-label normalisation: the loss does not shrink as K grows). BCE by default: it has no extra
hyper-parameters and is a proper scoring rule, so the sigmoid outputs stay calibrated probabilities for the 0.5
threshold below. The asymmetric loss (Ridnik et al., "Asymmetric Loss For Multi-Label Classification", ICCV 2021)
is the option for strongly imbalanced label sets: gamma_neg > 0 down-weights easy negatives and `clip` shifts
negative probabilities down; with gamma_pos = gamma_neg = clip = 0 it is exactly BCE.

Metrics (`multilabel_metrics`, in percent like the single-label accuracy):
  threshold  a class is predicted where sigmoid(z) >= 0.5 (z >= 0 on the calibrated scores); no top-1 forcing.
  micro F1   2 TP / (2 TP + FP + FN) counted over every (image, class) entry.
  macro F1   the mean over classes of each class's F1, over the classes with at least one positive target in the
             evaluated set (a class absent from a site's test set has no defined recall; its false positives still
             count in micro F1).
  mAP        the mean over the same classes of the average precision AP_k = sum_n (R_n - R_{n-1}) P_n over the
             distinct score thresholds in decreasing order (no interpolation: scikit-learn's
             average_precision_score). It uses the ranking only, so it does not depend on the threshold.
Per site and pooled (`metrics_by_site`): the pooled row is computed on every site's predictions concatenated,
not averaged from the site rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

THRESHOLD = 0.5  # sigmoid probability at and above which a class is predicted
BIAS_LR = 0.1  # suggested SGD learning rate of the calibration bias (prompts use train.lr ~ 1e-3)
_PRIOR_CLIP = (0.01, 0.99)  # the positive rate used by init_from, kept away from 0 and 1 (logit finite)


def multi_hot(labels: list[list[int]] | list[tuple[int, ...]], num_classes: int) -> torch.Tensor:
    """Label lists -> float multi-hot [N, K]; ValueError naming the record with a label outside 0..K-1."""
    out = torch.zeros(len(labels), num_classes)
    for row, label in enumerate(labels):
        bad = [x for x in label if not 0 <= int(x) < num_classes]
        if bad:
            raise ValueError(f"record {row} has labels {bad} outside 0..{num_classes - 1}")
        out[row, list(label)] = 1.0
    return out


def check_targets(logits: torch.Tensor, targets: torch.Tensor) -> None:
    """ValueError unless logits and targets are [B, K] alike and targets are 0/1 (a multi-label batch)."""
    if targets.ndim != 2 or targets.shape != logits.shape:
        raise ValueError(
            f"multi-label targets must be multi-hot [B, K] matching the scores {tuple(logits.shape)}; "
            f"got {tuple(targets.shape)} (class indices [B] are single-label data: use the "
            "single-label path)"
        )
    if not bool(((targets == 0) | (targets == 1)).all()):
        raise ValueError("multi-label targets must hold only 0 and 1")


def multilabel_loss(
    logits: torch.Tensor, targets: torch.Tensor, gamma_pos: float = 0.0, gamma_neg: float = 0.0, clip: float = 0.0
) -> torch.Tensor:
    """Binary cross-entropy (default) or the asymmetric loss on calibrated scores; a scalar.

    logits: [B, K] calibrated scores z (SigmoidCalibration's output); targets: [B, K] multi-hot. Per entry, with
    p = sigmoid(z) and p_m = max(p - clip, 0) (Ridnik et al. 2021, eq. 1-3):
        -t (1 - p)^gamma_pos log p - (1 - t) p_m^gamma_neg log(1 - p_m)
    summed over classes, averaged over the batch. With every option 0 it equals
    `binary_cross_entropy_with_logits(z, t, reduction="sum") / B`. ValueError on mismatched shapes, non-0/1
    targets, negative gammas or a clip outside [0, 1).
    """
    check_targets(logits, targets)
    if gamma_pos < 0 or gamma_neg < 0 or not 0.0 <= clip < 1.0:
        raise ValueError(
            f"asymmetric loss needs gamma_pos, gamma_neg >= 0 and 0 <= clip < 1; got {gamma_pos}, {gamma_neg}, {clip}"
        )
    z = logits.float()
    t = targets.float()
    if gamma_pos == gamma_neg == clip == 0.0:
        return F.binary_cross_entropy_with_logits(z, t, reduction="sum") / z.shape[0]
    p = torch.sigmoid(z)
    log_p = F.logsigmoid(z)
    if clip > 0:
        p_neg = (p - clip).clamp(min=0.0)
        # 1 - p_m = min(sigmoid(-z) + clip, 1): exact in float32 where p is near 1 (1 - p would round off)
        log_not = torch.log((torch.sigmoid(-z) + clip).clamp(max=1.0))
    else:
        p_neg = p
        log_not = F.logsigmoid(-z)  # log(1 - p), stable for large z
    # Focusing weights are constants (as in the paper's reference formulation): gradients flow through the logs.
    w_pos = (1.0 - p).detach().pow(gamma_pos) if gamma_pos else 1.0
    w_neg = p_neg.detach().pow(gamma_neg) if gamma_neg else 1.0
    loss = -(t * w_pos * log_p + (1.0 - t) * w_neg * log_not)
    return loss.sum() / z.shape[0]


class SigmoidCalibration(nn.Module):
    """z = logits + bias: CLIP's class scores [B, K] made usable for a per-class sigmoid (module docstring).

    The bias [K] is site-local state (fitted to the site's label prior): its name `calibration.bias` is in no
    allow-list and it must never be sent.
    """

    def __init__(self, num_classes: int):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"SigmoidCalibration needs at least one class; got {num_classes}")
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [B, K] -> calibrated scores [B, K]."""
        return logits + self.bias.to(logits.dtype)

    @torch.no_grad()
    def init_from(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Set b_k = logit(pi) - median_n(logits_nk) from the site's (uncalibrated) training scores [N, K] and
        multi-hot targets [N, K]; pi = the overall positive rate, clipped to [0.01, 0.99]."""
        check_targets(logits, targets)
        if logits.shape[0] == 0:
            raise ValueError("SigmoidCalibration.init_from needs at least one training image")
        prior = float(targets.float().mean().clamp(*_PRIOR_CLIP))
        median = logits.float().median(dim=0).values
        self.bias.copy_((math.log(prior / (1.0 - prior)) - median).to(self.bias))


def _as_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def predict_labels(scores: np.ndarray | torch.Tensor, threshold: float = THRESHOLD) -> np.ndarray:
    """Calibrated scores [N, K] -> boolean predictions [N, K]: sigmoid(z) >= threshold."""
    z = _as_numpy(scores).astype(np.float64)
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be a probability strictly between 0 and 1; got {threshold}")
    return z >= math.log(threshold / (1.0 - threshold))


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """AP of one class: scores [N], positives [N] bool; sum over distinct thresholds of (R_n - R_{n-1}) P_n.

    Ties share a threshold (all tied items enter together), as scikit-learn's average_precision_score. NaN when
    there is no positive.
    """
    positives = np.asarray(positives, dtype=bool)
    n_pos = int(positives.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    sorted_scores = np.asarray(scores, dtype=np.float64)[order]
    hits = positives[order].astype(np.float64)
    # The last index of each run of equal scores: the points where the threshold moves past a distinct value.
    last = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(sorted_scores) - 1]
    tp = np.cumsum(hits)[last]
    precision = tp / (last + 1)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def multilabel_metrics(
    scores: np.ndarray | torch.Tensor, targets: np.ndarray | torch.Tensor, threshold: float = THRESHOLD
) -> dict[str, Any]:
    """Micro F1, macro F1 and mAP in percent (module docstring for the rules) of calibrated scores [N, K] against
    multi-hot targets [N, K].

    Returns {"micro_f1", "macro_f1", "mAP", "samples", "classes_evaluated"}; the scores are NaN where undefined
    (no image, or no class with a positive target; micro F1 when nothing is positive or predicted).
    """
    z = _as_numpy(scores).astype(np.float64)
    t = _as_numpy(targets)
    if z.ndim != 2 or z.shape != t.shape:
        raise ValueError(f"scores and targets must both be [N, K]; got {z.shape} and {t.shape}")
    t = t.astype(bool)
    pred = predict_labels(z, threshold)
    tp = (pred & t).sum(0).astype(np.float64)
    fp = (pred & ~t).sum(0).astype(np.float64)
    fn = (~pred & t).sum(0).astype(np.float64)
    present = t.sum(0) > 0
    denominator = 2 * tp.sum() + fp.sum() + fn.sum()
    micro = 100.0 * 2 * tp.sum() / denominator if denominator > 0 else float("nan")
    if present.any():
        per_class = 2 * tp[present] / (2 * tp[present] + fp[present] + fn[present])
        macro = 100.0 * float(per_class.mean())
        mean_ap = 100.0 * float(np.mean([average_precision(z[:, k], t[:, k]) for k in np.flatnonzero(present)]))
    else:
        macro = mean_ap = float("nan")
    return {
        "micro_f1": float(micro),
        "macro_f1": macro,
        "mAP": mean_ap,
        "samples": int(z.shape[0]),
        "classes_evaluated": int(present.sum()),
    }


def metrics_by_site(
    per_site: Mapping[str, tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor]], threshold: float = THRESHOLD
) -> dict[str, dict[str, Any]]:
    """{site: (scores [N_i, K], targets [N_i, K])} -> {site: metrics, ..., "pooled": metrics of all rows}.

    ValueError when a site is called "pooled" or the sites disagree on K.
    """
    if "pooled" in per_site:
        raise ValueError("a site may not be called 'pooled': that row is the pooled metrics")
    if not per_site:
        raise ValueError("metrics_by_site needs at least one site")
    widths = {site: _as_numpy(s).shape[-1] for site, (s, _) in per_site.items()}
    if len(set(widths.values())) != 1:
        raise ValueError(f"sites score different numbers of classes: {widths}")
    out = {site: multilabel_metrics(s, t, threshold) for site, (s, t) in per_site.items()}
    out["pooled"] = multilabel_metrics(
        np.concatenate([_as_numpy(s) for s, _ in per_site.values()]),
        np.concatenate([_as_numpy(t) for _, t in per_site.values()]),
        threshold,
    )
    return out
