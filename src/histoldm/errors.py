"""The one exception type for expected mistakes (bad input, bad config, missing files).

The CLI prints a UserError as a single line and exits with code 2; anything else is a bug and
keeps its traceback.
"""


class UserError(Exception):
    """An expected mistake by the user: the message names the file and the problem."""
