"""``lcplm reproduce [CLAIM ...] [--tier cpu|gpu|smoke] [--out DIR] [--dry-run] [--report-only]``
(``make reproduce``): run the claims of experiments/claims/ and write <out>/REPORT.md
(:func:`lcplm.eval.claims.runner.reproduce`)."""

from __future__ import annotations

import argparse
import sys

from lcplm.eval.claims import runner, spec


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="lcplm reproduce",
        description="Train, evaluate and test the published claims declared in experiments/claims/ "
        "(one tier: cpu here, gpu at the papers' sizes on SLURM, smoke = cpu with a few steps per run); "
        "resumes where a previous invocation stopped and writes <out>/REPORT.md.",
    )
    p.add_argument("claims", nargs="*", metavar="CLAIM", help=f"claim names (default: all; {', '.join(spec.claim_files())})")
    p.add_argument("--tier", default="cpu", choices=spec.TIERS, help="which tier's runs (default cpu)")
    p.add_argument("--out", default=None, help="output folder (default runs/claims, runs/claims_gpu, runs/claims_smoke)")
    p.add_argument("--dry-run", action="store_true", help="validate every run's config, print the plan and the estimate; run nothing")
    p.add_argument("--report-only", action="store_true", help="rebuild the tests and REPORT.md from the files already there")
    ns = p.parse_args(argv)
    outcomes = runner.reproduce(ns.tier, ns.claims or None, ns.out, ns.dry_run, ns.report_only,
                                log=lambda line: print(line, file=sys.stderr, flush=True))
    if ns.dry_run:
        return 0
    for name, o in outcomes.items():
        print(f"{name:<24} {o.verdict}")
    return 0
