"""pix3d.data: the splits and the channel view, on a real prepared cache."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from pix3d.constants import MODALITY_CHANNELS, modality_channels
from pix3d.data.dataset import ModalityView, check_modalities
from pix3d.data.splits import SPLITS, split_indices
from pix3d.errors import Pix3DError, UsageError
from pix3d.data.prepare import prepare
from tests.pix3d_fixtures import write_pix3d_folder


def toy_labels(n_per_category=(37, 12, 5, 101), models_per_category=4):
    categories, models = [], []
    for c, n in enumerate(n_per_category):
        for i in range(n):
            categories.append(f"cat{c}")
            models.append(f"cat{c}/model{i % models_per_category}")
    # Interleave, as real pix3d.json lists categories in blocks but not necessarily sorted.
    order = np.random.default_rng(0).permutation(len(categories))
    return [categories[i] for i in order], [models[i] for i in order]


def published_seed_split(categories, seed):
    """The published notebook's split, written out: per category, random_split of a Subset."""
    dataset = list(range(len(categories)))
    train, val = [], []
    for category in sorted(set(categories)):
        subset = torch.utils.data.Subset(dataset, [i for i, c in enumerate(categories) if c == category])
        n = len(subset)
        a, b = torch.utils.data.random_split(subset, [n - int(n / 10), int(n / 10)], generator=torch.Generator().manual_seed(seed))
        train += [subset[i] for i in a.indices]
        val += [subset[i] for i in b.indices]
    return sorted(train), sorted(val)


@pytest.mark.parametrize("seed", [0, 7])
def test_seed_split_reproduces_the_published_split(seed):
    categories, models = toy_labels()
    train, val = split_indices("published", categories, models, seed=seed)
    want_train, want_val = published_seed_split(categories, seed)
    assert train.tolist() == want_train and val.tolist() == want_val
    for category, n in zip(("cat0", "cat1", "cat2", "cat3"), (37, 12, 5, 101)):
        assert sum(categories[i] == category for i in val) == int(n / 10)


@pytest.mark.parametrize("name", sorted(SPLITS))
def test_every_split_partitions_and_is_seeded(name):
    categories, models = toy_labels()
    train, val = split_indices(name, categories, models, seed=3)
    assert train.dtype == np.int64 and val.dtype == np.int64
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    assert len(np.intersect1d(train, val)) == 0
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(len(categories)))
    again = split_indices(name, categories, models, seed=3)
    other = split_indices(name, categories, models, seed=4)
    assert np.array_equal(again[1], val)
    assert not np.array_equal(other[1], val)
    # by_model moves at least one model per category: with 4 models each, a quarter of them.
    high = 0.3 if name == "by_model" else 0.2
    assert 0.05 * len(categories) <= len(val) <= high * len(categories)


def test_by_model_keeps_each_model_on_one_side():
    categories, models = toy_labels()
    train, val = split_indices("by_model", categories, models, seed=0, val_fraction=0.2)
    train_models = {models[i] for i in train}
    val_models = {models[i] for i in val}
    assert val_models and train_models and not (train_models & val_models)
    with pytest.raises(Pix3DError, match="at least 2 distinct models"):
        split_indices("by_model", ["a"] * 5, ["m"] * 5, seed=0)


def test_random_split_size_follows_fraction():
    categories, models = toy_labels()
    _, val = split_indices("random", categories, models, seed=0, val_fraction=0.25)
    assert len(val) == int(len(categories) * 0.25)


def test_bad_split_arguments():
    with pytest.raises(UsageError, match="unknown split 'kfold'; choose from published, random, by_model"):
        split_indices("kfold", ["a"], ["m"], seed=0)
    with pytest.raises(UsageError, match="val_fraction"):
        split_indices("random", ["a", "b"], ["m", "n"], seed=0, val_fraction=1.5)
    with pytest.raises(Pix3DError, match="empty"):
        split_indices("random", [], [], seed=0)


def test_check_modalities():
    available = {"rgb": True, "mask": True, "boundaries": True, "normals": False}
    assert check_modalities("mask+rgb", available) == ("rgb", "mask")
    with pytest.raises(Pix3DError, match="modality 'normals' is unavailable"):
        check_modalities(["rgb", "normals"], available)
    with pytest.raises(UsageError, match="unknown modality 'depth'"):
        check_modalities("rgb+depth", available)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    base = tmp_path_factory.mktemp("data")
    root = write_pix3d_folder(base / "pix3d", 12, normals=True)
    return prepare(root, 24, cache_dir=base / "cache", workers=1, progress=False, log=lambda m: None)


def test_view_of_a_prefix_subset_shares_the_cache(prepared):
    assert not prepared.images.flags.writeable  # memory-mapped read-only
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        view = ModalityView(prepared.images, "rgb+mask+boundaries", indices=[2, 5, 7])
        item = view[1]
    cache_ptr = view.images.untyped_storage().data_ptr()
    assert item.untyped_storage().data_ptr() == cache_ptr  # a view, not a copy
    assert view.channel_slice == slice(0, 5) and view.num_channels == 5
    assert torch.equal(item, torch.from_numpy(np.array(prepared.images[5, 0:5])))
    batch = view.batch([0, 2])
    assert batch.dtype == torch.uint8 and batch.shape == (2, 5, 24, 24)
    assert torch.equal(batch, torch.from_numpy(np.array(prepared.images[[2, 7], 0:5])))


def test_view_of_a_non_contiguous_subset_gathers_per_batch(prepared):
    view = ModalityView(prepared.images, ["normals", "rgb"], indices=np.arange(12))
    assert view.channel_slice is None and view.channels == [0, 1, 2, 5, 6, 7]
    batch = view.batch([3, 0, 11])
    want = np.array(prepared.images)[[3, 0, 11]][:, [0, 1, 2, 5, 6, 7]]
    assert torch.equal(batch, torch.from_numpy(want))
    assert len(view) == 12
    loader = torch.utils.data.DataLoader(view, batch_size=5)
    shapes = [tuple(b.shape) for b in loader]
    assert shapes == [(5, 6, 24, 24), (5, 6, 24, 24), (2, 6, 24, 24)]


@pytest.mark.parametrize("modality", sorted(MODALITY_CHANNELS))
def test_each_single_modality_selects_its_channels(prepared, modality):
    view = ModalityView(torch.from_numpy(np.array(prepared.images)), modality)
    lo, hi = MODALITY_CHANNELS[modality]
    assert view.channels == modality_channels(modality) == list(range(lo, hi))
    assert torch.equal(view.batch([4]), torch.from_numpy(np.array(prepared.images[[4], lo:hi])))


def test_split_and_view_on_prepared_cache(prepared):
    train, val = split_indices("published", prepared.categories, prepared.model_ids, seed=0)
    modalities = check_modalities("rgb+mask+boundaries+normals", prepared.available)
    view = ModalityView(prepared.images, modalities, indices=train)
    assert len(view) == len(train) and view.batch([0]).shape[1] == 8
    assert len(val) == sum(int(prepared.categories.count(c) / 10) for c in set(prepared.categories))


def test_view_rejects_bad_indices(prepared):
    with pytest.raises(Pix3DError, match="out of range"):
        ModalityView(prepared.images, "rgb", indices=[0, 99])
