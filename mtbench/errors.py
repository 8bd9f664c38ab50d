"""The one exception type for mistakes a user can make and fix."""


class MtbenchError(Exception):
    """A user-caused error (bad config, unknown name, missing file, unreachable service).

    The CLI prints its message alone, with no traceback, and exits with code 2. The message
    says what went wrong, where, and how to fix it.
    """
