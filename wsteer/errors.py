"""The exception types users see: a message that names the fix, printed without a traceback."""


class WsteerError(Exception):
    """A user-facing error. The CLI prints `wsteer: error: <message>` and exits with `exit_code` (2)."""

    exit_code = 2


class Interrupted(WsteerError):
    """The run was stopped from outside (SIGTERM) after saving what it had; rerunning the same command resumes.

    Exits 143 (128 + SIGTERM), as a process killed by SIGTERM would, so schedulers see a stopped job, not a
    bad input and not a success.
    """

    exit_code = 143
