"""One exception type for user-facing errors.

Library code raises :class:`UnisslError` with a one-line message that names the offending file or value
and says what to do. The CLI prints it as ``unissl: error: <message>`` and exits with status 2; any
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UnisslError(Exception):
    """A problem with the user's input, files or environment (not a bug in unissl)."""
