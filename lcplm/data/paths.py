"""Where config paths point: the shared real data, installed packages, or plain files.

One resolver for every data module, so ``shared:REL`` and ``../shared/data/REL`` mean the same
file everywhere: ``REL`` under ``$LCPLM_DATA_DIR``, else under ``../shared/data`` beside the
project root. ``package:PKG/REL`` is a file shipped inside an installed Python package (e.g.
``package:pyrodigal_gv/tests/phage_Agate.faa``). Anything else is a plain path (``~`` expanded).
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

from lcplm.errors import UserError

SHARED_PREFIXES = ("shared:", "../shared/data/")


def shared_data_dir() -> Path:
    """``$LCPLM_DATA_DIR``, else ``../shared/data`` beside the project root."""
    env = os.environ.get("LCPLM_DATA_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def is_shared(path: str) -> bool:
    return path.startswith(SHARED_PREFIXES)


def resolve_data_path(path: str) -> Path:
    for prefix in SHARED_PREFIXES:
        if path.startswith(prefix):
            return shared_data_dir() / path[len(prefix):]
    if path.startswith("package:"):
        pkg, _, rel = path[len("package:"):].partition("/")
        try:
            root = importlib.resources.files(pkg)
        except ModuleNotFoundError:
            raise UserError(f"{path}: Python package {pkg!r} is not installed") from None
        return Path(str(root.joinpath(rel)))
    return Path(path).expanduser()
