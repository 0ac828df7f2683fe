"""The one exception type the library raises for problems a user can fix.

Every :class:`FDIError` message names the problem *and* the fix, in one line, so that the CLI can
print it without a traceback and the ComfyUI nodes can show it in the UI as it is.
"""

from __future__ import annotations


class FDIError(Exception):
    """A user-facing error: bad input, wrong file, mismatched models.

    The message is a single line that says what is wrong and what to do about it. Programming
    errors (bugs) are *not* wrapped in this type, so they keep their tracebacks.
    """


class FDIInterrupted(FDIError):
    """Raised when a long-running loop is stopped by its progress callback (e.g. ComfyUI's cancel)."""
