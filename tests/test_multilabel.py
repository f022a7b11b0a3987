"""Multi-label loss, sigmoid calibration and metrics (fedrsclip.multilabel), against brute-force references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedrsclip.multilabel import (
    SigmoidCalibration,
    average_precision,
    metrics_by_site,
    multi_hot,
    multilabel_loss,
    multilabel_metrics,
    predict_labels,
)


def _brute_ap(scores: np.ndarray, positives: np.ndarray) -> float:
    """AP by its definition: for every distinct threshold t (descending) precision and recall of scores >= t."""
    total = positives.sum()
    ap, previous_recall = 0.0, 0.0
    for t in sorted(set(scores.tolist()), reverse=True):
        chosen = scores >= t
        tp = (chosen & positives).sum()
        recall = tp / total
        ap += (recall - previous_recall) * tp / chosen.sum()
        previous_recall = recall
    return float(ap)


def _brute_f1(pred: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    """Micro and macro F1 (macro over classes with a positive target) by counting entry by entry."""
    tp = fp = fn = 0
    per_class = []
    for k in range(t.shape[1]):
        ctp = cfp = cfn = 0
        for n in range(t.shape[0]):
            ctp += bool(pred[n, k] and t[n, k])
            cfp += bool(pred[n, k] and not t[n, k])
            cfn += bool(not pred[n, k] and t[n, k])
        tp, fp, fn = tp + ctp, fp + cfp, fn + cfn
        if t[:, k].any():
            per_class.append(2 * ctp / (2 * ctp + cfp + cfn))
    return 100 * 2 * tp / (2 * tp + fp + fn), 100 * float(np.mean(per_class))


def _random_case(seed: int, n: int = 40, k: int = 6):
    rng = np.random.default_rng(seed)
    targets = rng.random((n, k)) < 0.3
    targets[:, -1] = False  # a class absent from this test set
    scores = rng.normal(0, 1, (n, k)) + 1.5 * targets
    scores[:5, 0] = scores[5:10, 0] = 0.25  # ties across positives and negatives
    return scores, targets


def test_bce_is_torch_bce_summed_over_classes():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 5, generator=gen) * 3
    targets = (torch.rand(8, 5, generator=gen) < 0.4).float()
    expected = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / 8
    assert torch.allclose(multilabel_loss(logits, targets), expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_asymmetric_loss_reduces_to_bce_and_down_weights_easy_negatives(seed):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(16, 7, generator=gen) * 4
    targets = (torch.rand(16, 7, generator=gen) < 0.3).float()
    bce = multilabel_loss(logits, targets)
    # gamma 0 through the general path (a tiny clip) is BCE up to the clip, even for confident scores
    assert torch.allclose(multilabel_loss(logits, targets, clip=1e-12), bce, rtol=1e-6, atol=1e-5)
    confident = torch.tensor([[12.0, -12.0]])
    assert torch.allclose(
        multilabel_loss(confident, torch.tensor([[0.0, 1.0]]), clip=1e-12),
        multilabel_loss(confident, torch.tensor([[0.0, 1.0]])),
        rtol=1e-6,
    )
    easy_negative = torch.tensor([[-4.0, 3.0]])
    target = torch.tensor([[0.0, 1.0]])
    asl = multilabel_loss(easy_negative, target, gamma_neg=4.0, clip=0.05)
    plain = multilabel_loss(easy_negative, target)
    positive_only = -F.logsigmoid(torch.tensor(3.0))
    assert plain > positive_only + 0.01  # BCE pays for the easy negative
    assert torch.allclose(asl, positive_only, atol=1e-6)  # ASL shifts it below the clip: no cost at all
    loss = multilabel_loss(logits.requires_grad_(), targets, gamma_neg=2.0, clip=0.05)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_single_label_targets_and_bad_options_are_refused():
    with pytest.raises(ValueError, match="single-label"):
        multilabel_loss(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="only 0 and 1"):
        multilabel_loss(torch.randn(2, 3), torch.full((2, 3), 0.5))
    with pytest.raises(ValueError, match="gamma"):
        multilabel_loss(torch.randn(2, 3), torch.zeros(2, 3), gamma_neg=-1.0)
    with pytest.raises(ValueError, match="outside 0..2"):
        multi_hot([[0, 3]], 3)


def test_calibration_takes_clip_scores_out_of_saturation():
    # CLIP-like scores: logit_scale 100 x cosines of 0.20-0.30, positives a little higher.
    gen = torch.Generator().manual_seed(0)
    targets = (torch.rand(64, 10, generator=gen) < 0.2).float()
    offsets = torch.linspace(0.2, 0.3, 10)  # each class prompt has its own typical similarity
    logits = 100 * (offsets + 0.01 * torch.randn(64, 10, generator=gen) + 0.03 * targets)
    head = SigmoidCalibration(10)
    before = multilabel_loss(head(logits), targets)
    assert torch.sigmoid(head(logits)).mean() > 0.99  # a plain sigmoid on CLIP scores says "yes" to everything
    head.init_from(logits, targets)
    after = multilabel_loss(head(logits), targets)
    assert after < before / 5
    with torch.no_grad():  # each class: its median image gets the site's positive rate
        median_prob = torch.sigmoid(head(logits)).median(dim=0).values
    assert torch.allclose(median_prob, targets.mean().expand(10), atol=1e-4)
    f1 = multilabel_metrics(head(logits).detach(), targets)["micro_f1"]
    assert f1 > multilabel_metrics(logits, targets)["micro_f1"]


def test_threshold_rule_is_probability_half():
    z = np.array([[-0.1, 0.0, 0.1]])
    assert predict_labels(z).tolist() == [[False, True, True]]
    assert predict_labels(z, threshold=0.6).tolist() == [[False, False, False]]
    with pytest.raises(ValueError, match="threshold"):
        predict_labels(z, threshold=1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_average_precision_matches_its_definition_with_ties(seed):
    scores, targets = _random_case(seed)
    for k in range(targets.shape[1] - 1):
        assert average_precision(scores[:, k], targets[:, k]) == pytest.approx(_brute_ap(scores[:, k], targets[:, k]))
    assert math.isnan(average_precision(scores[:, -1], targets[:, -1]))


@pytest.mark.parametrize("seed", [0, 1])
def test_metrics_match_brute_force(seed):
    scores, targets = _random_case(seed)
    out = multilabel_metrics(scores, targets)
    micro, macro = _brute_f1(scores >= 0, targets)
    assert out["micro_f1"] == pytest.approx(micro)
    assert out["macro_f1"] == pytest.approx(macro)
    present = [k for k in range(targets.shape[1]) if targets[:, k].any()]
    assert out["mAP"] == pytest.approx(100 * np.mean([_brute_ap(scores[:, k], targets[:, k]) for k in present]))
    assert out["classes_evaluated"] == len(present) == targets.shape[1] - 1
    assert out["samples"] == len(scores)


def test_metrics_match_sklearn():
    from sklearn import metrics  # the reference (requirements.txt: test references)

    scores, targets = _random_case(3)
    present = [k for k in range(targets.shape[1]) if targets[:, k].any()]
    out = multilabel_metrics(scores, targets)
    pred = scores >= 0
    assert out["micro_f1"] == pytest.approx(100 * metrics.f1_score(targets, pred, average="micro"))
    assert out["macro_f1"] == pytest.approx(100 * metrics.f1_score(targets, pred, average="macro", labels=present))
    assert out["mAP"] == pytest.approx(100 * metrics.average_precision_score(targets[:, present], scores[:, present]))


def test_undefined_metrics_are_nan_not_zero():
    out = multilabel_metrics(np.full((3, 2), -5.0), np.zeros((3, 2)))
    assert math.isnan(out["micro_f1"]) and math.isnan(out["macro_f1"]) and math.isnan(out["mAP"])
    assert out["classes_evaluated"] == 0


def test_pooled_row_is_computed_on_all_rows_not_averaged():
    a_scores, a_targets = _random_case(0, n=30)
    b_scores, b_targets = _random_case(5, n=10)
    rows = metrics_by_site({"site-1": (a_scores, a_targets), "site-2": (torch.tensor(b_scores), b_targets)})
    both = multilabel_metrics(np.concatenate([a_scores, b_scores]), np.concatenate([a_targets, b_targets]))
    assert rows["pooled"] == both
    assert rows["site-1"] == multilabel_metrics(a_scores, a_targets)
    mean_of_sites = (rows["site-1"]["micro_f1"] + rows["site-2"]["micro_f1"]) / 2
    assert rows["pooled"]["micro_f1"] != pytest.approx(mean_of_sites)  # unequal sites: pooling weighs by entries
    with pytest.raises(ValueError, match="pooled"):
        metrics_by_site({"pooled": (a_scores, a_targets)})
    with pytest.raises(ValueError, match="different numbers of classes"):
        metrics_by_site({"a": (a_scores, a_targets), "b": (a_scores[:, :3], a_targets[:, :3])})
