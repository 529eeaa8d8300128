"""The one exception type that the CLI turns into a clear message instead of a traceback."""


class DassError(Exception):
    """A problem the user can fix: the message says what is wrong and what to do."""


class Interrupted(DassError):
    """Ctrl-C or SIGTERM stopped a run at a step boundary (with a checkpoint when the run had started)."""
