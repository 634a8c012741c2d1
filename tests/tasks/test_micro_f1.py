"""Micro-F1 of thresholded multi-label predictions (the interaction-type task's metric), against
scikit-learn's ``f1_score(average="micro")``."""

from __future__ import annotations

import math

import pytest
import torch

from lcplm.tasks.downstream import prediction_metrics
from lcplm.tasks.metrics import micro_f1


def test_micro_f1_by_hand_and_equal_to_sklearn():
    f1_score = pytest.importorskip("sklearn.metrics").f1_score

    y = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0]])
    p = torch.tensor([[0.9, 0.2, 0.5], [0.6, 0.8, 0.1], [0.7, 0.4, 0.3]])
    # predicted (p > 0.5; 0.5 itself is not): [1,0,0], [1,1,0], [1,0,0] -> TP 3, FP 1, FN 2
    assert micro_f1(y, p) == pytest.approx(2 * 3 / (2 * 3 + 1 + 2))
    assert micro_f1(y, p) == pytest.approx(f1_score(y.numpy(), (p > 0.5).numpy(), average="micro"))
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        y = (torch.rand(50, 7, generator=g) < 0.3).long()
        p = torch.rand(50, 7, generator=g)
        for t in (0.3, 0.5, 0.8):
            assert micro_f1(y, p, t) == pytest.approx(f1_score(y.numpy(), (p > t).numpy(), average="micro"), abs=1e-12)


def test_micro_f1_without_true_or_predicted_labels_is_nan():
    assert math.isnan(micro_f1(torch.zeros(3, 2), torch.zeros(3, 2)))
    assert micro_f1(torch.zeros(3, 2), torch.ones(3, 2)) == 0.0  # only false positives


def test_prediction_metrics_add_micro_f1_of_sigmoid_outputs_only_when_asked():
    logits = torch.tensor([[2.0, -1.0], [-3.0, 0.5], [1.0, 1.0]])
    y = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    plain = prediction_metrics("multilabel", logits, y)
    with_f1 = prediction_metrics("multilabel", logits, y, f1_threshold=0.5)
    assert "micro_f1" not in plain and set(with_f1) == set(plain) | {"micro_f1"}
    # sigmoid > 0.5 <=> logit > 0: predicted [1,0], [0,1], [1,1] -> TP 3, FP 1, FN 0
    assert with_f1["micro_f1"] == pytest.approx(6 / 7)
