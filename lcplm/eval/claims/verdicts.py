"""The tests behind each claim and the one verdict rule.

Every test yields a one-sided p-value in the claimed direction (``p_claimed``) and one in the
opposite direction (``p_opposite``), after Holm's adjustment where a claim needs several tests:

- **reproduced**: every ``p_claimed < alpha`` (the only way to this verdict);
- **contradicted**: some ``p_opposite < alpha``;
- **not reproduced at this scale**: neither;
- **not tested**: a run, an evaluation or a comparison the test needs is missing (the reason says
  which), so no test ran.

Test kinds (``test.kind`` of a claim file):

- ``matched_sizes``: at each size index, the treatment arm's held-out loss minus the control
  arm's, on the same sequences and masks (paired bootstrap over sequences, one-sided), Holm across
  sizes; plus ``L(N) = E + A N^-alpha`` per group with bootstrap intervals (reported, not decided on).
- ``length_extrapolation``: difference-in-differences of the loss from short to long sequences
  between the two arms (bootstrap over both sets of sequences).
- ``paired_seeds``: per-seed held-out losses of the two arms, paired by seed (the same seed gives
  both the same data order and the same evaluation masks), paired t-test.
- ``downstream_sign``: for each listed downstream metric (higher is better) and pretraining seed,
  treatment minus control (averaged over the downstream seeds); exact sign test over all of them.

Losses are eval-lm's: token-weighted cross entropy at ``<mask>`` targets of sequences whose length
in tokens is within ``test.lengths``; when an arm has several seeds, matched_sizes and
length_extrapolation pool them (per-sequence sums added), so their intervals reflect evaluation
sampling, not seed variance (paired_seeds is the test of seed variance).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from lcplm.eval import stats

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced at this scale"
CONTRADICTED = "contradicted"
NOT_TESTED = "not tested"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, CONTRADICTED, NOT_TESTED)


@dataclass
class RunData:
    """What the tests read about one trained run."""

    arm: str
    group: str
    seed: int
    size: Optional[int]
    label: str  # the run's name in evaluations: "<arm>-s<seed>"
    n_parameters: Optional[int] = None
    global_step: Optional[int] = None
    max_steps: Optional[int] = None
    train_time_s: Optional[float] = None
    lm: Optional[dict] = None  # the cached eval-lm result of this run (one model), or None


@dataclass
class Outcome:
    verdict: str
    reason: str  # one sentence: why this verdict
    test: str = ""  # the test in words
    alpha: float = 0.05
    p_claimed: list[float] = field(default_factory=list)  # after adjustment
    p_opposite: list[float] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)  # everything the report prints and plots

    def as_dict(self) -> dict:
        return {"verdict": self.verdict, "reason": self.reason, "test": self.test, "alpha": self.alpha,
                "p_claimed": self.p_claimed, "p_opposite": self.p_opposite, "numbers": self.numbers}


def decide(p_claimed: list[float], p_opposite: list[float], alpha: float) -> tuple[str, str]:
    """The verdict rule of the module docstring, from adjusted one-sided p-values."""
    if not p_claimed:
        return NOT_TESTED, "no test ran"
    if all(p < alpha for p in p_claimed):
        return REPRODUCED, f"every test rejects in the claimed direction at alpha = {alpha}"
    if any(p < alpha for p in p_opposite):
        return CONTRADICTED, f"a test rejects in the opposite direction at alpha = {alpha}"
    worst = max(p_claimed)
    return NOT_REPRODUCED, f"no significant difference in the claimed direction (largest adjusted p = {worst:.3g} >= {alpha})"


def not_tested(reason: str, test: str = "", alpha: float = 0.05, **numbers: Any) -> Outcome:
    return Outcome(NOT_TESTED, reason, test, alpha, numbers=numbers)


# ------------------------------------------------------------------------- LM data helpers


def _mask_digest(run: RunData) -> str:
    return run.lm["models"][0]["mask_digest"]


def lm_sums(run: RunData, lengths: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sequence ids, nll sums, target counts) of the run's evaluated sequences within ``lengths``."""
    m = run.lm["models"][0]
    tl = np.asarray(run.lm["sequences"]["token_lengths"])
    nll = m["per_sequence"]["mask_nll"]
    keep = (tl >= lengths[0]) & (tl <= lengths[1]) & np.array([v is not None for v in nll])
    ids = np.asarray(run.lm["sequences"]["ids"], dtype=object)[keep]
    num = np.asarray([v for v, k in zip(nll, keep) if k], np.float64)
    den = np.asarray(m["per_sequence"]["mask_n"], np.float64)[keep]
    return ids, num, den


