"""Metric parity with OGB's evaluators (and scikit-learn where OGB delegates to it)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lcplm.tasks.metrics import fmax, hits_at_k, ogb_rocauc, roc_auc

ogb_node = pytest.importorskip("ogb.nodeproppred")
ogb_link = pytest.importorskip("ogb.linkproppred")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ogb_rocauc_equals_ogbn_proteins_evaluator(seed):
    g = np.random.default_rng(seed)
    n = 997
    y = (g.random((n, 112)) < g.uniform(0.01, 0.5, 112)).astype(np.int64)
    y[:, 7] = 0  # a task without positives is skipped by both
    y[:, 8] = 1  # and one without negatives
    s = g.normal(size=(n, 112))
    s[:, :20] = np.round(s[:, :20], 1)  # ties
    ref = ogb_node.Evaluator("ogbn-proteins").eval({"y_true": y, "y_pred": s})["rocauc"]
    assert ogb_rocauc(y, s) == pytest.approx(ref, abs=1e-12)
    # torch inputs, float32 scores: same value as OGB on the same float32 numbers
    s32 = torch.tensor(s, dtype=torch.float32)
    ref32 = ogb_node.Evaluator("ogbn-proteins").eval({"y_true": torch.tensor(y), "y_pred": s32})["rocauc"]
    assert ogb_rocauc(torch.tensor(y), s32) == pytest.approx(ref32, abs=1e-12)


def test_ogb_rocauc_nan_labels_are_left_out_of_their_task():
    from sklearn.metrics import roc_auc_score

    g = np.random.default_rng(3)
    y = g.integers(0, 2, (200, 3)).astype(np.float64)
    s = g.normal(size=(200, 3))
    y[:50, 1] = np.nan
    expected = np.mean([roc_auc_score(y[:, 0], s[:, 0]), roc_auc_score(y[50:, 1], s[50:, 1]), roc_auc_score(y[:, 2], s[:, 2])])
    assert ogb_rocauc(y, s) == pytest.approx(expected, abs=1e-12)


def test_ogb_rocauc_without_any_scorable_task_raises():
    with pytest.raises(ValueError, match="no task"):
        ogb_rocauc(np.zeros((5, 2)), np.zeros((5, 2)))


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("n_neg", [50, 100, 3000])
def test_hits_at_k_equals_ogbl_ppa_evaluator(seed, n_neg):
    g = torch.Generator().manual_seed(seed)
    pos = torch.randn(513, generator=g) + 1.5
    neg = torch.randn(n_neg, generator=g)
    # positives exactly equal to negatives: OGB counts a hit only when strictly greater
    pos[:40] = neg[torch.randint(0, n_neg, (40,), generator=g)]
    ev = ogb_link.Evaluator("ogbl-ppa")
    ref = ev.eval({"y_pred_pos": pos, "y_pred_neg": neg})["hits@100"]
    assert hits_at_k(pos, neg, 100) == ref
    ref_np = ev.eval({"y_pred_pos": pos.numpy(), "y_pred_neg": neg.numpy()})["hits@100"]
    assert hits_at_k(pos.numpy(), neg.numpy(), 100) == ref_np


def test_hits_at_k_tie_rule_by_hand():
    neg = torch.tensor([5.0, 4.0, 3.0, 2.0])
    # the 2nd highest negative is 4.0: 4.0 itself is not a hit, 4.5 is
    assert hits_at_k(torch.tensor([4.0, 4.5, 1.0, 9.0]), neg, 2) == 0.5
    assert hits_at_k(torch.tensor([0.0]), neg, 5) == 1.0  # fewer negatives than K


@pytest.mark.parametrize("n", [2, 63, 1000])
def test_roc_auc_equals_sklearn_with_ties(n):
    from sklearn.metrics import roc_auc_score

    g = np.random.default_rng(n)
    y = g.integers(0, 2, n)
    y[0], y[1] = 0, 1
    s = np.round(g.normal(size=n), 1)
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert np.isnan(roc_auc(np.ones(4), np.arange(4)))


def _fmax_by_hand(y, s, thresholds):
    best = 0.0
    for t in np.linspace(0, 1, thresholds):
        precisions, recalls = [], []
        for yi, si in zip(y, s):
            if yi.sum() == 0:
                continue
            pred = si >= t
            tp = (pred & (yi == 1)).sum()
            if pred.sum() > 0:
                precisions.append(tp / pred.sum())
            recalls.append(tp / yi.sum())
        if precisions:
            p, r = np.mean(precisions), np.mean(recalls)
            if p + r > 0:
                best = max(best, 2 * p * r / (p + r))
    return best


def test_fmax_matches_a_loop_over_proteins():
    g = np.random.default_rng(5)
    y = (g.random((40, 9)) < 0.3).astype(np.int64)
    y[3] = 0  # an unannotated protein is left out
    s = np.clip(y * 0.3 + g.random((40, 9)) * 0.7, 0, 1)
    assert fmax(y, s, thresholds=21) == pytest.approx(_fmax_by_hand(y, s, 21), abs=1e-12)
    assert fmax(y, y.astype(float)) == pytest.approx(1.0)
