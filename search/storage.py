"""Where a sweep's results live: `<storage>/<experiment>/`, a local folder or a URI.

Owns resolving `--storage` (absolute, created and proven writable, or a URI unchanged), the
sweep folder's path, and whether that folder may be used: a new sweep needs it free, a
`--resume` needs a whole Tune sweep of the same trials there. On a cluster the storage must
be shared by every node (NFS, s3://). A URI is reached through pyarrow as Ray reaches it
(pix3d.fileio.filesystem_for), its endpoint and keys from the standard AWS variables; its
resume check reads a temp copy of the sweep's small records (no checkpoints).
"""

from __future__ import annotations

import argparse
import uuid
from pathlib import Path

from pix3d.errors import Pix3DError, UsageError, one_line
from pix3d.fileio import atomic_path, ensure_writable_dir, filesystem_for, is_uri
from search.kinds import SweepKind


def resolve_storage(storage: str) -> str:
    """Absolute storage path (created, checked writable) or a URI unchanged (checked writable:
    a missing bucket or bad keys fail now, not after the data is prepared)."""
    if is_uri(storage):
        check_writable_uri(storage)
        return storage
    return str(ensure_writable_dir(Path(storage).expanduser(), "--storage").resolve())


def check_writable_uri(storage: str) -> None:
    """Write and remove one probe object under `storage`; Pix3DError naming it if that fails."""
    fs, root = filesystem_for(storage)
    probe = f"{root}/.write-probe-{uuid.uuid4().hex[:8]}"
    try:
        with fs.open_output_stream(probe) as stream:
            stream.write(b"ok")
        fs.delete_file(probe)
    except OSError as exc:
        raise Pix3DError(f"--storage {storage}: not a writable storage ({one_line(exc)}); check the bucket "
                         "and the AWS_* variables (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...)") from None


def storage_for(args: argparse.Namespace) -> str:
    """The sweep's storage root; a dry run or a resume creates nothing (a resume of nothing
    must leave nothing behind)."""
    if is_uri(args.storage) and args.dry_run:
        return args.storage  # a dry run touches no storage, not even with a probe
    if (args.dry_run or args.resume) and not is_uri(args.storage):
        return str(Path(args.storage).expanduser().resolve())
    return resolve_storage(args.storage)


def experiment_path(storage: str, experiment: str) -> str:
    """The sweep's folder (or URI) under `storage`."""
    return f"{storage.rstrip('/')}/{experiment}"


def check_sweep_folder(sweep_path: str, grid: SweepKind, space: dict, *, resume: bool) -> None:
    """A new sweep must not land on an old one; a resumed one must find a whole sweep of
    `grid`'s trials (`space`) to restore."""
    from ray import tune

    if resume and not tune.Tuner.can_restore(sweep_path):
        raise Pix3DError(f"--resume: no Tune sweep to restore at {sweep_path}")
    if not resume and tune.Tuner.can_restore(sweep_path):
        raise UsageError(f"a sweep already exists at {sweep_path}; add --resume, or pick another --experiment")
    if resume:
        # Before Tuner.restore: a torn state would be restored as a different sweep, and a
        # crafted pickle would run (read through pyarrow.fs: a local folder or a URI alike).
        from search.resume_check import verify_resume_state

        verify_resume_state(sweep_path, grid.known_trials(space))


SEARCH_STATE_GLOB = "search_gen_state-*.json"  # Tune's saved search state (a cloudpickle, despite .json)


def grow_search(sweep_path: str, samples: int) -> int:
    """Let a restored search propose up to `samples` trials: Tune keeps a search's size in its
    saved search state (SearchGenerator's `total_samples`), which `Tuner.restore` brings back
    as it was; the searcher itself (OptunaSearch on the persisted study) has no size. Rewrites
    the newest state (atomically) and returns the size it had. Local sweep folders only."""
    import ray.cloudpickle as cloudpickle

    if is_uri(sweep_path):
        raise UsageError(f"--samples with --resume: growing a search stored at {sweep_path} needs a local folder")
    states = sorted(Path(sweep_path).glob(SEARCH_STATE_GLOB), key=lambda p: p.stat().st_mtime)
    if not states:
        raise Pix3DError(f"--samples with --resume: no saved search state ({SEARCH_STATE_GLOB}) in {sweep_path}")
    state = cloudpickle.loads(states[-1].read_bytes())
    before = int(state["total_samples"])
    if samples > before:
        state.update(total_samples=samples, finished=False)
        with atomic_path(states[-1]) as tmp:
            tmp.write_bytes(cloudpickle.dumps(state))
    return before
