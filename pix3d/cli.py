"""Shared command-line plumbing: one-line `error:` messages, exit codes, --debug.

Every `python -m ...` entry point in the project uses `ArgumentParser` from here and wraps
its main in `run_cli`, so bad input reads the same everywhere:

    error: <what is wrong, naming the file/entry/option>     (stderr, exit 2 usage / 1 failure)
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from typing import Callable, NoReturn, Sequence

from pix3d.errors import Pix3DError, one_line


_OURS = "\u200b"  # marks the messages of the number types below (zero-width, never printed)


class DefaultsOnceFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default said once: argparse's `(default: X)` only where the help text does
    not already say its default, and never for a flag (off) or an unset (None) default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False) or action.default is argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line `error: ...` on stderr and exit code 2, and a --debug flag."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsOnceFormatter)
        super().__init__(*args, **kwargs)
        self.add_argument(
            "--debug", action="store_true", help="show full tracebacks for errors"
        )

    def error(self, message: str) -> NoReturn:  # argparse's hook for usage errors
        option, sep, rest = message.partition(": " + _OURS)
        if sep and option.startswith("argument "):
            message = f"{option[len('argument '):].split('/')[0]} {rest}"
        message = message.replace(_OURS, "")
        sys.stderr.write(f"error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> NoReturn:
    """Run `main(argv)` and turn expected errors into one `error:` line and an exit code.

    Pix3DError (and subclasses) -> its exit_code; an OSError (a path the user named that
    cannot be read or written) and an MLflow store error (a bad --mlflow-uri) -> exit 1;
    KeyboardInterrupt -> 130. With --debug on the command line the traceback is shown instead.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    warnings.formatwarning = _one_line_warning
    try:
        code = main(args)
    except Pix3DError as exc:
        if debug:
            raise
        sys.stderr.write(f"error: {one_line(exc, limit=2000)}\n")
        raise SystemExit(exc.exit_code)
    except OSError as exc:
        if debug:
            raise
        sys.stderr.write(f"error: {_describe_os_error(exc)}\n")
        raise SystemExit(1)
    except Exception as exc:
        if debug or not _is_store_error(exc):
            raise
        sys.stderr.write(f"error: MLflow store: {one_line(exc)}\n")
        raise SystemExit(1)
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        raise SystemExit(130)
    raise SystemExit(code or 0)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings as `warning: <message>` lines, like the `error:` lines (no source echo)."""
    return f"warning: {message}\n"


def _describe_os_error(exc: OSError) -> str:
    """`PATH: reason` for a file error; a full disk also says how much space is free."""
    from pix3d.fileio import disk_full, is_disk_full

    if is_disk_full(exc) and exc.filename is not None:
        return one_line(disk_full(exc.filename))
    return one_line(exc)


def _is_store_error(exc: BaseException) -> bool:
    """An error raised by MLflow (or its SQL layer) on a tracking store the user named."""
    module = type(exc).__module__ or ""
    return module.split(".")[0] in ("mlflow", "sqlalchemy", "sqlite3")


# ---------------------------------------------------------------------------- argparse types
# For `type=`: argparse reports an ArgumentTypeError as `argument --x: MSG`; ArgumentParser.error
# rewrites ours (marked _OURS) to `--x must be ..., got ...`, the house style, exit 2.

def _number(kind, text: str, *, low: float | None, strict: bool, what: str):
    try:
        value = kind(text)
    except (TypeError, ValueError):
        kind_name = "a number" if kind is float else "an integer"
        raise argparse.ArgumentTypeError(f"{_OURS}must be {kind_name}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{_OURS}must be a finite number, got {text}")
    if low is not None and (value <= low if strict else value < low):
        raise argparse.ArgumentTypeError(f"{_OURS}must be {what}, got {value!r}")
    return value


def positive_float(text: str) -> float:
    """A finite float > 0."""
    return _number(float, text, low=0, strict=True, what="positive")


def nonnegative_float(text: str) -> float:
    """A finite float >= 0."""
    return _number(float, text, low=0, strict=False, what="a number >= 0")


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _number(int, text, low=1, strict=False, what="positive")


def nonnegative_int(text: str) -> int:
    """An integer >= 0."""
    return _number(int, text, low=0, strict=False, what="an integer >= 0")


def nonempty_str(text: str) -> str:
    """A name that is not empty or blank."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{_OURS}must be a non-empty name, got {text!r}")
    return text
