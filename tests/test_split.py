"""The by_model split is stratified: every category with two or more models is on both sides."""

from __future__ import annotations

import numpy as np
import pytest

from pix3d.data.splits import split_indices
from pix3d.errors import Pix3DError

# Models per category, Pix3D-like in shape: a category with one model, some with few, one
# with many (real Pix3D: 395 models over 9 categories, chairs the most, tools the fewest).
MODELS_PER_CATEGORY = {"bed": 2, "bookcase": 3, "chair": 25, "desk": 9, "misc": 1, "sofa": 12, "wardrobe": 4}


def pix3d_like(seed: int = 0):
    """Images per model vary (1..30), so an image-count target would not stratify by chance."""
    rng = np.random.default_rng(seed)
    categories, models = [], []
    for category, n_models in MODELS_PER_CATEGORY.items():
        for m in range(n_models):
            n_images = int(rng.integers(1, 31))
            categories += [category] * n_images
            models += [f"model/{category}/{m}/model.obj"] * n_images
    order = rng.permutation(len(categories))
    return [categories[i] for i in order], [models[i] for i in order]


@pytest.mark.parametrize("seed", range(12))
def test_by_model_keeps_every_category_with_two_models_on_both_sides(seed):
    categories, models = pix3d_like()
    train, val = split_indices("by_model", categories, models, seed=seed)
    train_models = {models[i] for i in train}
    val_models = {models[i] for i in val}
    assert not train_models & val_models  # no CAD model on both sides
    for category, n_models in MODELS_PER_CATEGORY.items():
        in_val = {m for m in val_models if f"/{category}/" in m}
        in_train = {m for m in train_models if f"/{category}/" in m}
        if n_models >= 2:
            # 10% of the category's models (int(n / 10), as the seed split counts), at least one.
            assert len(in_val) == max(1, n_models // 10), category
            assert in_train, category
        else:
            assert not in_val and len(in_train) == 1, category


def test_by_model_is_seeded():
    categories, models = pix3d_like()
    first = split_indices("by_model", categories, models, seed=3)[1]
    assert np.array_equal(first, split_indices("by_model", categories, models, seed=3)[1])
    others = [split_indices("by_model", categories, models, seed=s)[1] for s in (4, 5, 6)]
    assert any(not np.array_equal(first, other) for other in others)


def test_by_model_needs_a_category_with_two_models():
    with pytest.raises(Pix3DError, match="a category with at least 2 distinct models"):
        split_indices("by_model", ["bed", "bed", "desk"], ["m/bed/0", "m/bed/0", "m/desk/0"], seed=0)
