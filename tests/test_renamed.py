"""The published scheme is called `published` (bins and split); the old name `seed` is still
accepted, with one warning line, so saved configs, checkpoints and sweeps keep working."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pix3d.data.pose import Bins, fit_bins
from pix3d.data.splits import split_indices
from pix3d.errors import Pix3DDeprecation
from pix3d.train import TrainConfig
from pix3d.train.config import config_differences

ANGLES = (np.linspace(0, 359, 40), np.linspace(-10, 60, 40), np.linspace(-30, 30, 40))


def test_old_bin_scheme_name_warns_and_gives_the_published_bins():
    with pytest.warns(Pix3DDeprecation, match="bin scheme 'seed' is now called 'published'"):
        old = fit_bins("seed", *ANGLES)
    new = fit_bins("published", *ANGLES)
    assert old.scheme == new.scheme == "published"
    assert np.array_equal(old.labels(*ANGLES), new.labels(*ANGLES))
    with pytest.warns(Pix3DDeprecation):
        saved = Bins.from_dict({**new.to_dict(), "scheme": "seed"})  # a checkpoint from before
    assert saved.scheme == "published"


def test_old_split_name_warns_and_gives_the_published_split():
    categories = ["chair"] * 30 + ["bed"] * 20
    models = [f"m{i % 7}" for i in range(50)]
    with pytest.warns(Pix3DDeprecation, match="split 'seed' is now called 'published'"):
        old = split_indices("seed", categories, models, seed=3)
    new = split_indices("published", categories, models, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(old, new))


def test_a_saved_config_with_old_names_loads_and_resumes():
    with pytest.warns(Pix3DDeprecation):
        config = TrainConfig.from_dict({"model": "combined_net", "modalities": "rgb", "bins": "seed", "split": "seed"})
    assert (config.bins, config.split) == ("published", "published")
    saved = {**config.to_dict(), "bins": "seed", "split": "seed"}  # as a checkpoint stored it
    assert config_differences(saved, config.to_dict()) == []
    assert config_differences({**saved, "split": "random"}, config.to_dict()) == ["split"]


def test_commands_print_the_warning_as_one_line():
    """In a real process (pytest records warnings itself): one `warning:` line, exit 0."""
    code = ("from pix3d.cli import run_cli; from pix3d.errors import current_name; "
            "run_cli(lambda argv: 0 if current_name('split', argv[0]) == 'published' else 3, ['seed'])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        "warning: split 'seed' is now called 'published'; the old name still works but will go"]
