"""``python -m lcplm COMMAND ...``: the same command line as the ``lcplm`` script (:mod:`lcplm.cli`)."""

from __future__ import annotations

import sys

from lcplm.cli import COMMANDS, main, usage

__all__ = ["COMMANDS", "main", "usage"]

if __name__ == "__main__":
    sys.exit(main())
