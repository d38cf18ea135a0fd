"""The one exception type for user mistakes.

Library code raises `UserError` with a message that names the bad value and what
would be valid; the CLI prints it as a single `Error: ...` line and exits non-zero.
Anything else that escapes is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in what the user asked for (bad option, missing file, ...)."""


class Interrupted(Exception):
    """The search stopped on Ctrl-C or SIGTERM; its run folder can be resumed.

    `str(e)` says what was done; `resume` is the command that continues the run.
    """

    def __init__(self, message: str, resume: str, signal_name: str = "SIGINT"):
        super().__init__(message)
        self.resume = resume
        self.signal_name = signal_name
