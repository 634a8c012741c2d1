"""The one exception type for mistakes a user can fix (bad file, bad config key, bad value).

The CLI turns it into a single line on stderr and a non-zero exit; everything else is a bug
and keeps its traceback. ``lcplm_kernels``, which cannot import lcplm, raises its own
``BackendUnavailableError`` for a kernel backend asked for by name that cannot run here; it is
a user's mistake too, so ``USER_ERRORS`` holds both and the CLI treats them alike.
"""

from __future__ import annotations

import sys
from typing import Callable, NoReturn

from lcplm_kernels.errors import BackendUnavailableError


class UserError(Exception):
    """A problem with the user's input: the message names the file, record or key."""


USER_ERRORS = (UserError, BackendUnavailableError)


def run_module_main(main: Callable[[list[str]], int], prog: str) -> NoReturn:
    """``python -m`` entry points beside the ``lcplm`` CLI: run ``main(sys.argv[1:])`` and exit
    with its status; a :class:`UserError` (any of ``USER_ERRORS``) is one line on stderr and
    status 2, as in the CLI."""
    try:
        sys.exit(main(sys.argv[1:]))
    except USER_ERRORS as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)
