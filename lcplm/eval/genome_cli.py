"""``lcplm genome SUBCOMMAND ...``: evaluations of the genome-scale sparse-attention model.

Each subcommand is a module exposing ``main(argv) -> int``; a
:class:`~lcplm.errors.UserError` reaches the ``lcplm`` entry point, which prints one line.
"""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "pair-scores": ("lcplm.eval.genome_pair_scores:main", "inter-protein attention mass per pair (the scored source's first step)"),
    "probe": ("lcplm.eval.genome_probe:main", "PHROG function-category probe of in-context protein embeddings"),
    "taxonomy": ("lcplm.eval.genome_taxonomy:main", "genome embeddings -> taxonomy: weighted F1 per rank, cosine silhouette"),
    "ppi-detection": ("lcplm.eval.genome_ppi_detection:main", "attention pair scores against known PPIs: P/R/F1, AUPR"),
}


def usage() -> str:
    lines = ["usage: lcplm genome SUBCOMMAND EXPERIMENT.yaml [ARGS...] [key=value ...]", "", "subcommands:"]
    lines += [f"  {name:<14} {desc}" for name, (_, desc) in SUBCOMMANDS.items()]
    lines += ["", "Run 'lcplm genome SUBCOMMAND --help' for its arguments."]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    sub, rest = argv[0], argv[1:]
    if sub not in SUBCOMMANDS:
        print(f"lcplm genome: error: unknown subcommand {sub!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, _, func = SUBCOMMANDS[sub][0].partition(":")
    return int(getattr(importlib.import_module(module), func)(rest) or 0)
