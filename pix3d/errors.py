"""Errors for expected bad input: the CLIs print them as one `error:` line, no traceback."""

from __future__ import annotations


class Pix3DError(Exception):
    """Bad input or a failed precondition the user can fix (exit code 1)."""

    exit_code = 1


class UsageError(Pix3DError):
    """A bad command-line option or option combination (exit code 2)."""

    exit_code = 2


def one_line(exc: BaseException, limit: int = 300) -> str:
    """Any exception as one line of text, whatever its message: empty, multi-line or huge.

    The first non-blank line of str(exc) (cut to `limit` characters), or the class name when
    the text is empty; an OSError with a file name reads `PATH: reason`. Never raises: it is
    used on error paths, where a crash would hide the error being reported.
    """
    try:
        if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
            text = f"{exc.filename}: {exc.strerror}"
        else:
            text = str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ must not crash the error path
        text = ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    first = lines[0]
    if len(first) > limit:
        first = first[: limit - 3] + "..."
    return first


class Pix3DDeprecation(FutureWarning):
    """An old name that is still accepted (shown once per name, as one `warning:` line by
    the commands; see pix3d.cli)."""


# Old names of the published scheme: the word "seed" also meant a random seed.
RENAMED = {"seed": "published"}


def current_name(kind: str, name):
    """`name`, or its new name with a one-line deprecation warning when it is an old one.

    Saved configs, checkpoints and sweeps that use an old name keep working."""
    if isinstance(name, str) and name in RENAMED:
        import warnings

        warnings.warn(f"{kind} {name!r} is now called {RENAMED[name]!r}; the old name still works "
                      "but will go", Pix3DDeprecation, stacklevel=3)
        return RENAMED[name]
    return name
