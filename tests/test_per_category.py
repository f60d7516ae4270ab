"""Per-category training (the notebook's cell 11) as a grid: one trial per model and category
of the data, each trained and validated on that category's images only."""

from __future__ import annotations

import pytest

from pix3d.errors import Pix3DError
from pix3d.train import fit
from pix3d.train.state import split_data
from search.grids import get_grid
from search.kinds.pose_grid import data_categories
from tests.pix3d_fixtures import write_pix3d_folder
from tests.test_train import pose_pattern_data, small_config


def test_the_grid_has_one_trial_per_model_and_category_of_the_data(tmp_path):
    grid = get_grid("per_category").for_data("synthetic")
    trials = grid.trials(1, {})
    assert {t["category"] for t in trials} == {"bed", "bookcase", "chair", "desk", "sofa", "table", "wardrobe"}
    assert len(trials) == 2 * 7 and {t["modalities"] for t in trials} == {"rgb"}
    folder = write_pix3d_folder(tmp_path / "set", 6, categories=("chair", "tool"))
    assert data_categories(str(folder)) == ["chair", "tool"]
    assert get_grid("ablation").for_data("synthetic") is get_grid("ablation")  # other grids unchanged


def test_a_run_trains_and_validates_on_its_category_only():
    data = pose_pattern_data(n=40)
    everything = split_data(small_config(), data)
    chairs = split_data(small_config(category="chair"), data)
    assert {data.categories[i] for i in (*chairs.train.tolist(), *chairs.val.tolist())} == {"chair"}
    assert set(chairs.train.tolist()) <= set(everything.train.tolist())
    assert set(chairs.val.tolist()) <= set(everything.val.tolist()) and len(chairs.val) > 0
    result = fit(small_config(category="chair", epochs=1), data)
    assert result["final"]["n_train"] == len(chairs.train) and result["final"]["n_val"] == len(chairs.val)
    with pytest.raises(Pix3DError, match="no image of 'sofa' in the data; it has chair, table"):
        split_data(small_config(category="sofa"), data)
