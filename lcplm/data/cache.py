"""Where lcplm keeps derived data: the prepared default data set and FASTA indexes.

The cache root is ``$LCPLM_CACHE_DIR`` when set, else ``.cache`` under the current directory.
Below it: ``data/`` (``lcplm data prepare-default``) and ``fasta_index/`` (one folder per
indexed FASTA file). Inputs are never written next to (shared data is read-only).
"""

from __future__ import annotations

import os
from pathlib import Path

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
