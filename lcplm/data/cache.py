"""Where lcplm keeps derived data: the prepared data sets and FASTA indexes.

The cache root is ``$LCPLM_CACHE_DIR`` when set, else ``.cache`` under the current directory.
Below it: ``data/`` (``lcplm data prepare-default``), ``data/swissprot/`` (``lcplm data
prepare-swissprot``) and ``fasta_index/`` (one folder per indexed FASTA file). Inputs are never
written next to (shared data is read-only).

Configs and commands name the prepared FASTA files instead of spelling cache paths:
``default`` (the embedded default proteome) and ``swissprot:all|train|heldout``
(:func:`resolve_named_fasta`); any other string is a plain path.
"""

from __future__ import annotations

import os
from pathlib import Path

from lcplm.errors import UserError

# The embedded default data set: a real bacterial proteome (2,100 proteins, genome order)
# shipped inside the pyhmmer wheel, and two phage proteomes inside the pyrodigal-gv wheel.
DEFAULT_PROTEOME = "938293.PRJEB85.HG003687.faa"
PHAGE_PROTEOMES = ("phage_Agate.faa", "phage_Topaz.faa")


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` if given, else ``$LCPLM_CACHE_DIR``, else ``./.cache``."""
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get("LCPLM_CACHE_DIR") or ".cache")


def default_data_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    return cache_root(cache_dir) / "data"


def default_proteome_path(cache_dir: str | os.PathLike | None = None) -> Path:
    return default_data_dir(cache_dir) / DEFAULT_PROTEOME


def phage_proteome_paths(cache_dir: str | os.PathLike | None = None) -> list[Path]:
    return [default_data_dir(cache_dir) / "phages" / name for name in PHAGE_PROTEOMES]


SWISSPROT_PARTS = ("all", "train", "heldout")  # swissprot.fasta, train.fasta, heldout.fasta


def swissprot_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    return default_data_dir(cache_dir) / "swissprot"


def resolve_named_fasta(path: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """``default`` and ``swissprot:PART`` -> the prepared file (a one-line error when it is not
    prepared); any other string -> that path."""
    if path == "default":
        p = default_proteome_path(cache_dir)
        if not p.is_file():
            raise UserError(f"the default data set is not prepared ({p} is missing): run `make data` (or `lcplm data prepare-default`)")
        return p
    if path.startswith("swissprot:"):
        part = path[len("swissprot:"):]
        if part not in SWISSPROT_PARTS:
            raise UserError(f"{path!r}: the Swiss-Prot parts are {', '.join('swissprot:' + x for x in SWISSPROT_PARTS)}")
        d = swissprot_dir(cache_dir)
        p = d / ("swissprot.fasta" if part == "all" else f"{part}.fasta")
        if not (d / "manifest.json").is_file() or not p.is_file():
            raise UserError(f"the Swiss-Prot data set is not prepared ({p} is missing): run `lcplm data prepare-swissprot`")
        return p
    return Path(path)
