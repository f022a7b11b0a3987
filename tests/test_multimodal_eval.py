"""The missing-modality evaluation (fedrsclip.multimodal.evaluate_modality): one modality's test set, its own row."""

from __future__ import annotations

import pytest
import torch

from fedrsclip.adapters import ModalityAdapters
from fedrsclip.features import FeatureSet
from fedrsclip.multilabel import SigmoidCalibration, multilabel_metrics
from fedrsclip.multimodal import evaluate_modality
from fedrsclip.whitening import fit_whitening, whiten


def _test_set(n: int = 30, dim: int = 8, k: int = 4) -> FeatureSet:
    gen = torch.Generator().manual_seed(0)
    labels = (torch.rand(n, k, generator=gen) < 0.4).float()
    pooled = labels @ torch.randn(k, dim, generator=gen) + 0.3 * torch.randn(n, dim, generator=gen) + 2.0
    return FeatureSet(pooled.half(), pooled[:, None, :].repeat(1, 3, 1).half(), labels, [f"p{i}" for i in range(n)])


def test_row_equals_the_metrics_of_the_same_path_by_hand():
    test = _test_set()
    adapters = ModalityAdapters(["s2", "s1"], dim=8, rank=2)
    head = torch.nn.Linear(8, 4)
    calibration = SigmoidCalibration(4)
    with torch.no_grad():
        calibration.bias.fill_(-0.5)
    fw = fit_whitening(test)  # a modality the evaluating site does not hold: stats of the test features, no labels
    row = evaluate_modality(test, "s1", lambda pooled, tokens: head(pooled), adapters, calibration, fw, batch_size=7)
    with torch.no_grad():
        expected = multilabel_metrics(calibration(head(whiten(test, fw).global_feats.float())), test.labels)
    assert row == pytest.approx({**expected, "modality": "s1", "row": "s1 only"})


def test_single_label_data_and_an_untrained_modality_are_refused():
    test = _test_set()
    adapters = ModalityAdapters(["s2"], dim=8, rank=2)
    with pytest.raises(KeyError, match="trained s2"):
        evaluate_modality(test, "s1", lambda p, t: p[:, :4], adapters)
    single = FeatureSet(test.global_feats, test.tokens, test.labels.argmax(1), test.paths)
    with pytest.raises(ValueError, match="multi-hot"):
        evaluate_modality(single, "s2", lambda p, t: p[:, :4], adapters)
