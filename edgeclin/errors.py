"""The one exception type that the CLI turns into a clean, one-line error."""


class EdgeclinError(Exception):
    """A problem with the user's input or environment.

    The message is shown as is (no traceback), so it must say what is wrong and where:
    the file, line and column when there is one.
    """
