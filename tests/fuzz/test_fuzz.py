"""The input fuzz suite in CI: generated valid and malformed FASTA, id<TAB>sequence tables,
GenBank, ViralEmbed genomes, edge lists (pairs, STRING links and actions), action tables, DMS tables and
experiment configs, each with its expected outcome (tests/fuzz/fuzz_formats.py). ``make fuzz``
runs 5,000 cases; set LCPLM_FUZZ_SEED to replay a run.
"""

from __future__ import annotations

import os
import random

import fuzz_formats  # noqa: F401  (registers the formats)
from fuzz_harness import FORMATS, run_many

SEED = int(os.environ.get("LCPLM_FUZZ_SEED") or random.SystemRandom().randrange(2**31))


def _verdict(report) -> str:
    return (f"seed {SEED} (replay: LCPLM_FUZZ_SEED={SEED} or python tests/fuzz/run.py --seed {SEED})\n"
            + report.table() + "\n\n" + "\n\n".join(report.failures[:20]))


def test_fuzz_readers_in_process_and_through_the_cli_entry_point(tmp_path):
    report = run_many(420, SEED, tmp_path, cli_share=0.25)
    assert not report.failures, _verdict(report)
    by_format = {name: [r for r in report.results if r.format == name] for name in FORMATS}
    for name, results in by_format.items():  # the generator really makes both kinds of input
        assert any(r.expected_error for r in results) and any(not r.expected_error for r in results), name
    assert sum(r.mode == "cli" for r in report.results) >= 40


def test_fuzz_through_lcplm_subprocesses(tmp_path):
    report = run_many(0, SEED, tmp_path, formats=["fasta", "edges", "genbank", "viralembed"], subprocess_cases=4)
    assert len(report.results) == 4 and all(r.mode == "subprocess" for r in report.results)
    assert not report.failures, _verdict(report)


def test_the_harness_fails_a_wrong_reader(tmp_path, monkeypatch):
    """A reader that loses a record, and one that raises a non-user error, are both caught."""
    from lcplm.data import fasta

    real = fasta.iter_fasta
    monkeypatch.setattr(fasta, "iter_fasta", lambda path, counts=None: list(real(path, counts))[1:])
    report = run_many(40, 11, tmp_path / "a", formats=["fasta"], cli_share=0.0)
    assert any("wrong result" in f or "disagree" in f for f in report.failures)
    monkeypatch.setattr(fasta, "iter_fasta", lambda path, counts=None: 1 / 0)
    report = run_many(10, 12, tmp_path / "b", formats=["fasta"], cli_share=0.0)
    assert any("traceback" in f and "ZeroDivisionError" in f for f in report.failures)
