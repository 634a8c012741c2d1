"""``lcplm eval-lm CHECKPOINT... --fasta F [...]``: held-out masked-LM loss per length bin
(:func:`lcplm.eval.lm.evaluate`; what is measured is in :mod:`lcplm.eval.lm`)."""

from __future__ import annotations

import argparse
import sys

from lcplm.errors import UserError
from lcplm.eval import lm, stats


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="lcplm eval-lm",
                                description="Held-out masked-LM loss of checkpoints, overall and per sequence-length bin.")
    p.add_argument("checkpoints", nargs="+", metavar="[LABEL=]CHECKPOINT", help="lcplm .ckpt, LC-PLM or HF ESM-2 directory")
    p.add_argument("--fasta", required=True, help="held-out FASTA, or swissprot:heldout")
    p.add_argument("--bins", default=",".join(map(str, lm.DEFAULT_BINS)),
                   help="upper edges of the length bins in tokens (default %(default)s)")
    p.add_argument("--per-bin", type=int, default=None, help="at most N sequences per bin (chosen by id hash; default all)")
    p.add_argument("--seed", type=int, default=0, help="mask seed (default 0)")
    p.add_argument("--mask-prob", type=float, default=0.15, help="target rate over residues (default 0.15)")
    p.add_argument("--max-tokens", type=int, default=16384, help="token budget per batch (default 16384)")
    p.add_argument("--bootstrap", type=int, default=stats.DEFAULT_BOOTSTRAP, help="bootstrap resamples (default %(default)s)")
    p.add_argument("--out", default=lm.DEFAULT_OUT, help="output folder (default %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    p.add_argument("--cache-dir", default=None, help="cache root for FASTA indexes and prepared data")
    ns = p.parse_args(argv)
    if ns.bootstrap < 100:
        raise UserError(f"--bootstrap must be >= 100 for a 95% interval, got {ns.bootstrap}")
    result = lm.evaluate(ns.checkpoints, ns.fasta, lm.parse_bins(ns.bins), ns.per_bin, ns.seed, ns.mask_prob, ns.max_tokens,
                         ns.bootstrap, ns.device, ns.cache_dir, log=lambda line: print(line, file=sys.stderr, flush=True))
    paths = lm.write_outputs(result, ns.out)
    print(lm.markdown(result))
    print(f"wrote {paths['json']}, {paths['md']}, {paths['png']} ({result['seconds']:.0f} s)")
    return 0
