"""One sweep per folder: a lock file in the sweep's folder, held while `search.run` runs it.

Two sweeps writing one `<storage>/<experiment>/` mix their trials and states (seen: both exit
0, and `analysis.sync` finds half the trials). The lock is `.pix3d-sweep.lock` in the sweep's
folder, created with O_CREAT|O_EXCL (atomic on local disks and on NFSv3+), holding JSON: the
holder's host, pid, start time and command. A second sweep is refused in one line naming
the holder; a lock whose holder is gone (same host, pid no longer running) is taken over
with one warning line; a holder on another host cannot be checked from here, so its lock is
only removed by hand. On a URI (s3://, gs://) there is no exclusive create through
pyarrow: the lock is then advisory (checked, then written), which catches a second sweep
started while the first runs but not two started within the same second (docs/robustness.md).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pix3d.errors import Pix3DError, one_line
from pix3d.fileio import is_uri

LOCK_FILE = ".pix3d-sweep.lock"


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    started: str
    command: str = ""

    def describe(self) -> str:
        return f"host {self.host}, pid {self.pid}, started {self.started}"

    def gone(self) -> bool:
        """True only when the holder is surely not running: this host, and no such process."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        return False


def this_process(command: str = "") -> Holder:
    return Holder(socket.gethostname(), os.getpid(), time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                  command or " ".join(sys.argv))


def _parse(text: str, where: str) -> Holder | None:
    """The holder a lock file names; None when it is torn (a holder that died while writing it)."""
    try:
        data = json.loads(text)
        return Holder(str(data["host"]), int(data["pid"]), str(data["started"]), str(data.get("command", "")))
    except (ValueError, KeyError, TypeError):
        return None


class SweepLock:
    """Held for one sweep folder; `release` removes the file only while it is still this one's."""

    def __init__(self, sweep_path: str, holder: Holder):
        self.sweep_path = sweep_path
        self.holder = holder
        self.path = f"{sweep_path.rstrip('/')}/{LOCK_FILE}"
        # Made for the lock (a new sweep): removed again when nothing else was written into it,
        # so that a refused start (a --resume of nothing) leaves nothing behind.
        self.made: list[Path] = []
        if not is_uri(sweep_path):
            folder = Path(sweep_path)
            while not folder.exists():
                self.made.append(folder)
                folder = folder.parent

    def release(self) -> None:
        try:
            current = _read(self.path)
            if current is not None and _parse(current, self.path) == self.holder:
                _remove(self.path)
            for folder in self.made:
                folder.rmdir()  # only when empty, innermost first
        except OSError:
            pass  # not empty, gone or unwritable: nothing more to release

    def __enter__(self) -> "SweepLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire(sweep_path: str, command: str = "", warn: Callable[[str], None] | None = None) -> SweepLock:
    """Take the lock of `sweep_path` (created if missing) or raise Pix3DError naming its holder."""
    warn = warn or (lambda line: sys.stderr.write(line + "\n"))
    holder = this_process(command)
    lock = SweepLock(sweep_path, holder)
    payload = json.dumps(holder.__dict__, indent=1).encode()
    for _ in range(3):  # a stale lock taken over, then one more try; a torn one read again
        if _create_exclusive(lock.path, payload):
            return lock
        text = _read(lock.path)
        if text is None:
            continue  # released between our create and read
        other = _parse(text, lock.path)
        if other is None:
            # Being written this instant, or torn by a holder that died mid-write: look again.
            time.sleep(0.2)
            text = _read(lock.path)
            other = _parse(text, lock.path) if text is not None else None
            if text is not None and other is None:
                warn(f"warning: {lock.path}: a torn lock file (its holder died while writing it); taking it over")
                _remove(lock.path)
                continue
            if other is None:
                continue
        if other.gone():
            warn(f"warning: {lock.path}: taking over the lock of a sweep that is gone ({other.describe()})")
            _remove(lock.path)
            continue
        where = "this host" if other.host == socket.gethostname() else f"host {other.host}"
        raise Pix3DError(
            f"{sweep_path} is in use by another sweep ({other.describe()}): one sweep per folder; "
            f"wait for it, use another --experiment, or if that sweep is gone from {where}, delete {lock.path}")
    raise Pix3DError(f"{lock.path}: could not take the sweep lock (it keeps changing); is another sweep starting?")


# -------------------------------------------------------------- the store: a path or a URI


def _create_exclusive(path: str, payload: bytes) -> bool:
    """Write `payload` to a new file at `path`; False when it already exists."""
    if is_uri(path):
        if _read(path) is not None:
            return False
        import pyarrow.fs  # only for URIs

        fs, sub = pyarrow.fs.FileSystem.from_uri(path)
        fs.create_dir(sub.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(sub) as stream:
            stream.write(payload)
        return True
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    except OSError as exc:
        raise Pix3DError(f"{path}: cannot create the sweep lock ({one_line(exc)})") from None
    try:
        os.write(fd, payload)
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        os.unlink(path)
        raise Pix3DError(f"{path}: cannot write the sweep lock ({one_line(exc)})") from None
    os.close(fd)
    return True


def _read(path: str) -> str | None:
    if is_uri(path):
        import pyarrow.fs  # only for URIs

        fs, sub = pyarrow.fs.FileSystem.from_uri(path)
        try:
            with fs.open_input_stream(sub) as stream:
                return stream.readall().decode("utf-8", errors="replace")
        except (FileNotFoundError, OSError):
            return None
    try:
        return Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return None


def _remove(path: str) -> None:
    if is_uri(path):
        import pyarrow.fs  # only for URIs

        fs, sub = pyarrow.fs.FileSystem.from_uri(path)
        fs.delete_file(sub)
        return
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
