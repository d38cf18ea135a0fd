"""The one exception type for user mistakes.

Library code raises `UserError` with a message that names the bad value and what
would be valid; the CLI prints it as a single `Error: ...` line and exits non-zero.
Anything else that escapes is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in what the user asked for (bad option, missing file, ...)."""
