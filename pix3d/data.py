"""Train/validation splits and a channel-selecting view of the prepared cache.

Splits (a registry; the split is a config key):
  seed      the published split: per category (sorted by name), torch's random_split of that
            category's entries with torch.Generator().manual_seed(seed), val = int(n / 10).
  random    one seeded permutation of all entries, val = int(N * val_fraction).
  by_model  whole 3D models go to one side: images of one model share its appearance at
            nearby poses, so a model on both sides leaks pose through appearance. Stratified:
            val_fraction of each category's models (at least one where it has two or more).

`ModalityView` hands trials the channels of a modality subset without copying the cache:
the published subsets are prefixes of the channel order, so they are plain slices.
"""

from __future__ import annotations

import warnings
from typing import Callable, Sequence

import numpy as np
import torch

from pix3d.constants import MODALITIES, modality_channels, parse_modalities
from pix3d.errors import Pix3DError, UsageError


def _val_count(n: int, val_fraction: float) -> int:
    # int(n / 10) as published for the default; the epsilon keeps 0.1 * 70 = 7.000000000000001
    # and 0.3 * 10 = 2.9999999999999996 on the intended integer.
    if val_fraction == 0.1:
        return int(n / 10)
    return int(n * val_fraction + 1e-9)


def _check_fraction(val_fraction: float) -> None:
    if not (isinstance(val_fraction, (int, float)) and 0.0 < val_fraction < 1.0):
        raise UsageError(f"val_fraction must be between 0 and 1, got {val_fraction!r}")


def seed_split(categories: Sequence[str], model_ids: Sequence[str], *, seed: int, val_fraction: float = 0.1):
    """The published per-category split (torch random_split, one seeded generator per category)."""
    categories = list(categories)
    train: list[int] = []
    val: list[int] = []
    for category in sorted(set(categories)):
        members = [i for i, c in enumerate(categories) if c == category]
        n_val = _val_count(len(members), val_fraction)
        parts = torch.utils.data.random_split(
            members, [len(members) - n_val, n_val], generator=torch.Generator().manual_seed(seed)
        )
        train.extend(members[i] for i in parts[0].indices)
        val.extend(members[i] for i in parts[1].indices)
    return train, val


def random_split(categories: Sequence[str], model_ids: Sequence[str], *, seed: int, val_fraction: float = 0.1):
    """One seeded permutation of all entries."""
    n = len(categories)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = _val_count(n, val_fraction)
    return order[n_val:], order[:n_val]


def by_model_split(categories: Sequence[str], model_ids: Sequence[str], *, seed: int, val_fraction: float = 0.1):
    """Whole models to validation, stratified by category: per category (sorted by name) a
    seeded draw of val_fraction of its CAD models (int(n / 10) for the default), at least one
    where the category has two or more, so every such category is on both sides. A model
    belongs to the category most of its images carry."""
    models = sorted(set(model_ids))
    if len(models) < 2:
        raise Pix3DError(f"the by_model split needs at least 2 distinct models, the data has {len(models)}")
    votes: dict[str, dict[str, int]] = {}
    for category, model in zip(categories, model_ids):
        votes.setdefault(model, {}).setdefault(category, 0)
        votes[model][category] += 1
    by_category: dict[str, list[str]] = {}
    for model in models:
        home = max(sorted(votes[model]), key=lambda c: votes[model][c])
        by_category.setdefault(home, []).append(model)
    val_models: set[str] = set()
    # One generator drawn category by category: same-sized categories get different draws.
    generator = torch.Generator().manual_seed(seed)
    for category in sorted(by_category):
        members = by_category[category]
        if len(members) < 2:
            continue  # one model cannot be on both sides: it stays in training
        n_val = max(1, _val_count(len(members), val_fraction))
        order = torch.randperm(len(members), generator=generator).tolist()
        val_models.update(members[k] for k in order[:n_val])
    if not val_models:
        raise Pix3DError("the by_model split needs a category with at least 2 distinct models; "
                         f"each of the {len(by_category)} categories has one")
    val = [i for i, m in enumerate(model_ids) if m in val_models]
    train = [i for i, m in enumerate(model_ids) if m not in val_models]
    return train, val


