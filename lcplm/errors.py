"""The one exception type for mistakes a user can fix (bad file, bad config key, bad value).

The CLI turns it into a single line on stderr and a non-zero exit; everything else is a bug
and keeps its traceback. ``lcplm_kernels``, which cannot import lcplm, raises its own
``BackendUnavailableError`` for a kernel backend asked for by name that cannot run here; it is
a user's mistake too, so ``USER_ERRORS`` holds both and the CLI treats them alike.
"""

from __future__ import annotations

from lcplm_kernels.errors import BackendUnavailableError


class UserError(Exception):
    """A problem with the user's input: the message names the file, record or key."""


USER_ERRORS = (UserError, BackendUnavailableError)
