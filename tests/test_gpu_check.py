"""`make gpu-check ARGS=--dry-run`: every section of the GPU check runs its code path on CPU at
toy sizes and the report is written (what CI can check of a script meant for a GPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_check  # noqa: E402


@pytest.mark.slow
def test_dry_run_runs_every_section(tmp_path: Path):
    out = tmp_path / "gc"
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["dry_run"] is True
    assert {n: s["status"] for n, s in report["sections"].items()} == {n: "ok" for n in gpu_check.SECTIONS}
    S = report["sections"]
    # each section did its work, not just exit 0
    assert S["attention"]["summary"]["flex_correct"] is True
    assert any(r.get("impl") == "flex" for r in S["attention"]["rows"])
    assert any(r.get("backend") == "kernel" and "step_s" in r for r in S["genome_step"]["rows"])
    assert S["mlm"]["summary"]["loss_falls"] is True
    assert S["pytest"]["summary"]["collected"] > 0
    md = (out / "gpu_check.md").read_text()
    assert "DRY RUN" in md and "**Block-sparse attention**" in md and "**MLM training**" in md


def test_unknown_section_is_one_line_and_exit_2(tmp_path: Path):
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry-run", "--only", "bogus",
                        "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "unknown section" in r.stderr and "Traceback" not in r.stderr


def test_results_block_is_replaced_not_appended(tmp_path: Path):
    f = tmp_path / "RESULTS.md"
    f.write_text("# Results\n\nintro\n")
    gpu_check.update_results("first\n", f)
    gpu_check.update_results("second\n", f)
    text = f.read_text()
    assert text.count(gpu_check.RESULTS_BEGIN) == 1 and "second" in text and "first" not in text
    assert text.startswith("# Results\n\nintro\n")


def test_failed_and_timed_out_sections_are_reported(tmp_path: Path):
    report = {"dry_run": False, "sections": {
        "env": {"status": "ok", "summary": {"gpu": "X"}, "rows": []},
        "attention": {"status": "timeout", "error": "killed after 100 s", "rows": [], "summary": {}, "wall_s": 100},
    }}
    md = gpu_check.render_markdown(report)
    assert "| attention | timeout: killed after 100 s | 100 |" in md