SPLITS: dict[str, Callable] = {
    "seed": seed_split,
    "random": random_split,
    "by_model": by_model_split,
}


def split_indices(
    name: str, categories: Sequence[str], model_ids: Sequence[str], *, seed: int, val_fraction: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) entry indices, int64 and sorted, of the named split."""
    if name not in SPLITS:
        raise UsageError(f"unknown split {name!r}; choose from {', '.join(SPLITS)}")
    if len(categories) != len(model_ids):
        raise Pix3DError(f"split {name}: {len(categories)} categories but {len(model_ids)} model ids")
    if len(categories) == 0:
        raise Pix3DError(f"split {name}: the dataset is empty")
    _check_fraction(val_fraction)
    train, val = SPLITS[name](categories, model_ids, seed=int(seed), val_fraction=val_fraction)
    return np.sort(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(val, dtype=np.int64))


def check_modalities(modalities, available: dict[str, bool]) -> tuple[str, ...]:
    """Canonical modality tuple; raises if a name is unknown or the cache lacks that modality."""
    try:
        chosen = parse_modalities(modalities)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    missing = [m for m in chosen if not available.get(m, False)]
    if missing:
        have = [m for m in MODALITIES if available.get(m, False)]
        raise Pix3DError(
            f"modality {missing[0]!r} is unavailable in this cache (its dataset has no {missing[0]}/ "
            f"maps mirroring img/); available: {', '.join(have)}"
        )
    return chosen


def _as_tensor(images) -> torch.Tensor:
    if isinstance(images, torch.Tensor):
        return images
    array = np.asarray(images)
    with warnings.catch_warnings():
        # Read-only memmaps / object-store arrays: torch warns that writes would be undefined.
        # The cache is never written through this tensor.
        warnings.filterwarnings("ignore", message=".*not writable.*")
        return torch.from_numpy(array)


class ModalityView(torch.utils.data.Dataset):
    """The cache restricted to a modality subset and a set of entries, without copying it.

    `view[i]` is a uint8 C x S x S tensor sharing memory with the cache (a channel slice)
    when the channels are contiguous; `view.batch(idx)` gathers one batch (B x C x S x S).
    """

    def __init__(self, images: np.ndarray | torch.Tensor, modalities, indices=None):
        self.modalities = check_modalities(modalities, {m: True for m in MODALITIES})
        self.images = _as_tensor(images)
        if self.images.ndim != 4:
            raise Pix3DError(f"cache images must be N x C x S x S, got shape {tuple(self.images.shape)}")
        n = self.images.shape[0]
        self.indices = (
            torch.arange(n, dtype=torch.int64)
            if indices is None
            else torch.as_tensor(np.asarray(indices, dtype=np.int64))
        )
        if self.indices.numel() and (int(self.indices.min()) < 0 or int(self.indices.max()) >= n):
            raise Pix3DError(f"indices out of range for a cache of {n} entries")
        self.channels = modality_channels(self.modalities)
        if max(self.channels) >= self.images.shape[1]:
            raise Pix3DError(f"the cache has {self.images.shape[1]} channels, {self.modalities} need {max(self.channels) + 1}")
        lo, hi = self.channels[0], self.channels[-1] + 1
        # A contiguous range is a slice (a view); anything else is gathered per batch only.
        self.channel_slice = slice(lo, hi) if self.channels == list(range(lo, hi)) else None
        self._channel_index = torch.tensor(self.channels, dtype=torch.int64)

    @property
    def num_channels(self) -> int:
        return len(self.channels)

    def __len__(self) -> int:
        return int(self.indices.numel())

    def __getitem__(self, i: int) -> torch.Tensor:
        row = self.images[int(self.indices[i])]
        return row[self.channel_slice] if self.channel_slice is not None else row.index_select(0, self._channel_index)

    def batch(self, idx) -> torch.Tensor:
        """uint8 B x C x S x S for positions `idx` of this view (not cache rows)."""
        rows = self.indices[torch.as_tensor(np.asarray(idx, dtype=np.int64))]
        if self.channel_slice is not None:
            return self.images[rows, self.channel_slice]
        return self.images[rows[:, None], self._channel_index[None, :]]
