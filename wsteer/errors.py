"""The one exception type users see: a message that names the fix, printed without a traceback."""


class WsteerError(Exception):
    """A user-facing error. The CLI prints `wsteer: error: <message>` and exits with status 2."""
