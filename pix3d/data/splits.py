"""Train/validation splits of a prepared dataset (a registry; the split is a config key).

  published the published split ("seed" is its old name, still accepted): per category (sorted by name), torch's random_split of that
            category's entries with torch.Generator().manual_seed(seed), val = int(n / 10).
  random    one seeded permutation of all entries, val = int(N * val_fraction).
  by_model  whole 3D models go to one side: images of one model share its appearance at
            nearby poses, so a model on both sides leaks pose through appearance. Stratified:
            val_fraction of each category's models (at least one where it has two or more).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from pix3d.errors import Pix3DError, UsageError, current_name


def _val_count(n: int, val_fraction: float) -> int:
    # int(n / 10) as published for the default; the epsilon keeps 0.1 * 70 = 7.000000000000001
    # and 0.3 * 10 = 2.9999999999999996 on the intended integer.
    if val_fraction == 0.1:
        return int(n / 10)
    return int(n * val_fraction + 1e-9)


def _check_fraction(val_fraction: float) -> None:
    if not (isinstance(val_fraction, (int, float)) and 0.0 < val_fraction < 1.0):
        raise UsageError(f"val_fraction must be between 0 and 1, got {val_fraction!r}")


def published_split(categories: Sequence[str], model_ids: Sequence[str], *, seed: int, val_fraction: float = 0.1):
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
    "published": published_split,
    "random": random_split,
    "by_model": by_model_split,
}


def split_indices(
    name: str, categories: Sequence[str], model_ids: Sequence[str], *, seed: int, val_fraction: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) entry indices, int64 and sorted, of the named split."""
    name = current_name("split", name)
    if name not in SPLITS:
        raise UsageError(f"unknown split {name!r}; choose from {', '.join(SPLITS)}")
    if len(categories) != len(model_ids):
        raise Pix3DError(f"split {name}: {len(categories)} categories but {len(model_ids)} model ids")
    if len(categories) == 0:
        raise Pix3DError(f"split {name}: the dataset is empty")
    _check_fraction(val_fraction)
    train, val = SPLITS[name](categories, model_ids, seed=int(seed), val_fraction=val_fraction)
    return np.sort(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(val, dtype=np.int64))

