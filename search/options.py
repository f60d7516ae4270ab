"""`search.run`'s command line and the settings that decide a sweep's trials.

Owns the option parser, the checks on impossible values, and `SweepSettings` with its file
`search_run.json` beside the sweep: written when a sweep starts, read back by `--resume` so a
resumed sweep rebuilds exactly the same trainable (and logs to the same MLflow store).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from pix3d.cli import (ArgumentParser, nonempty_str, nonnegative_float, nonnegative_int, positive_float,
                       positive_int)
from pix3d.errors import Pix3DError, UsageError, one_line
from pix3d.fileio import is_uri, write_bytes_to
from search.grids import GRIDS, SweepKind, get_grid
from pix3d.data.images import CROPS
from pix3d.data.maps import Sources, add_source_options, selectable
from search.storage import experiment_path

SWEEP_SETTINGS_FILE = "search_run.json"
# Settings that decide what the trials are; saved with the sweep so --resume rebuilds them.
# pix3d.train.config.BUDGETS plus "auto" (not imported here: that module imports torch; a test
# keeps the two in step). Fusion grids check their own (relpose.train.BUDGETS).
SWEEP_BUDGETS = ("auto", "quick", "cpu", "paper")
# Beside them, each selectable modality's source under its own name ("normals": "auto", ...).
SWEEP_KEYS = ("grid", "data", "cache", "budget", "seeds", "epochs", "samples", "crop")


def get_args_parser() -> ArgumentParser:
    """The CLI's options (a factory so benchmarks and tests can reuse it)."""
    parser = ArgumentParser(
        prog="python -m search.run",
        description="Run a named grid or search of pose-classifier trainings as Ray Tune trials.",
    )
    parser.add_argument("--grid", help=f"sweep to run: {', '.join(GRIDS)}")
    parser.add_argument("--list", action="store_true", help="list the grids with their trial counts and exit")
    parser.add_argument("--dry-run", action="store_true", help="print the trials it would launch and exit")
    parser.add_argument("--data", default="synthetic", help="Pix3D folder, or 'synthetic' for the built-in set")
    parser.add_argument("--cache", type=Path, default=None, help="cache folder (default $PIX3D_CACHE or ~/.cache/pix3d-pose)")
    add_source_options(parser, lambda m: f"where the cache's {m.name} come from (pix3d.prepare; oracle: rendered "
                                         "from the CAD model, every run and the table say so)")
    parser.add_argument("--crop", default=None, choices=CROPS,
                        help="how the cache is cropped (pix3d.prepare): margin, or published (Pose-from-Shape's "
                             "crop, the notebook's input); default: the grid's (reproduce: published), else margin")
    parser.add_argument("--budget", default="auto",
                        help="auto | quick | cpu | paper (auto = paper on a GPU, quick otherwise; cpu: the smallest "
                             "in which the models learn on a CPU, ~30 min for the ablation on 2 cores)")
    parser.add_argument("--epochs", type=positive_int, default=None, help="override the epochs of the budget and grid")
    parser.add_argument("--seeds", type=nonnegative_int, default=None, help="seeds per configuration (default: the grid's)")
    parser.add_argument("--samples", type=positive_int, default=None,
                        help="a search grid (optuna): how many configurations TPE proposes (default: the grid's)")
    parser.add_argument("--address", default=None, help="join a running Ray cluster: auto | HOST:PORT (default: local Ray)")
    parser.add_argument("--storage", default="ray_results", help="results/checkpoints root: PATH (shared on a cluster) or URI")
    parser.add_argument("--experiment", type=nonempty_str, default=None, help="sweep name under --storage and in MLflow (default: the grid name)")
    parser.add_argument("--mlflow-uri", default=None, help="MLflow tracking URI (default sqlite:///<cwd>/mlflow.db)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    parser.add_argument("--cpus-per-trial", type=positive_float, default=1.0, help="CPUs per trial (sets torch threads)")
    parser.add_argument("--gpus-per-trial", type=nonnegative_float, default=0.0, help="GPUs per trial; fractions pack trials on one GPU")
    parser.add_argument("--max-concurrent", type=positive_int, default=None, help="at most this many trials at once")
    parser.add_argument("--max-failures", type=nonnegative_int, default=2, help="retries of a crashed trial from its last checkpoint")
    parser.add_argument("--resume", action="store_true", help="restore the interrupted sweep <storage>/<experiment>")
    parser.add_argument("--skip-missing-weights", action="store_true",
                        help="fusion grids: without the ImageNet weights file, run only the weights=scratch trials")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="auto: trials with GPUs must train on CUDA (fail at once if not), others on the CPU; "
                             "cpu: train on the CPU even when given GPUs (a deliberate simulation, recorded per run)")
    parser.add_argument("--gpu-memory-gib", type=float, default=None,
                        help="GPU memory (GiB) to plan the packing of trials against (default $PIX3D_GPU_MEMORY_GIB, "
                             "else what the cluster's GPUs report)")
    return parser


@dataclass(frozen=True)
class SweepSettings:
    """What decides the trials of a sweep (saved beside it for --resume)."""

    grid: str
    data: str
    cache: str | None
    budget: str
    seeds: int | None
    epochs: int | None
    samples: int | None = None  # a search's size (None: the grid's num_samples)
    crop: str | None = None        # the cache's crop (pix3d.data.images.CROPS); None: the grid's, else margin
    sources: Sources = field(default_factory=Sources)  # the cache's sources (pix3d.prepare)

    def to_dict(self) -> dict:
        """The saved form: SWEEP_KEYS plus one key per selectable modality (its source)."""
        return {**{k: getattr(self, k) for k in SWEEP_KEYS}, **self.sources}

    @classmethod
    def from_dict(cls, saved: dict) -> "SweepSettings":
        """Settings read back from `to_dict`'s form (a modality without a saved source: auto)."""
        return cls(**{k: saved.get(k) for k in SWEEP_KEYS},
                   sources=Sources({m.name: saved.get(m.name) for m in selectable()}))


