"""ProteinGym's zero-shot metrics against independent computations: scipy's spearmanr,
scikit-learn's roc_auc_score / matthews_corrcoef / ndcg_score, ProteinGym's own functions as
written in ``proteingym/performance_DMS_benchmarks.py`` (transcribed below), and small cases
worked by hand, ties and ProteinGym's conventions (min-max gains, top 10%, strict percentile,
median cut) included."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lcplm.tasks import metrics as M


def _proteingym_calc_ndcg(y_true, y_score, top=10):
    # transcribed from ProteinGym's calc_ndcg (quantile=True, top=10)
    k = np.floor(y_true.shape[0] * (top / 100)).astype(int)
    gains = (y_true - np.min(y_true)) / (np.max(y_true) - np.min(y_true))
    ranks = np.argsort(np.argsort(-y_score)) + 1
    ranks_k, gains_k = ranks[ranks <= k], gains[ranks <= k]
    ranks_fil, gains_fil = ranks_k[gains_k != 0], gains_k[gains_k != 0]
    if len(ranks_fil) == 0:
        return 0
    dcg = np.sum([g / np.log2(r + 1) for r, g in zip(ranks_fil, gains_fil)])
    ideal_ranks = np.argsort(np.argsort(-gains)) + 1
    ideal_ranks_k, ideal_gains_k = ideal_ranks[ideal_ranks <= k], gains[ideal_ranks <= k]
    ideal_ranks_fil, ideal_gains_fil = ideal_ranks_k[ideal_gains_k != 0], ideal_gains_k[ideal_gains_k != 0]
    idcg = np.sum([g / np.log2(r + 1) for r, g in zip(ideal_ranks_fil, ideal_gains_fil)])
    return dcg / idcg


def _proteingym_calc_toprecall(true_scores, model_scores, top_true=10, top_model=10):
    # transcribed from ProteinGym's calc_toprecall
    top_true = true_scores > np.percentile(true_scores, 100 - top_true)
    top_model = model_scores > np.percentile(model_scores, 100 - top_model)
    tp = top_true & top_model
    return tp.sum() / top_true.sum() if top_true.sum() > 0 else 0


def _assay(seed, n=500, ties=False):
    rng = np.random.default_rng(seed)
    y = rng.normal(size=n)
    s = 0.6 * y + rng.normal(size=n)
    if ties:  # rounded scores: many ties, as wt-marginals of identical substitutions give
        s = np.round(s, 1)
        y = np.round(y, 1)
    bins = (y >= np.quantile(y, 0.4)).astype(int)
    return y, s, bins


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_scipy_sklearn_and_proteingym(seed, ties):
    scipy_stats = pytest.importorskip("scipy.stats")
    skm = pytest.importorskip("sklearn.metrics")
    y, s, bins = _assay(seed, ties=ties)
    got = M.proteingym_metrics(y, s, bins)
    assert got["spearman"] == pytest.approx(scipy_stats.spearmanr(y, s)[0], abs=1e-12)
    assert got["auc"] == pytest.approx(skm.roc_auc_score(bins, s), abs=1e-12)
    pred = (s >= np.median(s)).astype(int)
    assert got["mcc"] == pytest.approx(skm.matthews_corrcoef(bins, pred), abs=1e-12)
    assert got["ndcg"] == pytest.approx(_proteingym_calc_ndcg(y, s), abs=1e-12)
    assert got["top10_recall"] == pytest.approx(_proteingym_calc_toprecall(y, s), abs=1e-12)
    if not ties:  # without ties ProteinGym's NDCG is scikit-learn's on min-max gains at k = floor(N/10)
        gains = (y - y.min()) / (y.max() - y.min())
        assert got["ndcg"] == pytest.approx(skm.ndcg_score(gains[None], s[None], k=len(y) // 10), abs=1e-12)


def test_spearman_average_ranks_by_hand():
    # x ranks [1, 2.5, 2.5, 4], y ranks [4, 3, 2, 1]: rho = -0.9486832980505138
    assert M.average_ranks([1, 5, 5, 7]).tolist() == [1, 2.5, 2.5, 4]
    assert M.spearman([1, 5, 5, 7], [9, 8, 7, 6]) == pytest.approx(-0.9486832980505138, abs=1e-12)
    assert math.isnan(M.spearman([1, 1, 1], [1, 2, 3]))


def test_ndcg_by_hand_uses_min_max_gains_and_top_ten_percent():
    # 20 mutants: k = 2. Measurements 0..19 (gains i/19); the model ranks mutant 19 first, then 0.
    y = np.arange(20, dtype=float)
    s = np.zeros(20)
    s[19], s[0] = 2.0, 1.0
    s[1:19] = -np.arange(1, 19)  # the rest below, distinct
    dcg = 1.0 / np.log2(2) + 0.0  # mutant 0 has gain 0 and is dropped
    idcg = 1.0 / np.log2(2) + (18 / 19) / np.log2(3)
    assert M.proteingym_ndcg(y, s) == pytest.approx(dcg / idcg, abs=1e-12)
    assert M.proteingym_ndcg(y[:9], s[:9]) == 0.0  # fewer than 10 mutants: k = 0
    assert math.isnan(M.proteingym_ndcg(np.ones(20), s))


def test_top_recall_is_strictly_above_the_90th_percentile():
    # 20 values 0..19: the 90th percentile is 17.1, so "top" is {18, 19} for both sides
    y = np.arange(20, dtype=float)
    s = y.copy()
    s[19] = -1.0  # the model misses the best mutant
    assert M.top_recall(y, s) == pytest.approx(0.5)
    # 10 values 0..9: percentile 8.1, top = {9}; a tie at the cut is not "top"
    assert M.top_recall(np.arange(10.0), np.r_[np.zeros(9), 1.0]) == 1.0
    assert M.top_recall(np.ones(10), np.arange(10.0)) == 0.0  # nothing strictly above: 0, as ProteinGym


def test_mcc_cuts_scores_at_their_median_inclusive():
    bins = np.array([1, 1, 0, 0, 1])
    s = np.array([5.0, 4.0, 3.0, 1.0, 2.0])  # median 3: predictions 1,1,1,0,0
    tp, tn, fp, fn = 2, 1, 1, 1
    want = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert M.mcc_at_median(bins, s) == pytest.approx(want, abs=1e-12)
    assert M.mcc_at_median(np.ones(4), np.arange(4.0)) == 0.0  # one class: sklearn's 0


def test_auc_is_nan_with_one_class_and_metrics_without_bins_skip_auc_and_mcc():
    y, s, _ = _assay(0, n=50)
    out = M.proteingym_metrics(y, s)
    assert set(out) == {"spearman", "ndcg", "top10_recall"}
    assert math.isnan(M.proteingym_metrics(y, s, np.ones(50, int))["auc"])
