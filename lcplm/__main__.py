"""Command line: ``lcplm COMMAND ...`` (or ``python -m lcplm``), the commands listed in :data:`COMMANDS`.

Each command lives in its own module and exposes ``main(argv) -> int``. A
:class:`~lcplm.errors.UserError`, or lcplm_kernels' ``BackendUnavailableError`` (a kernel
backend asked for by name that cannot run here), becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import importlib
import sys

from lcplm.errors import USER_ERRORS

COMMANDS: dict[str, tuple[str, str]] = {
    "pretrain": ("lcplm.train.run:main", "train a model (stage 1 MLM, stage 2 graph, genome)"),
    "embed": ("lcplm.embed:main", "write per-sequence / per-residue embeddings of a FASTA"),
    "eval-downstream": ("lcplm.eval.downstream_cli:main", "remote homology, function, PPI link prediction"),
    "eval-lm": ("lcplm.eval.lm:main", "held-out masked-LM loss per length bin, with bootstrap intervals"),
    "data": ("lcplm.data.prepare:main", "prepare data sets (the embedded default, Swiss-Prot) and describe FASTA files"),
    "sweep": ("lcplm.train.sweep:main", "expand a grid of overrides into runs, locally or on SLURM"),
    "export": ("lcplm.models.export_cli:main", "write a model as a model directory (lcplm, LC-PLM or ESM-2 layout)"),
    "convert": ("lcplm.models.convert_cli:main", "convert LC-PLM / ESM-2 releases to and from lcplm model directories"),
    "genome": ("lcplm.eval.genome_cli:main", "genome model evaluations: pair-scores, probe, taxonomy, ppi-detection"),
    "score-variants": ("lcplm.eval.variants:main", "zero-shot variant effects on ProteinGym DMS tables (ESM-1v scores)"),
    "reproduce": ("lcplm.eval.claims.cli:main", "train, evaluate and test the papers' claims; write runs/claims/REPORT.md"),
    "params": ("lcplm.models:main", "print the parameter count of an experiment's model"),
}


def usage() -> str:
    lines = ["usage: lcplm COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<16} {desc}" for name, (_, desc) in COMMANDS.items()]
    lines += ["", "Run 'lcplm COMMAND --help' for a command's arguments."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"lcplm: error: unknown command {cmd!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, _, func = COMMANDS[cmd][0].partition(":")
    try:
        return int(getattr(importlib.import_module(module), func)(rest) or 0)
    except USER_ERRORS as e:
        print(f"lcplm {cmd}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lcplm {cmd}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
