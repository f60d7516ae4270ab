"""Train/validation splits of a prepared dataset (a registry; the split is a config key).

  published the published split ("seed" is its old name, still accepted). On a Pix3D folder:
            the notebook's own membership (`published_split.json`, shipped with the package:
            9,064 / 1,002 images named category/number as in img/), whatever the seed. On
            other data (the built-in set, or a folder none of whose images it lists): the
            published rule, per category (sorted by name) torch's random_split of that
            category's entries with torch.Generator().manual_seed(seed), val = int(n / 10).
  random    one seeded permutation of all entries, val = int(N * val_fraction).
  by_model  whole 3D models go to one side: images of one model share its appearance at
            nearby poses, so a model on both sides leaks pose through appearance. Stratified:
            val_fraction of each category's models (at least one where it has two or more).
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
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


# ----------------------------------------------------------------------------- the membership

MEMBERSHIP_FILE = Path(__file__).with_name("published_split.json")
BUILTIN_DATASET = "synthetic"  # the built-in set's name in a cache manifest
EXAMPLES = 3  # names quoted in a message


@dataclass(frozen=True)
class Membership:
    """The notebook's train / validation image names ("category/number") and their hash."""

    train: frozenset[str]
    val: frozenset[str]

    @property
    def sha256(self) -> str:
        """sha256 of the sorted names, side by side: what every run records of the membership."""
        return membership_sha256(self.train, self.val)


def membership_sha256(train, val) -> str:
    """The hash of a membership, independent of how it is stored (sorted names, one a line)."""
    text = "train\n" + "".join(f"{n}\n" for n in sorted(train)) + "val\n" + "".join(f"{n}\n" for n in sorted(val))
    return hashlib.sha256(text.encode()).hexdigest()


@functools.lru_cache(maxsize=4)
def published_membership(path: Path = MEMBERSHIP_FILE) -> Membership:
    """The membership shipped with the package (per side, per category, space-separated numbers)."""
    try:
        raw = json.loads(Path(path).read_text())
        sides = [frozenset(f"{category}/{number}" for category, numbers in raw[side].items()
                           for number in numbers.split()) for side in ("train", "val")]
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
        raise Pix3DError(f"{path}: not a published split membership ({type(exc).__name__}: {exc})") from None
    both = sides[0] & sides[1]
    if both:
        raise Pix3DError(f"{path}: {len(both)} names are on both sides (e.g. {', '.join(sorted(both)[:EXAMPLES])})")
    return Membership(*sides)


def entry_name(img: str) -> str:
    """An entry's name in the membership: img/bed/0001.png -> bed/0001."""
    path = Path(img)
    return f"{path.parent.name}/{path.stem}"


def _few(names) -> str:
    names = sorted(names)
    return ", ".join(names[:EXAMPLES]) + (", ..." if len(names) > EXAMPLES else "")


@dataclass(frozen=True)
class MembershipMatch:
    """How the published split applies to a dataset: the notebook's membership (`used`) with
    the rows of each side, or the rule; `message` says which, in one line."""

    used: bool
    message: str
    train: tuple[int, ...] = ()
    val: tuple[int, ...] = ()
    sha256: str | None = None
    missing: int = 0      # listed names the data lacks
    unlisted: int = 0     # data entries the membership does not list (left out of both sides)

    def record(self) -> dict:
        """What the cache manifest and every run's provenance keep of it."""
        return {"membership": "notebook" if self.used else "rule", "sha256": self.sha256,
                "train": len(self.train), "val": len(self.val), "missing": self.missing, "unlisted": self.unlisted}


RULE = "the published rule (per category, seeded random_split, int(n/10) to validation)"
# The membership applies to data holding at least this share of its images: a handful of
# Pix3D-named images (a test folder, one category) would get a split of a few validation
# images that is neither the published one nor the rule's 10%.
MIN_SHARE = 0.5


