"""The one exception type for mistakes a user can fix (bad file, bad config key, bad value).

The CLI turns it into a single line on stderr and a non-zero exit; everything else is a bug
and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input: the message names the file, record or key."""