def pooled(runs: list[RunData], lengths: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-sequence sums added over the runs (seeds) of one arm; the runs must share sequences."""
    ids, num, den = lm_sums(runs[0], lengths)
    for r in runs[1:]:
        i2, n2, d2 = lm_sums(r, lengths)
        if list(i2) != list(ids):
            raise ValueError(f"{r.label} was evaluated on other sequences than {runs[0].label}")
        num, den = num + n2, den + d2
    return ids, num, den


def _missing_lm(runs: list[RunData]) -> list[str]:
    return [r.label for r in runs if r.lm is None]


def _incomplete(runs: list[RunData]) -> list[str]:
    return [f"{r.label} (step {r.global_step} of {r.max_steps})" for r in runs
            if r.max_steps is not None and r.global_step is not None and r.global_step < r.max_steps]


def _precheck(runs: list[RunData], test: str, alpha: float) -> Optional[Outcome]:
    if not runs:
        return not_tested("no runs", test, alpha)
    missing = _missing_lm(runs)
    if missing:
        return not_tested(f"no eval-lm result for {', '.join(missing)}", test, alpha)
    short = _incomplete(runs)
    if short:
        return not_tested(f"runs stopped before their token budget: {', '.join(short)}", test, alpha)
    if len({_mask_digest(r) for r in runs}) != 1:
        return not_tested("the runs were evaluated with different masks or sequences (eval settings changed)", test, alpha)
    return None


def _by_arm(runs: list[RunData]) -> dict[str, list[RunData]]:
    out: dict[str, list[RunData]] = {}
    for r in sorted(runs, key=lambda r: (r.arm, r.seed)):
        out.setdefault(r.arm, []).append(r)
    return out


def _loss(num: np.ndarray, den: np.ndarray, n_boot: int, seed: int) -> Optional[dict]:
    iv = stats.ratio_bootstrap(num, den, n_boot, seed)
    return iv.as_dict() if iv else None


# ------------------------------------------------------------------------------- the tests


def matched_sizes(runs: list[RunData], treatment: str, control: str, lengths: tuple[int, int], alpha: float,
                  n_boot: int) -> Outcome:
    test = (f"per matched size: paired bootstrap ({n_boot} resamples over held-out sequences of {lengths[0]}-{lengths[1]} "
            f"tokens, same masks) of loss({treatment}) - loss({control}), one-sided, Holm across sizes, alpha {alpha}")
    pre = _precheck(runs, test, alpha)
    if pre:
        return pre
    arms = _by_arm(runs)
    size_of = {a: rs[0].size for a, rs in arms.items()}
    group_of = {a: rs[0].group for a, rs in arms.items()}
    t_sizes = {size_of[a]: a for a in arms if group_of[a] == treatment}
    c_sizes = {size_of[a]: a for a in arms if group_of[a] == control}
    common = sorted(set(t_sizes) & set(c_sizes))
    if not common:
        return not_tested("no size has runs of both groups", test, alpha)
    rows, p_claim, p_opp = [], [], []
    points: dict[str, list[dict]] = {treatment: [], control: []}
    for k, a in sorted((size_of[a], a) for a in arms):
        ids, num, den = pooled(arms[a], lengths)
        loss = _loss(num, den, n_boot, 17 + k)
        points[group_of[a]].append({"arm": a, "size": k, "n_parameters": arms[a][0].n_parameters, "loss": loss})
    for k in common:
        ta, ca = t_sizes[k], c_sizes[k]
        _, nt, dt = pooled(arms[ta], lengths)
        _, nc, dc = pooled(arms[ca], lengths)
        r = stats.paired_ratio_bootstrap(nt, dt, nc, dc, n_boot, seed=k)
        if r is None:
            return not_tested(f"size {k}: no <mask> targets within {lengths[0]}-{lengths[1]} tokens", test, alpha)
        p_claim.append(r.p_less)
        p_opp.append(r.p_greater)
        rows.append({"size": k, "treatment": ta, "control": ca, "n_parameters": [arms[ta][0].n_parameters, arms[ca][0].n_parameters],
                     "difference": r.difference.as_dict(), "p_less": r.p_less, "p_greater": r.p_greater})
    adj_claim, adj_opp = stats.holm(p_claim), stats.holm(p_opp)
    for row, pc, po in zip(rows, adj_claim, adj_opp):
        row["p_claimed_holm"], row["p_opposite_holm"] = pc, po
    fitted: dict[str, stats.ScalingFit] = {}
    for g, pts in points.items():
        ok = [p for p in pts if p["loss"] and p["n_parameters"]]
        if len({p["n_parameters"] for p in ok}) >= 3:
            se = [(p["loss"]["high"] - p["loss"]["low"]) / (2 * 1.96) for p in ok]
            fitted[g] = stats.fit_scaling_law([p["n_parameters"] for p in ok], [p["loss"]["estimate"] for p in ok], se, n_boot=1000)
    fits: dict[str, Any] = {g: f.as_dict() for g, f in fitted.items()}
    if len(fitted) == 2:  # the two fits' bootstrap draws are independent: pair them index-wise
        d = fitted[treatment].samples[:, 2] - fitted[control].samples[:, 2]
        fits["alpha_difference"] = {"estimate": fitted[treatment].alpha - fitted[control].alpha,
                                    "low": float(np.quantile(d, 0.025)), "high": float(np.quantile(d, 0.975))}
    verdict, reason = decide(adj_claim, adj_opp, alpha)
    return Outcome(verdict, reason, test, alpha, adj_claim, adj_opp,
                   {"lengths": list(lengths), "sizes": rows, "points": points, "fits": fits})


def length_extrapolation(runs: list[RunData], treatment: str, control: str, short: tuple[int, int],
                         long: tuple[int, int], alpha: float, n_boot: int) -> Outcome:
    test = (f"difference-in-differences: [loss({treatment}) on {long[0]}-{long[1]} tokens - on {short[0]}-{short[1]}] - "
            f"[the same for {control}], bootstrap over sequences ({n_boot} resamples, same masks), one-sided, alpha {alpha}")
    pre = _precheck(runs, test, alpha)
    if pre:
        return pre
    arms = _by_arm(runs)
    t_arms = [a for a, rs in arms.items() if rs[0].group == treatment]
    c_arms = [a for a, rs in arms.items() if rs[0].group == control]
    if len(t_arms) != 1 or len(c_arms) != 1:
        return not_tested(f"needs one {treatment!r} and one {control!r} arm, found {t_arms} and {c_arms}", test, alpha)
    ta, ca = arms[t_arms[0]], arms[c_arms[0]]
    seeds = sorted({r.seed for r in ta} & {r.seed for r in ca})
    ta, ca = [r for r in ta if r.seed in seeds], [r for r in ca if r.seed in seeds]
    trained = [r.lm["models"][0]["training_length"] for r in ta + ca]
    if any(t is not None and long[0] <= t for t in trained):
        return not_tested(f"the long sequences ({long[0]}+ tokens) are not longer than a training length ({max(t for t in trained if t)})", test, alpha)
    s_t, s_c, l_t, l_c = pooled(ta, short), pooled(ca, short), pooled(ta, long), pooled(ca, long)
    r = stats.diff_in_diff_bootstrap((s_t[1], s_t[2], s_c[1], s_c[2]), (l_t[1], l_t[2], l_c[1], l_c[2]), n_boot)
    if r is None:
        return not_tested(f"no short or no long sequences with <mask> targets ({short}, {long})", test, alpha)
    bins: dict[str, list[dict]] = {}
    edges = ta[0].lm["settings"]["bins"]
    for name, group_runs in ((t_arms[0], ta), (c_arms[0], ca)):
        rows = []
        for b, hi in enumerate(edges):
            lo = edges[b - 1] + 1 if b else 1
            _, num, den = pooled(group_runs, (lo, hi))
            rows.append({"bin": f"{lo}-{hi}", "high": hi, "loss": _loss(num, den, n_boot, b)})
        bins[name] = rows
    verdict, reason = decide([r.p_less], [r.p_greater], alpha)
    return Outcome(verdict, reason, test, alpha, [r.p_less], [r.p_greater], {
        "treatment": t_arms[0], "control": c_arms[0], "seeds": seeds, "training_lengths": trained,
        "short": list(short), "long": list(long),
        "growth": {t_arms[0]: _growth(s_t, l_t, n_boot), c_arms[0]: _growth(s_c, l_c, n_boot)},
        "difference_in_differences": r.difference.as_dict(), "bins": bins})


def _growth(short, long, n_boot: int) -> dict:
    ls, ll = stats.ratio_bootstrap(short[1], short[2], n_boot), stats.ratio_bootstrap(long[1], long[2], n_boot)
    return {"short": ls.as_dict() if ls else None, "long": ll.as_dict() if ll else None,
            "growth": (ll.estimate - ls.estimate) if ls and ll else None}


def paired_seeds(runs: list[RunData], treatment: str, control: str, lengths: tuple[int, int], alpha: float,
                 n_boot: int) -> Outcome:
    test = (f"paired t-test over seeds (the same seed: the same data order and masks) of the held-out loss on "
            f"{lengths[0]}-{lengths[1]}-token sequences, loss({treatment}) - loss({control}), one-sided, alpha {alpha}")
    pre = _precheck(runs, test, alpha)
    if pre:
        return pre
    arms = _by_arm(runs)
    t_arms = [a for a, rs in arms.items() if rs[0].group == treatment]
    c_arms = [a for a, rs in arms.items() if rs[0].group == control]
    if len(t_arms) != 1 or len(c_arms) != 1:
        return not_tested(f"needs one {treatment!r} and one {control!r} arm, found {t_arms} and {c_arms}", test, alpha)
    t_by_seed = {r.seed: r for r in arms[t_arms[0]]}
    c_by_seed = {r.seed: r for r in arms[c_arms[0]]}
    seeds = sorted(set(t_by_seed) & set(c_by_seed))
    if len(seeds) < 2:
        return not_tested(f"a paired t-test needs >= 2 seeds run by both arms, have {seeds}", test, alpha)
    per_seed, lt, lc = [], [], []
    for s in seeds:
        _, nt, dt = lm_sums(t_by_seed[s], lengths)
        _, nc, dc = lm_sums(c_by_seed[s], lengths)
        if dt.sum() <= 0 or dc.sum() <= 0:
            return not_tested(f"seed {s}: no <mask> targets within {lengths[0]}-{lengths[1]} tokens", test, alpha)
        lt.append(float(nt.sum() / dt.sum()))
        lc.append(float(nc.sum() / dc.sum()))
        per_seed.append({"seed": s, "treatment": _loss(nt, dt, n_boot, s), "control": _loss(nc, dc, n_boot, s),
                         "n_parameters": [t_by_seed[s].n_parameters, c_by_seed[s].n_parameters]})
    t = stats.paired_t_test(lt, lc)
    verdict, reason = decide([t.p_less], [t.p_greater], alpha)
    return Outcome(verdict, reason, test, alpha, [t.p_less], [t.p_greater], {
        "treatment": t_arms[0], "control": c_arms[0], "lengths": list(lengths), "per_seed": per_seed,
        "t_test": t.as_dict()})


def downstream_sign(runs: list[RunData], rows: Optional[list[dict]], treatment: str, control: str,
                    metrics: list[dict], alpha: float) -> Outcome:
    keys = ", ".join(f"{m['task']}/{m['split']}/{m['head']}/{m['metric']}" for m in metrics)
    test = (f"exact sign test over (metric x pretraining seed) differences {treatment} - {control} (each averaged over the "
            f"downstream seeds; higher is better), one-sided, alpha {alpha}; metrics: {keys}")
    if rows is None:
        return not_tested("no eval-downstream result", test, alpha)
    short = _incomplete(runs)
    if short:
        return not_tested(f"runs stopped before their token budget: {', '.join(short)}", test, alpha)
    arms = _by_arm(runs)
    t_arms = [a for a, rs in arms.items() if rs[0].group == treatment]
    c_arms = [a for a, rs in arms.items() if rs[0].group == control]
    if len(t_arms) != 1 or len(c_arms) != 1:
        return not_tested(f"needs one {treatment!r} and one {control!r} arm, found {t_arms} and {c_arms}", test, alpha)
    t_runs = {r.seed: r.label for r in arms[t_arms[0]]}
    c_runs = {r.seed: r.label for r in arms[c_arms[0]]}
    seeds = sorted(set(t_runs) & set(c_runs))

    def mean_value(label: str, m: dict) -> Optional[float]:
        vals = [r["value"] for r in rows if r["model"] == label and all(r[k] == m[k] for k in ("task", "split", "head", "metric"))]
        vals = [v for v in vals if v == v]  # NaN: the metric was undefined on that split
        return float(np.mean(vals)) if vals else None

    diffs, table, absent = [], [], []
    for m in metrics:
        entry = {**m, "treatment": [], "control": [], "differences": []}
        for s in seeds:
            vt, vc = mean_value(t_runs[s], m), mean_value(c_runs[s], m)
            if vt is None or vc is None:
                continue
            entry["treatment"].append(vt)
            entry["control"].append(vc)
            entry["differences"].append(vt - vc)
        if entry["differences"]:
            diffs += entry["differences"]
            table.append(entry)
        else:
            absent.append(f"{m['task']}/{m['split']}/{m['head']}/{m['metric']}")
    if not diffs:
        return not_tested(f"none of the metrics was computed ({', '.join(absent)})", test, alpha)
    p_claim, p_opp = stats.sign_test(diffs, "greater"), stats.sign_test(diffs, "less")
    verdict, reason = decide([p_claim], [p_opp], alpha)
    return Outcome(verdict, reason, test, alpha, [p_claim], [p_opp], {
        "treatment": t_arms[0], "control": c_arms[0], "seeds": seeds, "metrics": table, "absent_metrics": absent,
        "n_positive": int(sum(d > 0 for d in diffs)), "n": len(diffs)})


def training_length(runs: list[RunData]) -> Optional[int]:
    """The training length (tokens) shared by the runs' checkpoints; None when unknown or different."""
    lengths = {r.lm["models"][0]["training_length"] for r in runs if r.lm is not None}
    return lengths.pop() if len(lengths) == 1 and None not in lengths else None


def evaluate_claim(kind: str, runs: list[RunData], test_cfg: Any, downstream_rows: Optional[list[dict]] = None) -> Outcome:
    """Dispatch on ``test.kind`` (a :class:`~lcplm.eval.claims.spec.TestConfig`). Length ranges
    default to the runs' training length: ``lengths`` = [1, T]; long = (a T, b T] for
    ``long_multiples`` [a, b]."""
    t = test_cfg
    if kind != "downstream_sign":
        T = training_length(runs)
        if t.lengths is None or kind == "length_extrapolation":
            if T is None:
                pre = _precheck(runs, kind, t.alpha)
                return pre or not_tested("the runs do not share one known training length", kind, t.alpha)
        lengths = (t.lengths[0], t.lengths[1]) if t.lengths is not None else (1, T)
        long = (int(t.long_multiples[0] * T) + 1, int(t.long_multiples[1] * T)) if T else (0, 0)
    if kind == "matched_sizes":
        return matched_sizes(runs, t.treatment, t.control, lengths, t.alpha, t.bootstrap)
    if kind == "length_extrapolation":
        return length_extrapolation(runs, t.treatment, t.control, lengths, long, t.alpha, t.bootstrap)
    if kind == "paired_seeds":
        return paired_seeds(runs, t.treatment, t.control, lengths, t.alpha, t.bootstrap)
    if kind == "downstream_sign":
        metrics = [{"task": m.task, "split": m.split, "head": m.head, "metric": m.metric} for m in t.downstream_metrics]
        return downstream_sign(runs, downstream_rows, t.treatment, t.control, metrics, t.alpha)
    raise ValueError(f"unknown test kind {kind!r}")
