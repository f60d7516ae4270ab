"""How a sweep ends when something outside it goes wrong: a signal to the driver, a full disk.

SIGINT and SIGTERM to the `search.run` driver stop the sweep cleanly. Without this, SIGTERM hit Ray's native handler in the driver (a "SIGTERM received" stack dump,
exit 134) and SIGINT printed Tune's hint for the Python API. Here both signals are one
handler: while Tune's loop runs it asks Tune for its own graceful stop (the handler Tune
registers for SIGUSR1: the loop ends, the experiment state is saved), otherwise it raises
KeyboardInterrupt; a second signal always raises. The command then ends with one `error:`
line giving the `--resume` command, exit 130 (SIGINT) or 143 (SIGTERM), the shell's codes.

A full disk: Tune writes a failed trial's exception to `error.pkl` from the driver, and on a
full disk leaves it empty or cut; building the ResultGrid then died in `cloudpickle.loads`
(EOFError, a traceback). `ErrorFileCheck` looks at each error.pkl as Tune writes it (the
opcode walk of analysis.tune_files, nothing loaded) and, when it is torn, points Tune at the
error.txt beside it instead; `check_storage_after` then turns a full disk under the sweep
into one `error:` line naming the path and the space free.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ray.tune import Callback

from analysis.tune_files import pickle_problem
from pix3d.errors import Pix3DError, one_line
from pix3d.fileio import free_bytes, human_bytes, is_disk_full, is_uri

HANDLED = (signal.SIGINT, signal.SIGTERM)
# Tune's own lines about an interrupted run name the Python API (Tuner.restore); ours names the command.
_TUNE_HINTS = ("Stop signal received", "Experiment has been interrupted")
_TUNE_LOGGERS = ("ray.tune.tune", "ray.tune.analysis.experiment_analysis")


class Interrupted(Pix3DError):
    """The sweep was stopped by a signal; exit 128 + the signal's number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + int(signum)


class _DropTuneHints(logging.Filter):
    def __init__(self, guard: "SignalGuard"):
        super().__init__()
        self.guard = guard

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        if text.startswith(_TUNE_HINTS):
            return False
        # Stopped before a trial reported: Tune lists each one's missing result.json; the
        # resume line says it all.
        return not (self.guard.received and text.startswith("Failed to fetch metrics"))


class SignalGuard:
    """Installed by `search.run` for its whole run; `fitting()` around `Tuner.fit`."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._fitting = False
        self._previous: dict = {}

    def install(self) -> None:
        """(Re)install the handlers: again after ray.init, which puts Ray's own in place."""
        for signum in HANDLED:
            previous = signal.signal(signum, self._handle)
            self._previous.setdefault(signum, previous)

    def restore(self) -> None:
        """The handlers from before the first install (a library caller keeps its own)."""
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        first = self.received is None
        if first:
            self.received = signum
        tune_stop = signal.getsignal(signal.SIGUSR1) if self._fitting else None
        if first and callable(tune_stop):
            tune_stop(signum, frame)  # Tune's graceful stop: finish the step, save the state, return
            return
        raise KeyboardInterrupt

    @contextmanager
    def fitting(self) -> Iterator[None]:
        """Around `Tuner.fit`: signals become Tune's graceful stop, Tune's API hints are dropped."""
        # Tune would replace our SIGINT handler with its own; it keeps SIGUSR1's, which we call.
        previous = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        hints = _DropTuneHints(self)
        loggers = [logging.getLogger(name) for name in _TUNE_LOGGERS]
        for logger in loggers:
            logger.addFilter(hints)
        self._fitting = True
        try:
            yield
        finally:
            self._fitting = False
            for logger in loggers:
                logger.removeFilter(hints)
            if previous is None:
                os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
            else:
                os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = previous

    def interrupted(self, resume_command: str | None) -> Interrupted:
        """The error that ends the command; `resume_command` None: no sweep state to resume yet."""
        signum = self.received or signal.SIGINT
        name = signal.Signals(signum).name
        if resume_command is None:
            return Interrupted(f"interrupted by {name} before the sweep started; nothing was run", signum)
        return Interrupted(f"interrupted by {name}: the sweep stopped and its state is saved; "
                           f"resume with: {resume_command}", signum)


# Below this much free space a sweep's storage counts as full (Tune's own small writes fail).
FULL_BELOW_BYTES = 1 << 20


class ErrorFileCheck(Callback):
    """A torn error.pkl (a full disk as Tune wrote it) is not handed to the ResultGrid."""

    def __init__(self) -> None:
        self.torn: list[str] = []

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        path = trial.pickled_error_file
        if not path:
            return
        try:
            data = Path(path).read_bytes()
        except OSError:
            data = b""
        if pickle_problem(data):
            self.torn.append(path)
            # Tune then reads error.txt (get_error) for this trial's exception.
            trial.run_metadata.pickled_error_filename = None


def check_storage_after(sweep_path: str, torn: list[str], resume_command: str) -> None:
    """After the sweep: a full disk under it (or an error file it left torn) is one error naming
    the path; what failed in each trial is in its error.txt, and finished trials are kept."""
    if is_uri(sweep_path):
        return
    free = free_bytes(sweep_path)
    if free is not None and free < FULL_BELOW_BYTES:
        raise Pix3DError(f"{sweep_path}: disk full during the sweep ({human_bytes(free)} free); finished trials "
                         f"are kept: free some space, then resume with: {resume_command}")
    if torn:
        raise Pix3DError(f"{torn[0]}: Tune could not write this trial's error whole (a full disk or an I/O "
                         f"error; its error.txt says what failed); resume with: {resume_command}")


def full_disk_symptom(exc: BaseException | None) -> BaseException | None:
    """What a full disk under the sweep looks like from the driver, found in `exc`'s chain (Tune
    may wrap it): a torn error.pkl read back (EOFError, UnpicklingError) or an ENOSPC."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (EOFError, pickle.UnpicklingError)) or is_disk_full(exc):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def sweep_fault(sweep_path: str, exc: BaseException, torn: list[str], resume_command: str) -> Pix3DError:
    """The one line for a sweep that a full disk (or a torn error file) ended."""
    try:
        check_storage_after(sweep_path, torn, resume_command)
    except Pix3DError as fault:
        return fault
    symptom = full_disk_symptom(exc) or exc
    return Pix3DError(f"{sweep_path}: the sweep ended on a file error ({one_line(symptom)}); finished trials "
                      f"are kept: resume with: {resume_command}")
