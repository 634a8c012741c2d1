"""Run the input fuzz suite: ``python tests/fuzz/run.py --cases 5000 [--seed N] [--subprocess 40]``.

Prints a table of cases per format and mode (valid inputs, expected errors, failures, slowest
case) and every failure with the seed and case number that reproduce it; exit status 1 when
any case failed. ``make fuzz`` runs 5,000 cases.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path[1:1] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[2] / "kernels")]

import fuzz_formats  # noqa: E402,F401  (registers the formats)
from fuzz_harness import FORMATS, run_many  # noqa: E402


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=5000, help="in-process and CLI cases (default 5000)")
    p.add_argument("--subprocess", type=int, default=40, help="further cases through `python -m lcplm` (default 40)")
    p.add_argument("--seed", type=int, default=None, help="seed (default: a fresh one, printed)")
    p.add_argument("--formats", default=None, help=f"comma-separated subset of {sorted(FORMATS)}")
    p.add_argument("--cli-share", type=float, default=0.25, help="share of cases run through the CLI entry point")
    ns = p.parse_args(argv)
    seed = ns.seed if ns.seed is not None else random.SystemRandom().randrange(2**31)
    formats = ns.formats.split(",") if ns.formats else None
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lcplm-fuzz-") as tmp:
        total = ns.cases + ns.subprocess

        def progress(i: int) -> None:
            if (i + 1) % 500 == 0:
                print(f"  {i + 1}/{total} cases, {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)

        report = run_many(ns.cases, seed, Path(tmp), formats, ns.cli_share, ns.subprocess, progress)
    print(f"lcplm input fuzzing, seed {seed}: {len(report.results)} cases in {time.monotonic() - t0:.0f} s")
    print(report.table())
    for failure in report.failures[:50]:
        print("\nFAILED " + failure)
    if report.failures:
        print(f"\n{len(report.failures)} failures; rerun with --seed {seed}")
    return 1 if report.failures else 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main(sys.argv[1:]))
