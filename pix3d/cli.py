"""Shared command-line plumbing: one-line `error:` messages, exit codes, --debug.

Every `python -m ...` entry point in the project uses `ArgumentParser` from here and wraps
its main in `run_cli`, so bad input reads the same everywhere:

    error: <what is wrong, naming the file/entry/option>     (stderr, exit 2 usage / 1 failure)
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, NoReturn, Sequence

from pix3d.errors import Pix3DError


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line `error: ...` on stderr and exit code 2, and a --debug flag."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)
        self.add_argument(
            "--debug", action="store_true", help="show full tracebacks for errors"
        )

    def error(self, message: str) -> NoReturn:  # argparse's hook for usage errors
        sys.stderr.write(f"error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> NoReturn:
    """Run `main(argv)` and turn expected errors into one `error:` line and an exit code.

    Pix3DError (and subclasses) -> its exit_code; KeyboardInterrupt -> 130. With --debug on the
    command line the traceback is shown instead.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        code = main(args)
    except Pix3DError as exc:
        if debug:
            raise
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(exc.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        raise SystemExit(130)
    raise SystemExit(code or 0)
