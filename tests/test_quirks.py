"""The published code's four quirks, each switchable alone: a quirk switched on by itself
changes its own behaviour and none of the other three (seed_quirks=True is all four)."""

from __future__ import annotations

import pytest
import torch

from pix3d.errors import Pix3DError
from pix3d.models import QUIRKS, get_model
from pix3d.train.config import TrainConfig
from pix3d.train.loop import validation_batching
from pix3d.train.state import normalisation
from tests.test_train import SIZE, pose_pattern_data, small_config

MODALITIES = ("rgb", "mask")


def observed_quirks(config: TrainConfig, data) -> dict[str, bool]:
    """Which of the four behaviours a config's run shows, each measured on what it changes."""
    torch.manual_seed(0)
    model = get_model(config.model, config.modalities, image_size=SIZE, seed_quirks=config.seed_quirks).eval()
    x = torch.randn(4, 4, SIZE, SIZE)
    with torch.no_grad():
        logits = model(x)
        changed = x.clone()
        changed[3] += 5.0  # only sample 3 changes
        moved = (model(changed)[:3] - logits[:3]).abs().max().item()
    return {
        "relu_logits": bool((logits >= 0).all()),           # a ReLU clamps every negative logit
        "batch_mixing": moved > 1e-6,                         # other samples' outputs follow sample 3's input
        "raw_input": normalisation(config, data, torch.arange(8), None)["scale"] == "raw",
        # shuffled batches of the training batch size instead of sorted ones of 128
        "val_batching": validation_batching(config, epoch=1)[1] is not None,
    }


@pytest.fixture(scope="module")
def data():
    return pose_pattern_data(n=16)


@pytest.mark.parametrize("quirk", QUIRKS)
def test_each_quirk_alone_changes_only_its_own_behaviour(quirk, data):
    config = small_config(model="separate_net", modalities=MODALITIES, seed_quirks=quirk)
    assert config.seed_quirks == quirk and config.has_quirk(quirk)
    assert observed_quirks(config, data) == {q: q == quirk for q in QUIRKS}


def test_all_and_none(data):
    every = small_config(model="separate_net", modalities=MODALITIES, seed_quirks=True)
    assert observed_quirks(every, data) == dict.fromkeys(QUIRKS, True)
    plain = small_config(model="separate_net", modalities=MODALITIES, seed_quirks=False)
    assert observed_quirks(plain, data) == dict.fromkeys(QUIRKS, False)
    # The four named one by one are "all" (one value in tags and tables), none named is off.
    assert small_config(seed_quirks="+".join(reversed(QUIRKS))).seed_quirks is True
    assert small_config(seed_quirks="none").seed_quirks is False
    assert small_config(seed_quirks="raw_input+relu_logits").seed_quirks == "relu_logits+raw_input"


def test_an_unknown_quirk_is_refused_naming_them():
    with pytest.raises(Pix3DError, match="unknown quirk 'relu'; choose from relu_logits, batch_mixing"):
        small_config(seed_quirks="relu")
