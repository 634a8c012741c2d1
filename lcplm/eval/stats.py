"""Statistics for evaluations and claims: bootstrap intervals, paired tests, scaling-law fits.

Plain numpy (no scipy), every function seeded, so a report is reproducible bit for bit.

- :func:`ratio_bootstrap`: a token-weighted mean loss ``sum(nll) / sum(n)`` over sequences with a
  percentile interval from resampling sequences (the unit that is sampled, not tokens: tokens of
  one protein are correlated).
- :func:`paired_ratio_bootstrap`: the difference of two such losses on the same sequences (each
  resample takes the same sequences for both), with a two-sided bootstrap p-value.
- :func:`sign_test` (exact binomial) and :func:`wilcoxon_signed_rank` (exact null distribution up
  to 30 pairs, normal approximation with tie correction beyond) for paired numbers across seeds.
- :func:`paired_t_test`: Student's paired t-test (e.g. two architectures trained with the same
  seeds, hence the same data order and masks), with the t distribution from the regularized
  incomplete beta function.
- :func:`diff_in_diff_bootstrap`: how much more one model's loss grows than another's from one set
  of sequences (short) to another (long), resampling each set's sequences, paired across models.
- :func:`holm`: Holm's step-down adjustment when one claim needs several tests at once.
- :func:`fit_scaling_law`: ``L(N) = E + A * N**-alpha`` by profiling alpha (for a fixed alpha, E
  and A are a weighted linear least-squares fit, so only alpha is searched: a grid, then golden
  section), with intervals from a parametric bootstrap of the points (each point redrawn from a
  normal with its standard error; where no errors are given, the residuals are resampled).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

DEFAULT_BOOTSTRAP = 2000


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    n: int  # sampling units behind the estimate (sequences, seeds or points)

    def as_dict(self) -> dict:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "n": self.n}


def _weights(rng: np.random.Generator, n: int, reps: int) -> np.ndarray:
    """(reps, n) resampling counts: row r says how often each unit is drawn in resample r."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=reps).astype(np.float64)


