"""Adding a modality is one row of the modality table: a fifth one (depth, from a `depth/`
folder mirroring `img/`), registered from outside the project through PIX3D_MODALITIES, gets
its `--depth` option, its cache channel, trials in a real sweep and a column of the table with
no other edit. Also: sources are one mapping from the command line to the cache key and the
saved sweep, and a modality subset is parsed once (pix3d.constants.Modalities)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pix3d.constants import PLUGINS_ENV, Modalities
from pix3d.data.maps import Sources, add_source_options
from pix3d.errors import UsageError
from pix3d.train.config import TrainConfig
from search.options import SweepSettings
from tests.test_search import cli_env, make_tiny_dataset

DEPTH_ENV = {PLUGINS_ENV: "tests.depth_modality"}


def run(module: str, *args: str, cwd: Path, env: dict | None = None, timeout: float = 120):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=dict(cli_env(), **(env or DEPTH_ENV)),
                          capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------ one mapping, parsed once


def test_sources_are_one_mapping_from_the_options_to_the_saved_sweep():
    parser = argparse.ArgumentParser()
    add_source_options(parser, lambda m: f"where {m.name} come from")
    sources = Sources.from_args(parser.parse_args(["--normals", "oracle"]))
    assert dict(sources) == {"boundaries": "auto", "normals": "oracle"} and sources.oracle == ["normals"]
    with pytest.raises(UsageError, match=r"--boundaries must be one of auto, files, predict, canny, oracle"):
        Sources(boundaries="none")
    with pytest.raises(UsageError, match=r"no source can be chosen for rgb"):
        Sources(rgb="files")
    # A sweep saved before sources were one mapping (its own keys, null = auto) resumes with them.
    old = {"grid": "smoke", "data": "synthetic", "cache": None, "budget": "quick", "seeds": 1, "epochs": None,
           "samples": None, "normals": "oracle", "boundaries": None, "crop": None, "command": "x"}
    settings = SweepSettings.from_dict(old)
    assert dict(settings.sources) == {"boundaries": "auto", "normals": "oracle"}
    assert set(settings.to_dict()) == set(old) - {"command"}
    assert SweepSettings.from_dict(settings.to_dict()) == settings


def test_a_subset_is_parsed_once_and_knows_its_channels():
    config = TrainConfig(modalities="normals+rgb")
    subset = config.modalities
    assert isinstance(subset, Modalities) and subset == ("rgb", "normals") and subset.key == "rgb+normals"
    assert subset.channels == (0, 1, 2, 5, 6, 7) and subset.spans == ((0, 3), (3, 6))
    assert Modalities(subset) is subset  # below the config nothing parses it again
    assert config.to_dict()["modalities"] == ["rgb", "normals"]  # checkpoints and json hold plain names


def test_a_modality_module_that_does_not_load_is_one_error_line(tmp_path):
    proc = run("pix3d.prepare", "--help", cwd=tmp_path, env={PLUGINS_ENV: "tests.no_such_module"})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: PIX3D_MODALITIES: cannot read MODALITY_ROWS of 'tests.no_such_module'")


# ------------------------------------------------------------------------- a fifth modality


def write_depth_maps(folder: Path) -> int:
    """depth/ mirroring img/: each entry's mask inverted (a real PNG per photo, whose
    channel in the cache must then run against the mask channel)."""
    entries = json.loads((folder / "pix3d.json").read_text())
    for entry in entries:
        mask = np.asarray(Image.open(folder / entry["mask"]).convert("L"))
        target = folder / "depth" / Path(entry["img"]).relative_to("img").with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(255 - mask).save(target)
    return len(entries)


@pytest.mark.slow  # three CLI runs, one a 10-trial sweep on its own Ray: ~2-3 min on a loaded 2-core machine
def test_a_fifth_modality_from_files_runs_through_prepare_a_sweep_and_the_table(tmp_path):
    folder, cache = make_tiny_dataset(tmp_path)
    n = write_depth_maps(folder)

    help_text = run("pix3d.prepare", "--help", cwd=tmp_path).stdout
    assert "--depth {auto,files,none}" in help_text

    prepared = run("pix3d.prepare", "--data", str(folder), "--size", "64", "--cache", str(cache),
                   "--depth", "files", "--no-progress", cwd=tmp_path)
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    assert "depth from files" in prepared.stdout and "x 9 channels x 64 px" in prepared.stdout
    path = Path(prepared.stdout.splitlines()[-1].removeprefix("cache ").split(":")[0])  # its last line
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["channels"]["depth"] == [8, 9] and manifest["available"]["depth"]
    assert manifest["requested_sources"] == {"boundaries": "auto", "normals": "auto", "depth": "files"}
    images = np.load(path / "images.npy", mmap_mode="r")
    assert images.shape == (n, 9, 64, 64)
    seen = (images[:, 3] > 0) | (images[:, 8] > 0)  # the photo, not the crop's padding
    assert np.corrcoef(images[:, 8][seen].astype(float), images[:, 3][seen].astype(float))[0, 1] < -0.9

    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep = run("search.run", "--grid", "ablation", "--seeds", "1", "--epochs", "1", "--data", str(folder),
                "--cache", str(cache), "--budget", "quick", "--depth", "files", "--storage", str(tmp_path / "results"),
                "--mlflow-uri", mlflow_uri, cwd=tmp_path, timeout=600)
    assert sweep.returncode == 0, sweep.stderr[-3000:] + sweep.stdout[-3000:]
    assert f"cache hit: {path}" in sweep.stdout  # --depth reached the cache key as prepare's did
    assert "sweep ablation: 10 trials, 0 failed" in sweep.stdout  # 2 models x 5 prefixes of the table
    saved = json.loads((tmp_path / "results" / "ablation" / "search_run.json").read_text())
    assert saved["depth"] == "files" and saved["normals"] == "auto"

    table = run("analysis.table", "--experiment", "ablation", "--mlflow-uri", mlflow_uri, "--no-log",
                "--out", str(tmp_path / "table"), cwd=tmp_path)
    assert table.returncode == 0, table.stderr[-3000:]
    lines = (tmp_path / "table" / "table.md").read_text().splitlines()
    header = next(line for line in lines if "RGB+Mask" in line)
    assert header.rstrip(" |").endswith("RGB+Mask+Boundaries+Normals+Depth")
    rows = [line for line in lines if line.startswith(("| combined_net", "| separate_net"))]
    assert len(rows) == 2 and all("(n=1)" in row.split("|")[-2] for row in rows)  # each model's depth cell
