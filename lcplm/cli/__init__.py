"""The command line, one layer above everything else: ``lcplm COMMAND ...`` (``python -m lcplm``).

Every command is a module of this package exposing ``main(argv) -> int``: it parses its
arguments, loads configs, calls library functions with explicit parameters and prints. Library
modules (``lcplm.data``, ``models``, ``tasks``, ``train``, ``eval``, ``lcplm.embed``) have no
argument parsing and never import this package. A command's module is imported only when it
runs, so ``lcplm --help`` and a mistyped command answer at once.

A :class:`~lcplm.errors.UserError`, or lcplm_kernels' ``BackendUnavailableError`` (a kernel
backend asked for by name that cannot run here), becomes one line on stderr and exit status 2;
Ctrl-C is one line and status 130. argparse's usage errors (status 2) and ``--help`` (0) come back
as :func:`main`'s return value too, so in-process callers get a status, never a SystemExit.
"""

from __future__ import annotations

import importlib
import sys

from lcplm.errors import USER_ERRORS

# command -> (module with main(argv), one line for the usage)
COMMANDS: dict[str, tuple[str, str]] = {
    "pretrain": ("lcplm.cli.pretrain", "train a model (stage 1 MLM, stage 2 graph, genome)"),
    "eval-downstream": ("lcplm.cli.eval_downstream", "remote homology, function, PPI link prediction"),
    "eval-lm": ("lcplm.cli.eval_lm", "held-out masked-LM loss per length bin, with bootstrap intervals"),
    "score-variants": ("lcplm.cli.score_variants", "zero-shot variant effects on ProteinGym DMS tables (ESM-1v scores)"),
    "embed": ("lcplm.cli.embed", "write per-sequence / per-residue embeddings of a FASTA"),
    "export": ("lcplm.cli.export", "write a model as a model directory (lcplm, LC-PLM or ESM-2 layout)"),
    "convert": ("lcplm.cli.convert", "LC-PLM / ESM-2 releases to and from lcplm model directories"),
    "genome": ("lcplm.cli.genome", "genome model evaluations: pair-scores, probe, taxonomy, ppi-detection"),
    "data": ("lcplm.cli.data", "prepare data sets (the embedded default, Swiss-Prot) and describe input files"),
    "sweep": ("lcplm.cli.sweep", "expand a grid of overrides into runs, locally or on SLURM"),
    "reproduce": ("lcplm.cli.reproduce", "train, evaluate and test the papers' claims; write runs/claims/REPORT.md"),
    "params": ("lcplm.cli.params", "print the parameter count of an experiment's model"),
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
    if argv[0] in ("-V", "--version"):
        from lcplm import __version__

        print(f"lcplm {__version__}")
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"lcplm: error: unknown command {cmd!r}\n\n{usage()}", file=sys.stderr)
        return 2
    try:
        return int(importlib.import_module(COMMANDS[cmd][0]).main(rest) or 0)
    except USER_ERRORS as e:
        print(f"lcplm {cmd}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lcplm {cmd}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:  # argparse (usage error, --help) or a signal handler's exit
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(f"lcplm {cmd}: {e.code}", file=sys.stderr)
        return 1