def _chunks(total: int, n: int) -> list[int]:
    size = max(1, min(total, (1 << 22) // max(n, 1)))  # ~32 MB of float64 per chunk
    return [min(size, total - s) for s in range(0, total, size)]


def ratio_bootstrap(num: Sequence[float], den: Sequence[float], n_boot: int = DEFAULT_BOOTSTRAP,
                    seed: int = 0, level: float = 0.95) -> Optional[Interval]:
    """``sum(num) / sum(den)`` with a percentile interval over resampled units; None when
    ``sum(den) == 0`` (nothing to estimate: an empty bin, not a NaN)."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    if len(num) != len(den):
        raise ValueError(f"{len(num)} numerators for {len(den)} denominators")
    if len(num) == 0 or den.sum() <= 0:
        return None
    est = float(num.sum() / den.sum())
    rng = np.random.default_rng(seed)
    stats = []
    for reps in _chunks(n_boot, len(num)):
        w = _weights(rng, len(num), reps)
        d = w @ den
        with np.errstate(invalid="ignore", divide="ignore"):
            stats.append(np.where(d > 0, (w @ num) / d, np.nan))
    s = np.concatenate(stats)
    s = s[np.isfinite(s)]
    lo, hi = np.quantile(s, [(1 - level) / 2, (1 + level) / 2])
    return Interval(est, float(lo), float(hi), len(num))


@dataclass(frozen=True)
class PairedResult:
    difference: Interval  # a - b
    p_value: float  # two-sided
    test: str
    p_less: float = 1.0  # one-sided, H1: a - b < 0 (share of resamples >= 0, at least 1 / resamples)
    p_greater: float = 1.0  # one-sided, H1: a - b > 0

    def as_dict(self) -> dict:
        return {"difference": self.difference.as_dict(), "p_value": self.p_value, "p_less": self.p_less,
                "p_greater": self.p_greater, "test": self.test}


def _bootstrap_p(d: np.ndarray) -> tuple[float, float, float]:
    """(two-sided, less, greater) p-values from bootstrap differences."""
    floor = 1.0 / len(d)
    p_less, p_greater = max(float((d >= 0).mean()), floor), max(float((d <= 0).mean()), floor)
    return min(1.0, 2 * min(p_less, p_greater)), p_less, p_greater


def paired_ratio_bootstrap(num_a: Sequence[float], den_a: Sequence[float], num_b: Sequence[float],
                           den_b: Sequence[float], n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0,
                           level: float = 0.95) -> Optional[PairedResult]:
    """Loss a minus loss b over the same units; p = two-sided bootstrap p-value
    (``2 * min(P*(diff <= 0), P*(diff >= 0))``, at least ``1 / n_boot``)."""
    arrays = [np.asarray(x, np.float64) for x in (num_a, den_a, num_b, den_b)]
    n = len(arrays[0])
    if any(len(x) != n for x in arrays):
        raise ValueError("paired arrays differ in length")
    na, da, nb, db = arrays
    if n == 0 or da.sum() <= 0 or db.sum() <= 0:
        return None
    est = float(na.sum() / da.sum() - nb.sum() / db.sum())
    rng = np.random.default_rng(seed)
    diffs = []
    for reps in _chunks(n_boot, n):
        w = _weights(rng, n, reps)
        with np.errstate(invalid="ignore", divide="ignore"):
            diffs.append((w @ na) / (w @ da) - (w @ nb) / (w @ db))
    d = np.concatenate(diffs)
    d = d[np.isfinite(d)]
    lo, hi = np.quantile(d, [(1 - level) / 2, (1 + level) / 2])
    p, p_less, p_greater = _bootstrap_p(d)
    return PairedResult(Interval(est, float(lo), float(hi), n), p, f"paired bootstrap over {n} units, {n_boot} resamples",
                        p_less, p_greater)


def sign_test(diffs: Sequence[float], alternative: str = "two-sided") -> float:
    """Exact sign test p-value on paired differences (zeros dropped). ``alternative``: two-sided,
    less (differences tend to be < 0) or greater."""
    d = np.asarray(diffs, np.float64)
    d = d[d != 0]
    n, k = len(d), int((d > 0).sum())
    if n == 0:
        return 1.0
    pmf = np.array([math.comb(n, i) for i in range(n + 1)], np.float64) / 2.0**n
    if alternative == "greater":
        return float(pmf[k:].sum())
    if alternative == "less":
        return float(pmf[: k + 1].sum())
    if alternative != "two-sided":
        raise ValueError(f"alternative must be two-sided, less or greater, got {alternative!r}")
    return float(min(1.0, pmf[pmf <= pmf[k] * (1 + 1e-12)].sum()))


def _rank(a: np.ndarray) -> np.ndarray:
    """Average ranks (1-based) with ties sharing their mean rank."""
    order = np.argsort(a, kind="stable")
    ranks = np.empty(len(a), np.float64)
    sa = a[order]
    i = 0
    while i < len(a):
        j = i
        while j + 1 < len(a) and sa[j + 1] == sa[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def wilcoxon_signed_rank(diffs: Sequence[float], alternative: str = "two-sided") -> float:
    """Wilcoxon signed-rank p-value on paired differences (zeros dropped; Pratt's alternative is
    not used). Exact for up to 30 non-zero differences without ties, normal approximation with
    tie and continuity correction otherwise."""
    d = np.asarray(diffs, np.float64)
    d = d[d != 0]
    n = len(d)
    if n == 0:
        return 1.0
    ranks = _rank(np.abs(d))
    w_plus = float(ranks[d > 0].sum())
    ties = len(np.unique(np.abs(d))) != n
    if n <= 30 and not ties:
        # exact null distribution of W+ by dynamic programming over the ranks 1..n
        total = n * (n + 1) // 2
        counts = np.zeros(total + 1, np.float64)
        counts[0] = 1
        for r in range(1, n + 1):
            counts[r:] = counts[r:] + counts[:-r].copy()
        pmf = counts / counts.sum()
        w = int(round(w_plus))
        p_le, p_ge = float(pmf[: w + 1].sum()), float(pmf[w:].sum())
    else:
        mean = n * (n + 1) / 4
        _, tie_counts = np.unique(np.abs(d), return_counts=True)
        var = n * (n + 1) * (2 * n + 1) / 24 - float((tie_counts**3 - tie_counts).sum()) / 48
        sd = math.sqrt(var)
        p_le = 0.5 * math.erfc(-((w_plus - mean + 0.5) / sd) / math.sqrt(2))
        p_ge = 0.5 * math.erfc(((w_plus - mean - 0.5) / sd) / math.sqrt(2))
    if alternative == "greater":
        return min(1.0, p_ge)
    if alternative == "less":
        return min(1.0, p_le)
    if alternative != "two-sided":
        raise ValueError(f"alternative must be two-sided, less or greater, got {alternative!r}")
    return min(1.0, 2 * min(p_le, p_ge))


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes 6.4)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(ln) * _betacf(a, b, x) / a
    return 1.0 - math.exp(ln) * _betacf(b, a, 1.0 - x) / b


def t_sf(t: float, df: float) -> float:
    """P(T >= t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1.0 - tail


def t_quantile(q: float, df: float) -> float:
    """The q-quantile of Student's t (bisection on :func:`t_sf`)."""
    lo, hi = -1e3, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        if 1.0 - t_sf(mid, df) < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@dataclass(frozen=True)
class TTestResult:
    mean_difference: Interval  # mean of a - b with a t-based interval
    t: float
    df: int
    p_less: float  # one-sided: mean(a - b) < 0
    p_greater: float  # one-sided: mean(a - b) > 0

    def as_dict(self) -> dict:
        return {"mean_difference": self.mean_difference.as_dict(), "t": self.t, "df": self.df,
                "p_less": self.p_less, "p_greater": self.p_greater}


def paired_t_test(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Optional[TTestResult]:
    """Paired t-test of ``a - b`` (at least 2 pairs); None with fewer. Identical pairs give p = 0.5."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    n = len(d)
    if n < 2:
        return None
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    df = n - 1
    if se == 0.0:  # every pair differs by the same amount
        t = 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
        p_greater = 0.5 if mean == 0.0 else float(mean < 0)
        p_less = 0.5 if mean == 0.0 else float(mean > 0)
    else:
        t = mean / se
        p_greater, p_less = t_sf(t, df), t_sf(-t, df)
    half = t_quantile((1 + level) / 2, df) * se
    return TTestResult(Interval(mean, mean - half, mean + half, n), t, df, p_less, p_greater)


def diff_in_diff_bootstrap(short: tuple, long: tuple, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0,
                           level: float = 0.95) -> Optional[PairedResult]:
    """``(L_a(long) - L_a(short)) - (L_b(long) - L_b(short))`` with a paired bootstrap.

    ``short`` and ``long`` are each ``(num_a, den_a, num_b, den_b)`` per-sequence sums over one
    set of sequences (both models on the same sequences). Each resample draws the short and the
    long sequences independently (two strata) and uses the same draw for both models."""
    sa = [np.asarray(x, np.float64) for x in short]
    la = [np.asarray(x, np.float64) for x in long]
    if any(len(x) != len(sa[0]) for x in sa) or any(len(x) != len(la[0]) for x in la):
        raise ValueError("paired arrays differ in length")
    if len(sa[0]) == 0 or len(la[0]) == 0 or min(x.sum() for x in (sa[1], sa[3], la[1], la[3])) <= 0:
        return None

    def did(ws: np.ndarray, wl: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            ga = (wl @ la[0]) / (wl @ la[1]) - (ws @ sa[0]) / (ws @ sa[1])
            gb = (wl @ la[2]) / (wl @ la[3]) - (ws @ sa[2]) / (ws @ sa[3])
        return ga - gb

    est = float(did(np.ones((1, len(sa[0]))), np.ones((1, len(la[0]))))[0])
    rng = np.random.default_rng(seed)
    out = []
    for reps in _chunks(n_boot, max(len(sa[0]), len(la[0]))):
        out.append(did(_weights(rng, len(sa[0]), reps), _weights(rng, len(la[0]), reps)))
    d = np.concatenate(out)
    d = d[np.isfinite(d)]
    lo, hi = np.quantile(d, [(1 - level) / 2, (1 + level) / 2])
    p, p_less, p_greater = _bootstrap_p(d)
    n = len(sa[0]) + len(la[0])
    return PairedResult(Interval(est, float(lo), float(hi), n), p,
                        f"difference-in-differences bootstrap over {len(sa[0])} short and {len(la[0])} long sequences, "
                        f"{n_boot} resamples", p_less, p_greater)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (compare each with alpha: family-wise error at most alpha)."""
    p = np.asarray(p_values, np.float64)
    order = np.argsort(p, kind="stable")
    adj = np.empty(len(p))
    running = 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - k) * p[i]))
        adj[i] = running
    return adj.tolist()


def mean_interval(values: Sequence[float], n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0, level: float = 0.95) -> Optional[Interval]:
    """Mean with a percentile bootstrap interval (e.g. a metric over seeds)."""
    v = np.asarray(values, np.float64)
    if len(v) == 0:
        return None
    return ratio_bootstrap(v, np.ones_like(v), n_boot, seed, level)


# --------------------------------------------------------------------------- scaling laws


@dataclass(frozen=True)
class ScalingFit:
    """``L(N) = E + A * N**-alpha`` and 95% (or ``level``) intervals of each parameter."""

    E: float
    A: float
    alpha: float
    intervals: dict  # name -> (low, high) for E, A, alpha
    n_points: int
    rss: float  # weighted residual sum of squares at the fit
    n_boot: int
    samples: np.ndarray = field(repr=False, compare=False, default=None)  # (n_boot, 3) bootstrap E, A, alpha

    def predict(self, n: np.ndarray | float) -> np.ndarray:
        return self.E + self.A * np.asarray(n, np.float64) ** -self.alpha

    def predict_interval(self, n: float, level: float = 0.95) -> tuple[float, float]:
        """Percentile interval of the fitted loss at size ``n`` over the bootstrap fits."""
        b = self.samples
        pred = b[:, 0] + b[:, 1] * float(n) ** -b[:, 2]
        lo, hi = np.quantile(pred, [(1 - level) / 2, (1 + level) / 2])
        return float(lo), float(hi)

    def as_dict(self) -> dict:
        return {"E": self.E, "A": self.A, "alpha": self.alpha, "intervals": {k: list(v) for k, v in self.intervals.items()},
                "n_points": self.n_points, "rss": self.rss, "n_boot": self.n_boot}


ALPHA_RANGE = (1e-3, 3.0)


def _profile(logn: np.ndarray, Y: np.ndarray, w: np.ndarray, alphas: np.ndarray, per_row: bool):
    """Weighted least squares of each row of ``Y`` (B, n) on x = N^-alpha: with ``per_row`` row b
    against ``alphas[b]`` (results (B,)), else every row against every alpha (results (B, G)).
    Returns E, A (clamped >= 0: loss falls with size) and the residual sum of squares."""
    sw = w.sum()
    yc = Y - ((Y * w).sum(-1, keepdims=True) / sw)  # (B, n) centred
    syy = (w * yc**2).sum(-1)  # (B,)
    if not per_row:
        x = np.exp(-alphas[:, None] * logn[None, :])  # (G, n)
        xm = (x * w).sum(-1) / sw
        xc = x - xm[:, None]
        sxx = (w * xc**2).sum(-1)  # (G,)
        sxy = (yc * w) @ xc.T  # (B, G)
        A = np.maximum(np.where(sxx > 0, sxy / np.where(sxx > 0, sxx, 1), 0.0), 0.0)
        ym = (Y * w).sum(-1) / sw
        E = ym[:, None] - A * xm[None, :]
        return E, A, syy[:, None] - 2 * A * sxy + A**2 * sxx[None, :]
    x = np.exp(-alphas[:, None] * logn[None, :])  # (B, n)
    xm = (x * w).sum(-1) / sw
    xc = x - xm[:, None]
    sxx = (w * xc**2).sum(-1)
    sxy = (w * xc * yc).sum(-1)
    A = np.maximum(np.where(sxx > 0, sxy / np.where(sxx > 0, sxx, 1), 0.0), 0.0)
    E = (Y * w).sum(-1) / sw - A * xm
    return E, A, syy - 2 * A * sxy + A**2 * sxx


def _fit_rows(logn: np.ndarray, Y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(B, 4): E, A, alpha, rss of the best fit of each row of Y: the best of a log-spaced grid
    of alphas, refined by golden-section search inside the bracket around it."""
    lo, hi = ALPHA_RANGE
    grid = np.geomspace(lo, hi, 160)
    _, _, rss = _profile(logn, Y, w, grid, per_row=False)  # (B, G)
    k = rss.argmin(-1)
    a, b = grid[np.maximum(k - 1, 0)], grid[np.minimum(k + 1, len(grid) - 1)]
    g = (math.sqrt(5) - 1) / 2
    for _ in range(40):
        c, d = b - g * (b - a), a + g * (b - a)
        left = _profile(logn, Y, w, c, per_row=True)[2] < _profile(logn, Y, w, d, per_row=True)[2]
        b = np.where(left, d, b)
        a = np.where(left, a, c)
    alpha = (a + b) / 2
    E, A, rss = _profile(logn, Y, w, alpha, per_row=True)
    return np.stack([E, A, alpha, rss], -1)


def fit_scaling_law(n_params: Sequence[float], loss: Sequence[float], se: Optional[Sequence[float]] = None,
                    n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> ScalingFit:
    """Fit ``E + A * N**-alpha`` (A >= 0, alpha in :data:`ALPHA_RANGE`) to (N, loss) points, weighted
    by ``1 / se**2`` when standard errors are given; needs at least 3 distinct N."""
    n = np.asarray(n_params, np.float64)
    y = np.asarray(loss, np.float64)
    if len(n) != len(y) or len(np.unique(n)) < 3 or (n <= 0).any() or not np.isfinite(y).all():
        raise ValueError("a scaling-law fit needs >= 3 distinct positive sizes and finite losses")
    s = None if se is None else np.maximum(np.asarray(se, np.float64), 1e-12)
    w = np.ones_like(y) if s is None else 1.0 / s**2
    logn = np.log(n)
    E, A, alpha, rss = (float(v) for v in _fit_rows(logn, y[None, :], w)[0])
    fitted = E + A * np.exp(-alpha * logn)
    rng = np.random.default_rng(seed)
    if s is not None:
        y_star = fitted + rng.normal(0.0, 1.0, (n_boot, len(y))) * s
    else:
        resid = y - fitted
        y_star = fitted + resid[rng.integers(0, len(y), (n_boot, len(y)))]
    b = _fit_rows(logn, y_star, w)[:, :3]
    q = [(1 - level) / 2, (1 + level) / 2]
    intervals = {name: tuple(float(v) for v in np.quantile(b[:, j], q)) for j, name in enumerate(("E", "A", "alpha"))}
    return ScalingFit(E, A, alpha, intervals, len(n), rss, n_boot, b)
