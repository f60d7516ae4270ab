"""Run a command's `main` in the test process, as `python -m <module>` would run it.

A child interpreter costs seconds (its own import of torch); a test that checks what a
command prints and returns needs none of that. `run_module` goes through `pix3d.cli.run_cli`,
the same wrapper `python -m` uses, so errors become the same one `error:` line and exit code.
Commands that start processes of their own (data preparation workers, Ray) keep a child
interpreter in their tests.
"""

from __future__ import annotations

import importlib
import io
import subprocess
from contextlib import redirect_stderr, redirect_stdout

from pix3d.cli import run_cli


def run_module(module: str, *args) -> subprocess.CompletedProcess:
    """`python -m module *args` in this process: its exit code, stdout and stderr."""
    main = importlib.import_module(module).main
    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            run_cli(main, argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        else:  # run_cli always exits; kept for a main that returns through it
            code = 0
    return subprocess.CompletedProcess([module, *argv], code, out.getvalue(), err.getvalue())
