"""The channel-selecting view of a prepared cache that trials train on.

`ModalityView` hands trials the channels of a modality subset without copying the cache:
the published subsets are prefixes of the channel order, so they are plain slices.
`check_modalities` refuses a subset the cache cannot serve.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from pix3d.constants import MODALITIES, Modalities
from pix3d.errors import Pix3DError, UsageError


def check_modalities(modalities, available: dict[str, bool]) -> Modalities:
    """The typed subset (as given when it is one); raises if a name is unknown or the cache lacks that modality."""
    try:
        chosen = Modalities(modalities)
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
        self.channels = list(self.modalities.channels)
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
