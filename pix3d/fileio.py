"""Atomic writes, the project's only way to write results: a reader sees the old file (or
folder) or the new one, never half of one. `atomic_path` for one file (`write_json`,
`save_figure`, `write_bytes_to` build on it), `atomic_dir` for a folder written as a whole
(the synthetic set, a prepared cache).

`filesystem_for` and `local_copy` are how readers reach a sweep's storage, a folder or a URI
(s3://...), through pyarrow as Ray does.

Also the checks every writer shares: free space before a large write (`check_free_space`),
a full disk as one Pix3DError naming the path and the space (`disk_full`), a memmap's blocks
allocated up front (`reserve_blocks`), and an output folder checked writable before any work
starts (`ensure_writable_dir`).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pix3d.errors import Pix3DError, one_line

# errno values that mean "the disk (or quota) is full"
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def free_bytes(path: str | Path) -> int | None:
    """Free bytes on the file system holding `path` (or its nearest existing parent)."""
    path = Path(path).expanduser().absolute()
    for candidate in (path, *path.parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free
            except OSError:
                return None
    return None


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


def disk_full(path: str | Path, needed: int | None = None, *, written: int | None = None) -> Pix3DError:
    """The one-line error for a full disk: the path, the space needed and the space free."""
    free = free_bytes(path)
    if needed is not None:
        need = f"needs {human_bytes(needed)}"
    elif written:
        need = f"needs more than the {human_bytes(written)} written before it filled up"
    else:
        need = "needs more space"
    have = f"{human_bytes(free)} free" if free is not None else "free space unknown"
    return Pix3DError(f"{path}: disk full ({need}, {have}); free some space and retry, nothing was changed")


def check_free_space(path: str | Path, needed: int) -> None:
    """Raise `disk_full` before writing `needed` bytes under `path` when they do not fit.

    Needed before memory-mapped writes: a memmap that runs out of disk dies of SIGBUS,
    which no handler can turn into an error message.
    """
    free = free_bytes(path)
    if free is not None and free < needed:
        raise disk_full(path, needed)


def ensure_writable_dir(path: str | Path, option: str) -> Path:
    """Create `path` (and parents) and prove it writable; a Pix3DError naming `option` if not.

    Called before work starts, so a bad --out fails in a second, not after an epoch.
    """
    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-probe-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full(path) from None
        reason = exc.strerror or type(exc).__name__
        raise Pix3DError(f"{option} {path}: not a writable folder ({reason})") from None
    return path


@contextmanager
def atomic_path(path: str | Path, *, report_as: str | Path | None = None) -> Iterator[Path]:
    """Yield a temp path beside `path`; it replaces `path` when the block succeeds and is
    removed when it raises. The parent folder is created; permissions follow the umask.
    A full disk raises `disk_full` (a Pix3DError naming `report_as`, default `path`: the
    folder a user chose, when the file name is the program's), with the old file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        if is_disk_full(exc):
            written = tmp.stat().st_size if tmp.exists() else None
            raise disk_full(report_as or path, written=written) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _tree_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.exists() else 0


@contextmanager
def atomic_dir(path: str | Path, *, needed: int | None = None, keep_existing: bool = False) -> Iterator[Path]:
    """Yield an empty temp folder beside `path`; when the block succeeds it becomes `path` in
    one rename, and when it raises it is removed and `path` is untouched.

    An existing non-empty `path` is swapped out and removed after the rename, unless
    `keep_existing`: then a `path` that appeared meanwhile (another process wrote the same
    content) is kept and the new folder dropped. A full disk raises `disk_full` naming `path`
    (with `needed` when the caller knows it). Worker processes may write into the folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        if keep_existing and path.exists():
            return
        if path.exists() and any(path.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, old / "previous")
            try:
                os.replace(tmp, path)
            except OSError:
                os.replace(old / "previous", path)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            if path.exists():
                path.rmdir()
            os.replace(tmp, path)
    except BaseException as exc:
        if is_disk_full(exc):
            written = _tree_bytes(tmp)
            shutil.rmtree(tmp, ignore_errors=True)
            raise disk_full(path, needed, written=written) from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | Path, obj, *, indent: int = 1) -> Path:
    """JSON written atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent))
    return Path(path)