def check_options(args: argparse.Namespace) -> None:
    """Reject impossible numbers before anything starts."""
    if args.seeds is not None and args.seeds < 0:
        raise UsageError(f"--seeds must be >= 0, got {args.seeds}")
    if args.epochs is not None and args.epochs < 1:
        raise UsageError(f"--epochs must be >= 1, got {args.epochs}")
    if not args.cpus_per_trial > 0:
        raise UsageError(f"--cpus-per-trial must be > 0, got {args.cpus_per_trial}")
    if args.gpus_per_trial < 0:
        raise UsageError(f"--gpus-per-trial must be >= 0, got {args.gpus_per_trial}")
    if args.gpus_per_trial > 1 and not float(args.gpus_per_trial).is_integer():
        raise UsageError(f"--gpus-per-trial above 1 must be a whole number, got {args.gpus_per_trial}")
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise UsageError(f"--max-concurrent must be >= 1, got {args.max_concurrent}")
    if args.max_failures < 0:
        raise UsageError(f"--max-failures must be >= 0, got {args.max_failures}")
    if args.device == "cuda" and not args.gpus_per_trial > 0:
        raise UsageError("--device cuda needs --gpus-per-trial > 0 (trials without GPUs train on the CPU)")
    if args.gpu_memory_gib is not None and not args.gpu_memory_gib > 0:
        raise UsageError(f"--gpu-memory-gib must be > 0, got {args.gpu_memory_gib}")
    if args.budget not in SWEEP_BUDGETS:
        raise UsageError(f"--budget must be {', '.join(SWEEP_BUDGETS)}, got {args.budget!r}")


def experiment_name(args: argparse.Namespace) -> str:
    """The sweep's name (--experiment, else the grid's); a grid or a resumed name is required."""
    if not args.grid and not (args.resume and args.experiment):
        raise UsageError("--grid is required (or --resume --experiment NAME); see --list")
    if args.grid:
        get_grid(args.grid)  # unknown names fail here, listing the known ones
    experiment = args.experiment or args.grid
    if "/" in experiment or experiment in (".", ".."):
        raise UsageError(f"--experiment {experiment!r}: must be a plain name")
    return experiment


def read_settings(path: str) -> dict | None:
    """The settings saved in sweep folder `path` (local or a URI), or None when there are none."""
    if is_uri(path):
        import pyarrow.fs

        fs, sub = pyarrow.fs.FileSystem.from_uri(path)
        try:
            with fs.open_input_stream(f"{sub}/{SWEEP_SETTINGS_FILE}") as stream:
                return json.loads(stream.read().decode())
        except (OSError, FileNotFoundError):
            return None
    file = Path(path) / SWEEP_SETTINGS_FILE
    if not file.exists():
        return None
    try:
        saved = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise Pix3DError(f"--resume: {file} is torn or foreign ({one_line(exc)}); nothing was changed") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("grid"), str):
        raise Pix3DError(f"--resume: {file} is not a search.run settings file (no grid); nothing was changed")
    return saved


def write_settings(path: str, settings: SweepSettings, command: str, mlflow_uri: str | None = None) -> None:
    """Save the sweep settings atomically (temp file + rename; a plain write for URIs).

    `mlflow_uri` is the store the sweep's tracking callback logs to: a resumed sweep keeps
    logging there (Tune restores the callback), so its closing table is read from there too."""
    payload = json.dumps({**settings.to_dict(), "command": command, "mlflow_uri": mlflow_uri}, indent=2).encode()
    write_bytes_to(path, SWEEP_SETTINGS_FILE, payload)


def settings_for(args: argparse.Namespace, storage: str, experiment: str) -> SweepSettings:
    """This run's settings; with --resume, those saved with the sweep win (and without
    --grid there must be some)."""
    # Absolute paths, so that --resume works from any working folder.
    data = args.data if args.data == "synthetic" else str(Path(args.data).expanduser().resolve())
    cache = str(args.cache.expanduser().resolve()) if args.cache else None
    fresh = SweepSettings(args.grid, data, cache, args.budget, args.seeds, args.epochs, args.samples,
                          getattr(args, "crop", None), Sources.from_args(args))
    if not args.resume:
        return fresh
    sweep_path = experiment_path(storage, experiment)
    saved = read_settings(sweep_path)
    settings = fresh if saved is None else SweepSettings.from_dict(saved)
    if saved is not None and args.grid and args.grid != settings.grid:
        raise UsageError(f"--resume: sweep {experiment!r} ran grid {settings.grid!r}, not {args.grid!r}")
    if settings.grid is None:
        raise UsageError(f"--resume: no {SWEEP_SETTINGS_FILE} in {sweep_path}; pass --grid and the original options")
    if saved is not None and args.samples is not None and args.samples != settings.samples:
        grid = get_grid(settings.grid)
        grid.with_samples(args.samples)  # an exhaustive grid refuses --samples, here as on a new sweep
        size = settings.samples or grid.size()
        if args.samples < size:
            raise UsageError(f"--samples {args.samples}: the search already asked for {size} trials; a resumed "
                             f"search can grow (--samples above {size}), not shrink")
        # Grown: the restored sweep asks the same Optuna study for more (search.storage.grow_search).
        settings = replace(settings, samples=args.samples)
    return settings


def sized_grid(grid: SweepKind, samples: int | None) -> SweepKind:
    """`grid` with `samples` configurations when it is a search; --samples on a grid is refused."""
    return grid if samples is None else grid.with_samples(samples)
