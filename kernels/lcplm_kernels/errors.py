"""The one exception lcplm_kernels raises for a user's choice it cannot honour.

lcplm_kernels imports only torch, triton and the standard library, so it cannot raise
``lcplm.errors.UserError``; the lcplm CLI turns this into the same one line on stderr and exit
status 2.
"""

from __future__ import annotations


class BackendUnavailableError(ValueError):
    """A backend was asked for by name and cannot run here (its package is missing, it does not
    compile, or the tensors are on the wrong device); the message says what to do instead."""