def match_published(img_paths: Sequence[str], dataset: str | None = None, *, builtin: bool = False,
                    membership: Membership | None = None) -> MembershipMatch:
    """Where the notebook's membership applies to a dataset's entries (their `img` paths).

    The built-in set (`builtin`), and data holding under half of the listed images, take the
    rule (the message says why). On a Pix3D folder, listed images it lacks and unlisted ones
    it has (left out of both sides: the notebook never saw them) are counted and named. A
    folder with more unlisted images than listed ones, or two images of one name, disagrees
    with the membership: a Pix3DError with the counts and the first names.
    """
    where = dataset or "the data"
    if builtin or dataset == BUILTIN_DATASET:
        return MembershipMatch(False, f"split published: {where} is the built-in synthetic set, not Pix3D: "
                                      f"the notebook's membership does not apply, {RULE}")
    membership = membership or published_membership()
    names = [entry_name(p) for p in img_paths]
    train = tuple(i for i, n in enumerate(names) if n in membership.train)
    val = tuple(i for i, n in enumerate(names) if n in membership.val)
    listed, total = len(train) + len(val), len(membership.train) + len(membership.val)
    present = set(names)
    missing = (membership.train | membership.val) - present
    unlisted = [n for n in names if n not in membership.train and n not in membership.val]
    if listed < MIN_SHARE * total:
        return MembershipMatch(False, f"split published: {where} holds {listed} of the notebook's {total} "
                                      f"listed images (its own named e.g. {_few(names)}): not the published "
                                      f"Pix3D, so {RULE}")
    seen: set[str] = set()
    duplicates = {n for n in names if n in seen or seen.add(n)}
    if duplicates or len(unlisted) > listed:
        raise Pix3DError(f"split published: {where} and the notebook's membership disagree: {listed} of its "
                         f"{len(names)} images listed, {len(unlisted)} not ({_few(unlisted)}), "
                         f"{len(missing)} of {total} listed absent ({_few(missing)})"
                         + (f", {len(duplicates)} names twice ({_few(duplicates)})" if duplicates else "")
                         + "; use --split random or by_model for this data")
    gaps = []
    if missing:
        gaps.append(f"lacks {len(missing)} of the {total} listed images ({_few(missing)})")
    if unlisted:
        gaps.append(f"has {len(unlisted)} unlisted images ({_few(unlisted)}), left out of both sides")
    message = (f"split published: the notebook's membership (sha256 {membership.sha256[:12]}): "
               f"{len(train)} train / {len(val)} val" + (f"; {where} " + " and ".join(gaps) if gaps else ""))
    return MembershipMatch(True, message, train, val, membership.sha256, len(missing), len(unlisted))


SPLITS: dict[str, Callable] = {
    "published": published_split,
    "random": random_split,
    "by_model": by_model_split,
}


def split_indices(
    name: str, categories: Sequence[str], model_ids: Sequence[str], *, seed: int, val_fraction: float = 0.1,
    img_paths: Sequence[str] | None = None, dataset: str | None = None, builtin: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) entry indices, int64 and sorted, of the named split. With the entries'
    `img_paths` (and the dataset's name), `published` is the notebook's membership where it
    applies (`match_published`; val_fraction does not change it), else the rule."""
    name = current_name("split", name)
    if name not in SPLITS:
        raise UsageError(f"unknown split {name!r}; choose from {', '.join(SPLITS)}")
    if len(categories) != len(model_ids):
        raise Pix3DError(f"split {name}: {len(categories)} categories but {len(model_ids)} model ids")
    if len(categories) == 0:
        raise Pix3DError(f"split {name}: the dataset is empty")
    _check_fraction(val_fraction)
    if name == "published" and img_paths is not None:
        if len(img_paths) != len(categories):
            raise Pix3DError(f"split {name}: {len(categories)} categories but {len(img_paths)} image paths")
        match = match_published(img_paths, dataset, builtin=builtin)
        if match.used:
            return np.sort(np.asarray(match.train, dtype=np.int64)), np.sort(np.asarray(match.val, dtype=np.int64))
    train, val = SPLITS[name](categories, model_ids, seed=int(seed), val_fraction=val_fraction)
    return np.sort(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(val, dtype=np.int64))

