"""User-facing errors.

Anything the user can fix (a bad path, a malformed row, an unknown alias) raises `LmlabError` with one
line that names the file/line/field and the fix. The CLI prints it without a traceback and exits 2.
"""

from __future__ import annotations


class LmlabError(Exception):
    """An error caused by input the user controls; its message is shown as-is, on one line."""

    def __init__(self, message: str, *, hint: str | None = None):
        text = message if hint is None else f"{message} ({hint})"
        super().__init__(" ".join(text.split()))
