"""Aggregation over seeds, the comparison table and the chart."""

from __future__ import annotations

import json
import math

import pytest

from lcplm.eval.baselines import composition_features
from lcplm.eval.report import markdown_table, summarize, write_report


def _row(model, value, seed, split="test", metric="accuracy"):
    return {"model": model, "task": "t", "split": split, "head": "linear", "metric": metric, "seed": seed, "value": value}


def test_summarize_mean_and_sample_std_over_seeds():
    rows = [_row("a", v, s) for s, v in enumerate([0.2, 0.4, 0.6])] + [_row("b", 0.5, 0)] + [_row("b", math.nan, 1)]
    s = {x["model"]: x for x in summarize(rows)}
    assert s["a"]["mean"] == pytest.approx(0.4) and s["a"]["std"] == pytest.approx(0.2) and s["a"]["n"] == 3
    assert s["b"]["mean"] == 0.5 and s["b"]["std"] == 0.0 and s["b"]["n"] == 1 and s["b"]["n_nan"] == 1


def test_markdown_table_compares_models_side_by_side():
    rows = [_row(m, v + 0.01 * s, s) for m, v in (("ckpt1", 0.3), ("ckpt2", 0.5), ("composition", 0.1)) for s in range(2)]
    rows += [_row("ckpt1", math.nan, 0, metric="fmax")]
    table = markdown_table(summarize(rows)).splitlines()
    assert table[0] == "| task | split | head | metric | ckpt1 | ckpt2 | composition |"
    assert table[2] == "| t | test | linear | accuracy | 0.305 ± 0.007 | **0.505 ± 0.007** | 0.105 ± 0.007 |"
    assert table[3] == "| t | test | linear | fmax | n/a | – | – |"


def test_write_report_files(tmp_path):
    rows = [_row(m, 0.1 * k + 0.01 * s, s, split=sp) for k, m in enumerate(["x", "y"]) for s in range(3)
            for sp in ("fold", "family")]
    paths = write_report(tmp_path / "out", rows, {"name": "demo", "skipped": ["ppi: file missing"]})
    data = json.loads(paths["json"].read_text())
    assert len(data["rows"]) == 12 and len(data["summary"]) == 4 and data["meta"]["name"] == "demo"
    md = paths["md"].read_text()
    assert "Mean ± std over 3 seed(s)" in md and "- skipped ppi: file missing" in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_composition_features_by_hand():
    f = composition_features(["ACA", "XXXX", "AAC-C"])
    assert f.shape == (3, 420)
    # A and C are the first two standard residues; AC is dipeptide 0*20+1, CA is 1*20+0
    assert f[0, 0] == pytest.approx(2 / 3) and f[0, 1] == pytest.approx(1 / 3)
    assert f[0, 20 + 1] == pytest.approx(0.5) and f[0, 20 + 20] == pytest.approx(0.5)
    assert not f[1].any()  # no standard residue at all
    # the gap breaks the C-C dipeptide: only AA and AC count
    assert f[2, 20 + 0] == pytest.approx(0.5) and f[2, 20 + 1] == pytest.approx(0.5) and f[2, 20 + 21] == 0
