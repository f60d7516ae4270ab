"""The grid registry: sizes agree with what Tune generates, and every trial is a valid TrainConfig."""

from __future__ import annotations

import pytest
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter

from pix3d.constants import ABLATION_SUBSETS, modalities_key

# The learning rates of the published README (the registry must carry them).
PUBLISHED_LR = {"combined_net": 1e-5, "separate_net": 1e-3}
from pix3d.errors import UsageError
from pix3d.train import BUDGETS, TrainConfig
from search.grids import GRIDS, describe_grids, get_grid
from trainables.pose import train_config_from_tune

GRID_SEARCHES = [name for name, grid in GRIDS.items() if grid.kind != "search"]


@pytest.mark.parametrize("name", GRID_SEARCHES)
@pytest.mark.parametrize("seeds", [1, 2])
def test_size_matches_tunes_own_expansion(name, seeds):
    grid = get_grid(name)
    trials = grid.trials(seeds, BUDGETS["quick"])
    assert len(trials) == grid.size(seeds) > 0
    # No two trials are the same configuration.
    assert len({tuple(sorted((k, repr(v)) for k, v in t.items())) for t in trials}) == len(trials)


@pytest.mark.parametrize("name", [name for name, grid in GRIDS.items() if grid.kind in ("grid", "search")])
def test_every_trial_is_a_valid_train_config(name):  # fusion grids: tests/test_fusion_sweep.py
    grid = get_grid(name)
    trials = grid.trials(1, BUDGETS["quick"]) or [
        # A search: resolve each domain once, as Tune would for one sample.
        {k: (v.sample() if hasattr(v, "sample") else v) for k, v in grid.param_space(1, BUDGETS["quick"]).items()}
    ]
    for trial in trials:
        config = train_config_from_tune({**trial, "cpus_per_trial": 2, "gpus_per_trial": 0})
        assert isinstance(config, TrainConfig)
        assert config.threads == 2 and config.device == "cpu"
        assert config.image_size == BUDGETS["quick"]["image_size"]


def test_ablation_is_the_published_table():
    trials = get_grid("ablation").trials(3)
    assert len(trials) == 2 * 4 * 3
    for trial in trials:
        assert trial["lr"] == PUBLISHED_LR[trial["model"]]
    cells = {(t["model"], t["modalities"]) for t in trials}
    assert cells == {(m, modalities_key(s)) for m in PUBLISHED_LR for s in ABLATION_SUBSETS}
    assert sorted({t["seed"] for t in trials}) == [0, 1, 2]


def test_lr_grid_is_log_spaced_and_includes_both_published_rates():
    trials = get_grid("lr").trials(1)
    lrs = sorted({t["lr"] for t in trials})
    assert 1e-5 in lrs and 1e-3 in lrs
    ratios = [b / a for a, b in zip(lrs, lrs[1:])]
    assert max(ratios) / min(ratios) < 1.5  # evenly spaced in log
    assert {t["model"] for t in trials} == set(PUBLISHED_LR)


def test_reproduce_toggles_the_quirks_over_the_whole_ablation():
    trials = get_grid("reproduce").trials(1)
    on = {(t["model"], t["modalities"]) for t in trials if t["seed_quirks"]}
    off = {(t["model"], t["modalities"]) for t in trials if not t["seed_quirks"]}
    assert on == off and len(on) == 8
    as_run = get_grid("as_run").trials(1)
    assert all(t["lr"] == 1e-4 and t["lr_schedule"] == "none" and t["seed_quirks"] for t in as_run)


def test_grid_fixed_keys_win_over_the_budget_and_seeds_zero_means_no_trials():
    smoke = get_grid("smoke")
    trials = smoke.trials(1, BUDGETS["quick"])
    assert all(t["epochs"] == 2 for t in trials)  # quick says 4; smoke is tiny on purpose
    assert smoke.size(0) == 0 and smoke.trials(0) == []


def test_optuna_grid_is_tpe_with_asha_and_a_concurrency_limit():
    grid = get_grid("optuna")
    space = grid.param_space(1, BUDGETS["quick"])
    assert {"lr", "batch_size", "weight_decay"} <= {k for k, v in space.items() if hasattr(v, "sample")}
    limiter = grid.search_alg(max_epochs=4)
    assert isinstance(limiter, ConcurrencyLimiter) and limiter.max_concurrent == grid.max_concurrent
    from ray.tune.search.optuna import OptunaSearch

    # Ray's OptunaSearch, telling Optuna ASHA's stops as pruned (search.pruning).
    assert isinstance(limiter.searcher, OptunaSearch) and limiter.searcher.max_epochs == 4
    scheduler = grid.scheduler(max_epochs=4)
    assert isinstance(scheduler, ASHAScheduler)
    assert grid.size() == grid.num_samples
    assert get_grid("ablation").tune_options({"epochs": 4}, None) == {"search_alg": None, "scheduler": None,
                                                                     "num_samples": 1}


def test_unknown_grid_lists_the_known_ones():
    with pytest.raises(UsageError) as info:
        get_grid("ablations")
    message = str(info.value)
    assert "ablations" in message and all(name in message for name in GRIDS)
    assert "\n" not in message


def test_listing_shows_every_grid_with_its_size():
    lines = describe_grids(seeds=2)
    assert len(lines) == len(GRIDS)
    for line, grid in zip(lines, GRIDS.values()):
        assert line.split()[0] == grid.name and int(line.split()[1]) == grid.size(2)


def test_the_budget_line_says_what_a_grids_trials_run():
    from search.plan import budget_line

    smoke, budget = get_grid("smoke"), BUDGETS["quick"]
    line = budget_line(smoke, budget, smoke.param_space(1, budget))
    assert line is not None and all(f"{k}={v}" in line for k, v in smoke.fixed.items() if k in budget)
    ablation = get_grid("ablation")
    assert budget_line(ablation, budget, ablation.param_space(1, budget)) is None
