"""The faithful reproduction: the `reproduce` grid is the as-run recipe with the quirks toggled,
and with quirks on validation depends on batch composition (as in the notebook), off it does not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pix3d.models import QUIRKS, get_model
from pix3d.train import fit
from pix3d.train.batches import BatchSource
from pix3d.train.evaluation import predict as _predict
from search.grids import get_grid
from tests.test_train import SIZE, pose_pattern_data, small_config

MODALITIES = ("rgb", "mask")


def test_reproduce_is_the_as_run_recipe_with_quirks_on_and_off():
    # A budget that says otherwise (bf16 on a GPU, batch 8, a schedule) must not leak in.
    budget = {"precision": "auto", "batch_size": 8, "lr_schedule": "step", "epochs": 3}
    trials = get_grid("reproduce").trials(2, budget)
    assert len(trials) == 2 * 4 * 2 * 2 + 4 * 2
    for t in trials:
        assert (t["lr"], t["lr_schedule"], t["precision"], t["batch_size"]) == (1e-4, "none", "fp32", 10)
        assert t["epochs"] == 3  # the budget still sets the length
    on = {(t["model"], t["modalities"], t["seed"]) for t in trials if t["seed_quirks"] is True}
    off = {(t["model"], t["modalities"], t["seed"]) for t in trials if t["seed_quirks"] is False}
    assert on == off and len(on) == 16  # the quirks are the only difference
    # separate_net RGB+Mask also with each quirk alone: none, each, all.
    alone = sorted((t["seed_quirks"], t["seed"]) for t in trials if isinstance(t["seed_quirks"], str))
    assert {t["model"] for t in trials if isinstance(t["seed_quirks"], str)} == {"separate_net"}
    assert {t["modalities"] for t in trials if isinstance(t["seed_quirks"], str)} == {"rgb+mask"}
    assert alone == sorted((q, s) for q in QUIRKS for s in (0, 1))


def _logits_in_two_batchings(seed_quirks: bool):
    data = pose_pattern_data(n=24, size=SIZE)
    labels = np.zeros((len(data.azimuth), 3), dtype=np.int64)
    norm = {"channels": [0, 1, 2, 3], "mean": [0.0] * 4, "std": [1.0] * 4, "scale": "raw"}
    source = BatchSource(data.images, labels, MODALITIES, norm, torch.device("cpu"), False)
    torch.manual_seed(0)
    model = get_model("separate_net", MODALITIES, image_size=SIZE, seed_quirks=seed_quirks)
    rows = torch.arange(20)
    sorted_batches, _ = _predict(model, source, rows, "fp32", batch_size=128)
    shuffled_a, _ = _predict(model, source, rows, "fp32", batch_size=10,
                             shuffle=torch.Generator().manual_seed(1))
    shuffled_b, _ = _predict(model, source, rows, "fp32", batch_size=10,
                             shuffle=torch.Generator().manual_seed(2))
    return sorted_batches, shuffled_a, shuffled_b


def test_quirks_on_make_validation_depend_on_batch_composition():
    sorted_batches, shuffled_a, shuffled_b = _logits_in_two_batchings(seed_quirks=True)
    # The batch-mixing concatenation: a sample's logits change with its batch mates.
    assert not torch.allclose(shuffled_a, shuffled_b, atol=1e-4)
    assert not torch.allclose(sorted_batches, shuffled_a, atol=1e-4)


def test_quirks_off_validation_does_not_depend_on_batch_composition():
    sorted_batches, shuffled_a, shuffled_b = _logits_in_two_batchings(seed_quirks=False)
    # Outputs come back in row order whatever the batching.
    torch.testing.assert_close(shuffled_a, shuffled_b, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sorted_batches, shuffled_a, rtol=1e-4, atol=1e-4)


def test_quirks_validation_is_seeded_so_a_run_repeats():
    data = pose_pattern_data(n=32, size=SIZE)
    config = small_config(model="separate_net", modalities=MODALITIES, seed_quirks=True, epochs=1,
                          precision="fp32")
    first = fit(config, data)["final"]
    again = fit(config, data)["final"]
    assert first["val_loss"] == pytest.approx(again["val_loss"], rel=1e-6)
    assert first["val_azimuth_acc"] == again["val_azimuth_acc"]


def test_on_a_cpu_the_published_budget_says_its_cost_and_runs_smaller_only_when_asked(capsys):
    """reproduce at its own budget on a CPU: one measured step, the sweep's cost, then a refusal
    unless --budget is given. (The budget here is `quick`, so the measured step is cheap.)"""
    import argparse
    from dataclasses import replace

    from pix3d.errors import Pix3DError
    from search.options import SweepSettings
    from search.plan import build_param_space

    grid = replace(get_grid("reproduce"), budget="quick")
    args = argparse.Namespace(gpus_per_trial=0.0, device="auto", cpus_per_trial=1.0, dry_run=False)
    lines: list[str] = []
    for asked, refused in (("auto", True), ("quick", False)):
        settings, overrides = grid.plan_budget(SweepSettings("reproduce", "synthetic", None, asked, 1, None), args,
                                               log=lines.append)
        space = build_param_space(grid, settings, overrides, args)
        assert space["image_size"] == 64
        if refused:
            with pytest.raises(Pix3DError, match="pass --budget quick to run it anyway, or --budget cpu"):
                grid.check_cost(settings, space, args, log=lines.append)
        else:
            grid.check_cost(settings, space, args, log=lines.append)
    cost = [line for line in lines if line.startswith("cost on this CPU")]
    assert len(cost) == 2 and "combined_net, 8 trials" in cost[0] and "separate_net, 12 trials" in cost[0]
    assert "budget auto -> quick: grid reproduce runs at its own budget" in lines[0]
    # A smaller budget than the grid's, asked for: run, and say the table labels it.
    smaller = SweepSettings("reproduce", "synthetic", None, "cpu", 1, None)
    settings, overrides = grid.plan_budget(smaller, args, log=lines.append)
    grid.check_cost(settings, build_param_space(grid, settings, overrides, args), args, log=lines.append)
    assert lines[-1].startswith("budget cpu (asked for): smaller") and "the table labels" in lines[-1]
