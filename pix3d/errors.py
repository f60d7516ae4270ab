"""Errors for expected bad input: the CLIs print them as one `error:` line, no traceback."""

from __future__ import annotations


class Pix3DError(Exception):
    """Bad input or a failed precondition the user can fix (exit code 1)."""

    exit_code = 1


class UsageError(Pix3DError):
    """A bad command-line option or option combination (exit code 2)."""

    exit_code = 2
