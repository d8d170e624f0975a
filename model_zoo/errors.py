"""The one exception type users see: its message says what was wrong and what to do."""


class GemmaforgeError(Exception):
    """A user-facing error. The CLI prints its message as one line and exits non-zero."""