def save_figure(fig, path: str | Path, *, dpi: int = 110, close: bool = False) -> Path:
    """A matplotlib figure (anything with `savefig`) written atomically as PNG.

    pix3d does not import matplotlib unless asked to close the figure (`close=True`: it is
    closed whether or not the write succeeds, so a failed plot leaks no memory)."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        if close:
            import matplotlib.pyplot as plt

            plt.close(fig)
    return Path(path)


def is_uri(location: str) -> bool:
    """s3://, gs://, file://... (handed to pyarrow) rather than a local path."""
    return "://" in str(location)


def write_bytes_to(folder: str | Path, name: str, payload: bytes) -> None:
    """`payload` as `folder/name`: atomically on a local path, through pyarrow for a URI
    (Ray's storage may be s3://, gs://, ...; pyarrow comes with Ray)."""
    if is_uri(str(folder)):
        import pyarrow.fs

        fs, sub = pyarrow.fs.FileSystem.from_uri(str(folder))
        fs.create_dir(sub, recursive=True)
        with fs.open_output_stream(f"{sub}/{name}") as stream:
            stream.write(payload)
        return
    with atomic_path(Path(folder) / name) as tmp:
        tmp.write_bytes(payload)


def filesystem_for(location: str | Path):
    """(pyarrow FileSystem, path in it) for a local folder or a URI (s3://, gs://, file://).

    The one place `--storage` becomes something to read through, as Ray does: an S3 URI's
    endpoint and keys come from the standard AWS variables (AWS_ENDPOINT_URL,
    AWS_ACCESS_KEY_ID, ...), never from the command line. A URI that pyarrow cannot open
    (unknown scheme, bad bucket name) is a Pix3DError naming it."""
    import pyarrow.fs  # pyarrow comes with Ray; pix3d itself does not need it elsewhere

    if not is_uri(str(location)):
        return pyarrow.fs.LocalFileSystem(), str(Path(location).expanduser().absolute())
    try:
        fs, path = pyarrow.fs.FileSystem.from_uri(str(location))
    except (ValueError, OSError) as exc:
        raise Pix3DError(f"{location}: not a storage URI pyarrow can open ({one_line(exc)})") from None
    return fs, path.rstrip("/")


@contextmanager
def local_copy(location: str | Path, wanted) -> Iterator[Path]:
    """A local folder holding what `location` holds: the folder itself when it is local, else a
    temp copy of every sub-folder and of the files whose relative path `wanted` accepts
    (removed afterwards). Readers of a sweep's small records (JSON, results) use it so that
    the same code reads a folder and an object store; large files (checkpoints) are left out.
    Pix3DError when nothing is stored under a URI, or the store cannot be read."""
    if not is_uri(str(location)):
        yield Path(location).expanduser()
        return
    import pyarrow.fs  # see filesystem_for

    fs, root = filesystem_for(location)
    try:
        entries = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True, allow_not_found=True))
    except OSError as exc:
        raise Pix3DError(f"{location}: cannot list the storage ({one_line(exc)})") from None
    if not entries:
        raise Pix3DError(f"{location}: no such folder (nothing is stored under it)")
    with tempfile.TemporaryDirectory(prefix="pix3d-storage-") as tmp:
        for entry in entries:
            relative = entry.path[len(root):].lstrip("/")
            target = Path(tmp, relative)
            if entry.type == pyarrow.fs.FileType.Directory:
                target.mkdir(parents=True, exist_ok=True)
            elif entry.type == pyarrow.fs.FileType.File and wanted(relative):
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    with fs.open_input_stream(entry.path) as stream:
                        target.write_bytes(stream.read())
                except OSError as exc:
                    raise Pix3DError(f"{location}/{relative}: cannot read it ({one_line(exc)})") from None
        yield Path(tmp)


def reserve_blocks(path: Path) -> None:
    """Allocate every block of a fresh (sparse) memmap file now, so a full disk is an
    ENOSPC OSError here instead of a SIGBUS while writing pixels through the map."""
    if not hasattr(os, "posix_fallocate"):
        return
    with open(path, "r+b") as fh:
        try:
            os.posix_fallocate(fh.fileno(), 0, os.fstat(fh.fileno()).st_size)
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return  # file system without fallocate: the free-space check must do
            raise
