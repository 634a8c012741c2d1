"""Downstream results: per-seed rows -> mean ± std, a markdown table across models, a bar chart.

A result row is a dict ``{model, task, split, head, metric, seed, value}``. The table has one
line per task / split / head / metric and one column per model (checkpoints and baselines
side by side, the best mean in bold), so several checkpoints compare in one table.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable, Optional

KEY = ("task", "split", "head", "metric")


def summarize(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean, sample standard deviation (n - 1) and count over seeds, per model and line.

    NaN values (a metric undefined on a split) are left out of the mean and counted apart.
    Order follows first appearance in ``rows``.
    """
    groups: "OrderedDict[tuple, list[float]]" = OrderedDict()
    for r in rows:
        groups.setdefault((r["model"],) + tuple(r[k] for k in KEY), []).append(float(r["value"]))
    out = []
    for key, values in groups.items():
        ok = [v for v in values if not math.isnan(v)]
        n = len(ok)
        mean = sum(ok) / n if n else math.nan
        std = math.sqrt(sum((v - mean) ** 2 for v in ok) / (n - 1)) if n > 1 else 0.0 if n else math.nan
        out.append(dict(zip(("model",) + KEY, key), mean=mean, std=std, n=n, n_nan=len(values) - n))
    return out


def _models(summary: list[dict[str, Any]]) -> list[str]:
    return list(OrderedDict.fromkeys(s["model"] for s in summary))


def _lines(summary: list[dict[str, Any]]) -> "OrderedDict[tuple, dict[str, dict]]":
    lines: "OrderedDict[tuple, dict[str, dict]]" = OrderedDict()
    for s in summary:
        lines.setdefault(tuple(s[k] for k in KEY), {})[s["model"]] = s
    return lines


def _cell(s: Optional[dict[str, Any]], bold: bool) -> str:
    if s is None:
        return "–"
    if s["n"] == 0:
        return "n/a"
    text = f"{s['mean']:.3f} ± {s['std']:.3f}" if s["n"] > 1 else f"{s['mean']:.3f}"
    return f"**{text}**" if bold else text


def markdown_table(summary: list[dict[str, Any]]) -> str:
    """One line per task/split/head/metric, one column per model; best mean in bold."""
    models = _models(summary)
    head = "| task | split | head | metric | " + " | ".join(models) + " |"
    sep = "|" + "---|" * 4 + "---:|" * len(models)
    body = []
    for key, by_model in _lines(summary).items():
        means = [by_model[m]["mean"] for m in models if m in by_model and by_model[m]["n"]]
        best = max(means) if means and len(models) > 1 else None
        cells = [_cell(by_model.get(m), best is not None and m in by_model and by_model[m]["n"] > 0
                       and by_model[m]["mean"] == best) for m in models]
        body.append("| " + " | ".join(str(k) for k in key) + " | " + " | ".join(cells) + " |")
    return "\n".join([head, sep, *body])


def bar_chart(summary: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Grouped bars (one per model, error bars = std over seeds), one panel per task/metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = _models(summary)
    panels: "OrderedDict[tuple, OrderedDict[tuple, dict[str, dict]]]" = OrderedDict()
    for key, by_model in _lines(summary).items():
        task, split, head, metric = key
        panels.setdefault((task, metric), OrderedDict())[(split, head)] = by_model
    n = max(len(panels), 1)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 3.6 * rows), squeeze=False)
    width = 0.8 / max(len(models), 1)
    for ax, ((task, metric), groups) in zip(axes.flat, panels.items()):
        # TAPE's split names are long: "test_fold_holdout" is shown as "fold"
        labels = [f"{split.removeprefix('test_').removesuffix('_holdout')}\n{head}" for split, head in groups]
        for j, m in enumerate(models):
            xs = [i + (j - (len(models) - 1) / 2) * width for i in range(len(groups))]
            ys = [g[m]["mean"] if m in g and g[m]["n"] else 0.0 for g in groups.values()]
            es = [g[m]["std"] if m in g and g[m]["n"] else 0.0 for g in groups.values()]
            ax.bar(xs, ys, width, yerr=es, capsize=2, label=m)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_title(f"{task}: {metric}", fontsize=9)
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles, names = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="upper right", ncol=min(len(models), 6), fontsize=8)
    if title:
        fig.suptitle(title, x=0.01, y=0.995, ha="left", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(out_dir: str | Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Path]:
    """``results.json`` (meta, rows, summary), ``results.md`` (the table) and ``results.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows)
    table = markdown_table(summary)
    paths = {"json": out / "results.json", "md": out / "results.md", "png": out / "results.png"}
    paths["json"].write_text(json.dumps({"meta": meta, "rows": rows, "summary": summary}, indent=2, default=str) + "\n")
    n_seeds = len({r["seed"] for r in rows})
    intro = f"# Downstream evaluation: {meta.get('name', '')}\n\nMean ± std over {n_seeds} seed(s); best mean per line in bold.\n"
    skipped = meta.get("skipped") or []
    notes = "".join(f"- skipped {s}\n" for s in skipped)
    paths["md"].write_text(intro + "\n" + table + "\n" + ("\n" + notes if notes else ""))
    bar_chart(summary, paths["png"], title=str(meta.get("name", "")))
    return paths
