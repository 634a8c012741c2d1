"""``<out>/REPORT.md`` and ``<out>/figures/<claim>.png``: each claim's statement, our numbers with
intervals, the test, and the verdict (decided in :mod:`lcplm.eval.claims.verdicts`, never here)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

from lcplm.eval.claims import verdicts
from lcplm.files import atomic_write_text, atomic_write_with


def _iv(d: Optional[dict], digits: int = 3) -> str:
    if not d:
        return "n/a"
    return f"{d['estimate']:.{digits}f} [{d['low']:.{digits}f}, {d['high']:.{digits}f}]"


def _p(x: float) -> str:
    return f"{x:.2g}" if x >= 1e-3 else f"{x:.1e}"


def _params(n: Optional[int]) -> str:
    return "?" if not n else f"{n / 1e3:.0f}k" if n < 1e6 else f"{n / 1e6:.1f}M" if n < 1e9 else f"{n / 1e9:.2f}B"


def summary_line(kind: str, o: verdicts.Outcome) -> str:
    """Our result in one line, for the summary table."""
    n = o.numbers
    if o.verdict == verdicts.NOT_TESTED or not n:
        return o.reason
    if kind == "matched_sizes":
        diffs = ", ".join(f"{r['difference']['estimate']:+.3f}" for r in n["sizes"])
        return f"loss difference at {len(n['sizes'])} matched sizes (nats): {diffs}"
    if kind == "length_extrapolation":
        return f"extra loss growth, short to long: {_iv(n['difference_in_differences'])} nats"
    if kind == "paired_seeds":
        return f"mean loss difference over {len(n['per_seed'])} seeds: {_iv(n['t_test']['mean_difference'], 4)} nats"
    if kind == "downstream_sign":
        return f"{n['n_positive']} of {n['n']} metric x seed differences favour {n['treatment']}"
    return o.reason


def _runs_table(p, cp) -> list[str]:
    from lcplm.eval.claims.runner import run_data

    runs = {(r.arm, r.seed): r for r in run_data(p, cp)}
    lines = ["| arm | group | parameters | seed | steps x tokens/step | train time |", "|---|---|---:|---:|---|---:|"]
    for arm_name, ca in cp.arms.items():
        arm = p.arms[arm_name]
        for s in ca.seeds:
            _, cfg = arm.point(s)
            r = runs.get((arm_name, s))
            budget = f"{cfg.trainer.max_steps:,} x {getattr(cfg.data, 'max_tokens', '?'):,}"
            if r is None:
                lines.append(f"| {arm_name} | {ca.group} | | {s} | {budget} | not run |")
            else:
                done = f"{r.global_step:,}/" if r.global_step is not None and r.global_step != r.max_steps else ""
                lines.append(f"| {arm_name} | {ca.group} | {_params(r.n_parameters)} | {s} | {done}{budget} | "
                             f"{(r.train_time_s or 0) / 60:.1f} min |")
    return lines


def _numbers(kind: str, o: verdicts.Outcome, treatment: str, control: str) -> list[str]:
    n = o.numbers
    if not n:
        return []
    if kind == "matched_sizes":
        lines = [f"Held-out loss at `<mask>` (nats) on sequences of {n['lengths'][0]}-{n['lengths'][1]} tokens, 95% intervals:", "",
                 f"| size | {treatment} (params) | {control} (params) | {treatment} loss | {control} loss | difference | p (Holm) |",
                 "|---:|---|---|---:|---:|---:|---:|"]
        losses = {pt["arm"]: pt["loss"] for g in n["points"].values() for pt in g}
        for r in n["sizes"]:
            lines.append(f"| {r['size']} | {r['treatment']} ({_params(r['n_parameters'][0])}) | {r['control']} "
                         f"({_params(r['n_parameters'][1])}) | {_iv(losses.get(r['treatment']))} | {_iv(losses.get(r['control']))} | "
                         f"{_iv(r['difference'])} | {_p(r['p_claimed_holm'])} |")
        if n.get("fits"):
            lines += ["", "Scaling fits L(N) = E + A N^-alpha (N = parameters; bootstrap 95% intervals):", "",
                      "| group | E | A | alpha |", "|---|---|---|---|"]
            for g in (treatment, control):
                f = n["fits"].get(g)
                if f:
                    ci = f["intervals"]
                    lines.append(f"| {g} | {f['E']:.3f} [{ci['E'][0]:.3f}, {ci['E'][1]:.3f}] | {f['A']:.3g} [{ci['A'][0]:.3g}, "
                                 f"{ci['A'][1]:.3g}] | {f['alpha']:.3f} [{ci['alpha'][0]:.3f}, {ci['alpha'][1]:.3f}] |")
            if "alpha_difference" in n["fits"]:
                lines.append(f"\nalpha({treatment}) - alpha({control}) = {_iv(n['fits']['alpha_difference'])} (reported, not tested).")
        return lines
    if kind == "length_extrapolation":
        t, c = n["treatment"], n["control"]
        lines = [f"Loss at `<mask>` by length (nats; training length {n['training_lengths'][0]} tokens):", "",
                 f"| length (tokens) | {t} | {c} |", "|---|---:|---:|"]
        for bt, bc in zip(n["bins"][t], n["bins"][c]):
            lines.append(f"| {bt['bin']} | {_iv(bt['loss'])} | {_iv(bc['loss'])} |")
        g = n["growth"]
        lines += ["", f"Growth from {n['short'][0]}-{n['short'][1]} to {n['long'][0]}-{n['long'][1]} tokens: {t} "
                  f"{g[t]['growth']:+.3f}, {c} {g[c]['growth']:+.3f} nats; difference in differences "
                  f"{_iv(n['difference_in_differences'])}."]
        return lines
    if kind == "paired_seeds":
        t, c = n["treatment"], n["control"]
        lines = [f"Held-out loss at `<mask>` (nats), sequences of {n['lengths'][0]}-{n['lengths'][1]} tokens:", "",
                 f"| seed | {t} | {c} |", "|---:|---:|---:|"]
        for r in n["per_seed"]:
            lines.append(f"| {r['seed']} | {_iv(r['treatment'], 4)} | {_iv(r['control'], 4)} |")
        tt = n["t_test"]
        lines += ["", f"Mean difference {_iv(tt['mean_difference'], 4)} nats (t = {tt['t']:.2f}, df = {tt['df']})."]
        return lines
    if kind == "downstream_sign":
        t, c = n["treatment"], n["control"]
        lines = ["Per metric, values per pretraining seed (mean over downstream seeds):", "",
                 f"| task / split / head / metric | {t} | {c} | differences |", "|---|---|---|---|"]
        for m in n["metrics"]:
            fmt = lambda xs: ", ".join(f"{x:.3f}" for x in xs)  # noqa: E731
            lines.append(f"| {m['task']} / {m['split']} / {m['head']} / {m['metric']} | {fmt(m['treatment'])} | "
                         f"{fmt(m['control'])} | {', '.join(f'{d:+.3f}' for d in m['differences'])} |")
        if n["absent_metrics"]:
            lines.append(f"\nNot computed (data absent): {', '.join(n['absent_metrics'])}.")
        return lines
    return []


def _figure(kind: str, o: verdicts.Outcome, path: Path, title: str) -> Optional[Path]:
    n = o.numbers
    if not n:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    if kind == "matched_sizes":
        for k, (g, pts) in enumerate(n["points"].items()):
            pts = [pt for pt in pts if pt["loss"] and pt["n_parameters"]]
            x = [pt["n_parameters"] for pt in pts]
            y = [pt["loss"]["estimate"] for pt in pts]
            err = [[pt["loss"]["estimate"] - pt["loss"]["low"] for pt in pts], [pt["loss"]["high"] - pt["loss"]["estimate"] for pt in pts]]
            ax.errorbar(x, y, yerr=err, fmt="o", color=f"C{k}", capsize=3, label=g)
            f = n.get("fits", {}).get(g)
            if f and x:
                grid = np.geomspace(min(x) / 1.3, max(x) * 1.3, 100)
                ax.plot(grid, f["E"] + f["A"] * grid ** -f["alpha"], color=f"C{k}", lw=1,
                        label=f"{g}: E + A N^-{f['alpha']:.2f}")
        ax.set_xscale("log")
        ax.set_xlabel("parameters")
        ax.set_ylabel("held-out loss at <mask> (nats)")
    elif kind == "length_extrapolation":
        for k, (arm, rows) in enumerate(n["bins"].items()):
            rows = [r for r in rows if r["loss"]]
            ax.errorbar([r["high"] for r in rows], [r["loss"]["estimate"] for r in rows],
                        yerr=[[r["loss"]["estimate"] - r["loss"]["low"] for r in rows], [r["loss"]["high"] - r["loss"]["estimate"] for r in rows]],
                        marker="o", capsize=3, color=f"C{k}", label=arm)
        if n["training_lengths"] and n["training_lengths"][0]:
            ax.axvline(n["training_lengths"][0], color="grey", ls=":", lw=1, label="training length")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length, tokens (bin upper edge)")
        ax.set_ylabel("held-out loss at <mask> (nats)")
    elif kind == "paired_seeds":
        t, c = n["treatment"], n["control"]
        for r in n["per_seed"]:
            ax.plot([0, 1], [r["treatment"]["estimate"], r["control"]["estimate"]], color="grey", lw=0.8)
        for k, (key, arm) in enumerate((("treatment", t), ("control", c))):
            ys = [r[key]["estimate"] for r in n["per_seed"]]
            ax.errorbar([k] * len(ys), ys, yerr=[[r[key]["estimate"] - r[key]["low"] for r in n["per_seed"]],
                                                  [r[key]["high"] - r[key]["estimate"] for r in n["per_seed"]]],
                        fmt="o", color=f"C{k}", capsize=3)
        ax.set_xticks([0, 1])
        ax.set_xticklabels([t, c])
        ax.set_xlim(-0.5, 1.5)
        ax.set_ylabel("held-out loss at <mask> (nats), one point per seed")
    elif kind == "downstream_sign":
        ms = n["metrics"]
        for k, key in enumerate(("treatment", "control")):
            for i, m in enumerate(ms):
                ax.bar(i + (k - 0.5) * 0.38, float(np.mean(m[key])), 0.38, color=f"C{k}", label=n[key] if i == 0 else None)
                ax.plot([i + (k - 0.5) * 0.38] * len(m[key]), m[key], "k.", ms=4)
        ax.set_xticks(range(len(ms)))
        ax.set_xticklabels([f"{m['task']}\n{m['split']}/{m['metric']}" for m in ms], fontsize=7)
        ax.set_ylabel("value (higher is better)")
    ax.set_title(f"{title}: {o.verdict}", fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write_with(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return path


def _data_line() -> str:
    from lcplm.data.cache import swissprot_dir

    try:
        m = json.loads((swissprot_dir() / "manifest.json").read_text())
    except (OSError, ValueError):
        return "Data: Swiss-Prot not prepared here (`lcplm data prepare-swissprot`)."
    return (f"Data: Swiss-Prot Jan 2014 from Debian's {m['package']} {m['deb']['version']} (.deb SHA-256 "
            f"{m['deb']['sha256'][:12]}...): {m['outputs']['train']['records']:,} training and "
            f"{m['outputs']['heldout']['records']:,} held-out proteins (split.tsv SHA-256 {m['outputs']['split']['sha256'][:12]}...).")


def write_report(p, outcomes: dict[str, verdicts.Outcome], meta: dict[str, Any]) -> Path:
    """REPORT.md (+ figures) for every claim of the plan's tier."""
    out = p.out
    est = meta.get("estimate")
    lines = [
        f"# Claims: {meta['tier']} tier",
        "",
        f"Written {time.strftime('%Y-%m-%d %H:%M')} at git {meta['git']} by `lcplm reproduce --tier {meta['tier']}` "
        f"({meta['seconds'] / 60:.1f} min this invocation"
        + (f"; the tier's runs are estimated at {est['total'] / 60:.0f} min" if est else "") + ").",
        _data_line(),
        "",
        "Verdicts: **reproduced** only when the stated test rejects at its alpha in the claimed direction; "
        "**contradicted** when it rejects in the opposite direction; **not reproduced at this scale** otherwise; "
        "**not tested** when runs or evaluations are missing. Small models and budgets test the direction of an "
        "effect, not its published size.",
        "",
        "| claim | the paper says | our result | test | verdict |",
        "|---|---|---|---|---|",
    ]
    sections = []
    for name, cp in p.claims.items():
        c, o = cp.claim, outcomes[name]
        kind, t = c.test.kind, c.test
        statement = " ".join(c.statement.split())
        lines.append(f"| [{name}](#{name}) | {statement} | {summary_line(kind, o)} | {kind}, alpha {t.alpha} | **{o.verdict}** |")
        fig = _figure(kind, o, out / "figures" / f"{name}.png", name)
        sec = [
            f"## {name}",
            "",
            f"**The paper** ({c.paper}): {statement}",
            "",
            f"**Tested here**: {' '.join(c.hypothesis.split())}",
            "",
            (f"**Budget** ({meta['tier']} tier): {' '.join(cp.tier.budget.split())}" if meta["tier"] != "smoke" else
             f"**Budget** (smoke tier: the cpu tier's runs cut to a few steps; its verdicts mean nothing). The cpu tier's: "
             f"{' '.join(cp.tier.budget.split())}"),
            "",
            *_runs_table(p, cp),
            "",
            *_numbers(kind, o, t.treatment, t.control),
            "",
            f"**Test**: {o.test or kind}.",
            "",
            f"**Verdict: {o.verdict}**: {o.reason}."
            + (f" One-sided p in the claimed direction: {', '.join(_p(x) for x in o.p_claimed)}; "
               f"in the opposite direction: {', '.join(_p(x) for x in o.p_opposite)}." if o.p_claimed else ""),
        ]
        if fig:
            sec += ["", f"![{name}](figures/{fig.name})"]
        sections.append("\n".join(sec))
    text = "\n".join(lines) + "\n\n" + "\n\n".join(sections) + "\n"
    path = out / "REPORT.md"
    atomic_write_text(path, text)
    return path
