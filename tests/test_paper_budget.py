"""The paper budget end to end: `python -m pix3d.train --budget paper` at 224 px, every
modality (rgb, mask, boundaries, normals), both published models, on a tiny built-in set.

Only the size of the run is cut (1 epoch, 8 training images); the image size, batch size,
models and modalities are the paper's. Slow: a 224 px step of combined_net on a CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pix3d.render.synthetic import SyntheticConfig, generate

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory) -> Path:
    # 70 images: ~10 per category, so the published split holds out one of each.
    root = tmp_path_factory.mktemp("paper_budget") / "set"
    generate(root, SyntheticConfig(n=70, seed=11, size=96), workers=2, progress=False, log=None)
    return root


@pytest.mark.parametrize("model", ["combined_net", "separate_net"])
def test_paper_budget_trains_every_modality_at_224(tiny_set, tmp_path, model):
    out = tmp_path / "run"
    cache = tiny_set.parent / "cache"  # shared: the second model reuses the prepared cache
    env = {**os.environ, "PIX3D_CACHE": str(cache)}
    done = subprocess.run(
        [sys.executable, "-m", "pix3d.train", "--budget", "paper", "--model", model,
         "--modalities", "rgb,mask,boundaries,normals", "--data", str(tiny_set),
         "--cache", str(cache), "--epochs", "1", "--max-train-images", "8", "--threads", "2",
         "--device", "cpu", "--out", str(out), "--no-progress"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "224 px" in done.stdout and "done in" in done.stdout
    history = json.loads((out / "history.json").read_text())
    config = history["config"]
    assert config["model"] == model and config["image_size"] == 224 and config["batch_size"] == 10
    assert list(config["modalities"]) == ["rgb", "mask", "boundaries", "normals"]
    assert history["data"]["sources"]["normals"] == "files"
    (epoch,) = history["history"]
    # The published split holds out int(n / 10) images of each category.
    categories = [e["category"] for e in json.loads((tiny_set / "pix3d.json").read_text())]
    n_val = sum(categories.count(c) // 10 for c in set(categories))
    assert epoch["epoch"] == 1 and epoch["n_train"] == 8 and epoch["n_val"] == n_val > 0
    for key in ("train_loss", "val_loss", "val_azimuth_acc", "val_azimuth_mederr",
                "majority_azimuth_acc", "val_azimuth_acc_pi6"):
        assert isinstance(epoch[key], float) and epoch[key] == epoch[key], key
    assert 0.0 <= epoch["val_azimuth_acc"] <= 1.0
    assert (out / "checkpoint.pt").stat().st_size > 0
