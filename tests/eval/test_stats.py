"""Statistics behind eval-lm and the claims report: interval math, paired tests, scaling fits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lcplm.eval import stats


def test_ratio_bootstrap_is_the_token_weighted_mean_with_the_textbook_width():
    rng = np.random.default_rng(1)
    n = 400
    den = rng.integers(20, 200, n).astype(float)
    per_token = rng.normal(2.5, 0.4, n)
    num = per_token * den
    iv = stats.ratio_bootstrap(num, den, n_boot=3000, seed=0)
    assert iv.estimate == pytest.approx(num.sum() / den.sum(), abs=1e-12)
    assert iv.low < iv.estimate < iv.high and iv.n == n
    # delta-method standard error of a ratio estimator
    r = num.sum() / den.sum()
    se = math.sqrt(((num - r * den) ** 2).sum()) / den.sum()
    assert (iv.high - iv.low) == pytest.approx(2 * 1.96 * se, rel=0.12)
    # the same seed gives the same interval; nothing to estimate is None, not NaN
    assert stats.ratio_bootstrap(num, den, n_boot=3000, seed=0) == iv
    assert stats.ratio_bootstrap([], []) is None
    assert stats.ratio_bootstrap([0.0, 0.0], [0, 0]) is None


def test_bootstrap_interval_covers_the_truth_at_about_the_nominal_rate():
    rng = np.random.default_rng(7)
    hits = 0
    for rep in range(200):
        x = rng.exponential(1.0, 60)  # mean 1
        iv = stats.mean_interval(x, n_boot=400, seed=rep)
        hits += iv.low <= 1.0 <= iv.high
    assert 0.86 <= hits / 200 <= 0.99  # percentile bootstrap at n=60 on skewed data undercovers a little


def test_paired_bootstrap_detects_a_shift_and_not_its_absence():
    rng = np.random.default_rng(2)
    den = rng.integers(10, 100, 300).astype(float)
    base = rng.normal(2.0, 0.5, 300) * den
    same = stats.paired_ratio_bootstrap(base, den, base, den, n_boot=500)
    assert same.difference.estimate == 0 and same.p_value == 1.0
    shifted = stats.paired_ratio_bootstrap(base - 0.1 * den, den, base, den, n_boot=2000)
    assert shifted.difference.estimate == pytest.approx(-0.1)
    assert shifted.difference.high < 0 and shifted.p_value <= 2 / 2000 + 1e-12
    assert shifted.p_less == pytest.approx(1 / 2000) and shifted.p_greater == 1.0
    noise = stats.paired_ratio_bootstrap(base + rng.normal(0, 0.3, 300) * den, den, base, den, n_boot=2000)
    assert noise.difference.low < 0 < noise.difference.high and noise.p_value > 0.05


def test_sign_and_wilcoxon_tests_match_exact_values():
    assert stats.sign_test([1] * 10) == pytest.approx(2 / 1024)
    assert stats.sign_test([1] * 10, "greater") == pytest.approx(1 / 1024)
    assert stats.sign_test([-1] * 10, "greater") == pytest.approx(1.0)
    assert stats.sign_test([1, -1, 0]) == 1.0
    d = np.arange(1, 9, dtype=float)  # W+ = 36, the most extreme of 2^8 sign patterns
    assert stats.wilcoxon_signed_rank(d, "greater") == pytest.approx(1 / 256)
    assert stats.wilcoxon_signed_rank(d) == pytest.approx(2 / 256)
    assert stats.wilcoxon_signed_rank(-d, "less") == pytest.approx(1 / 256)


def test_tests_agree_with_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3)
    for n in (5, 12, 25, 60):
        d = rng.normal(0.3, 1.0, n)
        for alt in ("two-sided", "less", "greater"):
            ref = scipy_stats.wilcoxon(d, alternative=alt, method="exact" if n <= 25 else "approx", correction=True).pvalue
            assert stats.wilcoxon_signed_rank(d, alt) == pytest.approx(ref, rel=1e-6, abs=1e-9), (n, alt)
            k = int((d > 0).sum())
            assert stats.sign_test(d, alt) == pytest.approx(scipy_stats.binomtest(k, n, 0.5, alternative=alt).pvalue, rel=1e-9)


def test_holm_adjustment():
    assert stats.holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])


def _synthetic(rng, n, E=1.8, A=40.0, alpha=0.3, noise=0.01):
    y = E + A * n**-alpha
    return y + rng.normal(0, noise, len(n)), np.full(len(n), noise)


def test_scaling_fit_recovers_known_parameters():
    n = np.geomspace(1e4, 1e9, 8)
    y, se = _synthetic(np.random.default_rng(0), n, noise=0.002)
    fit = stats.fit_scaling_law(n, y, se, n_boot=300)
    assert fit.E == pytest.approx(1.8, abs=0.03)
    assert fit.alpha == pytest.approx(0.3, abs=0.02)
    assert fit.A == pytest.approx(40.0, rel=0.25)
    for name, truth in (("E", 1.8), ("A", 40.0), ("alpha", 0.3)):
        lo, hi = fit.intervals[name]
        assert lo <= truth <= hi, name
    assert fit.predict(1e6) == pytest.approx(1.8 + 40 * 1e6**-0.3, abs=0.01)
    lo, hi = fit.predict_interval(1e6)
    assert lo < fit.predict(1e6) < hi
    # exact points are fitted exactly, without weights
    exact = 1.5 + 10 * n**-0.5
    f = stats.fit_scaling_law(n, exact, n_boot=20)
    assert (f.E, f.A, f.alpha) == pytest.approx((1.5, 10.0, 0.5), rel=1e-4)


def test_scaling_fit_intervals_cover_the_truth_across_replicates():
    n = np.array([3e4, 1e5, 3e5, 1e6, 3e6])  # 5 sizes, as a CPU scaling sweep has
    rng = np.random.default_rng(11)
    reps = 100
    hits = {"E": 0, "A": 0, "alpha": 0}
    for r in range(reps):
        y, se = _synthetic(rng, n, noise=0.01)
        fit = stats.fit_scaling_law(n, y, se, n_boot=300, seed=r)
        for name, truth in (("E", 1.8), ("A", 40.0), ("alpha", 0.3)):
            lo, hi = fit.intervals[name]
            hits[name] += lo <= truth <= hi
    # nominal 95%; measured 92-94% over 200 replicates (parametric bootstrap, 5 points, 3 parameters)
    assert all(0.85 <= h / reps <= 0.99 for h in hits.values()), hits


def test_scaling_fit_refuses_too_few_sizes():
    with pytest.raises(ValueError, match=">= 3 distinct"):
        stats.fit_scaling_law([1e4, 1e4, 1e5], [2.0, 2.0, 1.9])


def test_t_distribution_and_paired_t_test_match_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 4, 9, 30):
        for t in (-3.0, -0.5, 0.0, 0.7, 2.5, 12.0):
            assert stats.t_sf(t, df) == pytest.approx(scipy_stats.t.sf(t, df), rel=1e-9, abs=1e-14)
        assert stats.t_quantile(0.975, df) == pytest.approx(scipy_stats.t.ppf(0.975, df), rel=1e-6)
    rng = np.random.default_rng(5)
    a, b = rng.normal(0, 1, 3), rng.normal(0.5, 1, 3)
    r = stats.paired_t_test(a, b)
    ref = scipy_stats.ttest_rel(a, b)
    assert r.t == pytest.approx(ref.statistic) and r.df == 2
    assert min(r.p_less, r.p_greater) * 2 == pytest.approx(ref.pvalue)
    assert r.p_less == pytest.approx(scipy_stats.ttest_rel(a, b, alternative="less").pvalue)
    lo, hi = ref.confidence_interval(0.95)
    assert (r.mean_difference.low, r.mean_difference.high) == pytest.approx((lo, hi))
    assert stats.paired_t_test([1.0], [2.0]) is None
    same = stats.paired_t_test([1.0, 2.0, 3.0], [2.0, 3.0, 4.0])  # a constant difference of -1
    assert same.p_less == 0.0 and same.p_greater == 1.0


def test_difference_in_differences_finds_the_model_that_degrades_less():
    rng = np.random.default_rng(4)
    ns, nl = 200, 150
    ds, dl = rng.integers(10, 40, ns).astype(float), rng.integers(100, 300, nl).astype(float)
    base_s, base_l = rng.normal(2.0, 0.3, ns), rng.normal(2.0, 0.3, nl)
    # model a: +0.05 nats on long sequences; model b: +0.30 nats; same short-sequence loss
    short = (base_s * ds, ds, base_s * ds, ds)
    long = ((base_l + 0.05) * dl, dl, (base_l + 0.30) * dl, dl)
    r = stats.diff_in_diff_bootstrap(short, long, n_boot=1000)
    assert r.difference.estimate == pytest.approx(-0.25)
    assert r.difference.high < 0 and r.p_less <= 1e-3 and r.p_greater == 1.0
    same = stats.diff_in_diff_bootstrap(short, (base_l * dl, dl, base_l * dl, dl), n_boot=300)
    assert same.difference.estimate == 0 and same.p_value == 1.0
