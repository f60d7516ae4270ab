"""Training data on the device: the uint8 cache turned into normalised float batches.

Owns `channel_stats` (the training split's per-channel mean/std), `BatchSource` (cache rows ->
float inputs and int64 targets on the training device) and `train_batches` (one epoch's
shuffled batch positions). Hot path: the prepared uint8 cache (N x 8 x S x S) is sliced with
index tensors and converted to float on the fly; nothing is decoded and no per-sample
`__getitem__` runs.
"""

from __future__ import annotations

import numpy as np
import torch

from pix3d.data.dataset import ModalityView


def channel_stats(images: torch.Tensor, indices: torch.Tensor, channels: list[int], chunk: int = 256) -> dict:
    """Per-channel mean/std of the [0, 1]-scaled images at `indices` (the training split)."""
    total = torch.zeros(len(channels), dtype=torch.float64)
    total_sq = torch.zeros(len(channels), dtype=torch.float64)
    count = 0
    for start in range(0, len(indices), chunk):
        batch = images[indices[start:start + chunk]][:, channels].to(torch.float64) / 255.0
        total += batch.sum(dim=(0, 2, 3))
        total_sq += (batch * batch).sum(dim=(0, 2, 3))
        count += batch.shape[0] * batch.shape[2] * batch.shape[3]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(0).sqrt().clamp_min(1e-3)  # constant channel
    return {"channels": channels, "mean": mean.tolist(), "std": std.tolist(), "scale": "unit"}


class BatchSource:
    """Uint8 cache + labels on the training device, turned into normalised float batches.

    Without quirks: x = (u8 / 255 - mean) / std with training-split statistics. With
    seed_quirks the published raw 0..255 floats (`norm["scale"] == "raw"`). On the CPU batches
    are gathered from the shared cache itself (no copy). On CUDA only the trial's channels of
    the whole cache are moved to the GPU, once and in chunks (a 224-px Pix3D cache is about
    4 GB in all 8 channels, 1.5 GB in RGB), so a batch never crosses the bus. `compact`
    forces either layout (the compact one is what CUDA uses; tests compare the two on CPU).
    """

    COPY_CHUNK = 512  # cache rows per host-to-device copy: bounds the temporary host memory

    def __init__(self, images, labels: np.ndarray, modalities, norm: dict,
                 device: torch.device, channels_last: bool, *, compact: bool | None = None) -> None:
        """`labels`: N x 3 bins of every cache row; `norm`: channel_stats' dict (or a raw one)."""
        view = ModalityView(images, modalities)  # validates the subset against the cache layout
        if compact is None:
            compact = device.type != "cpu"
        if compact:
            self.compact, self.view = self._copy_channels(view, device), None
        else:
            self.compact, self.view = None, view
        self.labels = torch.as_tensor(labels, dtype=torch.int64, device=device)
        self.device = device
        self.channels_last = channels_last
        n = view.num_channels
        if norm["scale"] == "raw":
            mean, inv_std = torch.zeros(n), torch.ones(n)
        else:  # fold /255 into the affine map: one multiply-add per pixel
            mean = torch.tensor(norm["mean"]) * 255.0
            inv_std = 1.0 / (torch.tensor(norm["std"]) * 255.0)
        self.mean = mean.view(1, -1, 1, 1).to(device, torch.float32)
        self.inv_std = inv_std.view(1, -1, 1, 1).to(device, torch.float32)

    @classmethod
    def _copy_channels(cls, view: ModalityView, device: torch.device) -> torch.Tensor:
        """The view's channels of the whole cache as one uint8 tensor on `device`, copied in chunks."""
        cache, channels = view.images, torch.as_tensor(view.channels)
        compact = torch.empty((cache.shape[0], len(view.channels), *cache.shape[2:]),
                              dtype=torch.uint8, device=device)
        for start in range(0, cache.shape[0], cls.COPY_CHUNK):
            rows = cache[start:start + cls.COPY_CHUNK].index_select(1, channels)
            compact[start:start + len(rows)].copy_(rows)
        return compact

    def inputs(self, idx: torch.Tensor) -> torch.Tensor:
        """Float B x C x S x S for cache rows `idx` (a CPU int64 tensor)."""
        if self.compact is not None:
            batch = self.compact.index_select(0, idx.to(self.device))
        else:
            batch = self.view.batch(idx)
        x = (batch.to(torch.float32) - self.mean) * self.inv_std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def targets(self, idx: torch.Tensor) -> torch.Tensor:
        """Int64 B x 3 bin labels (azimuth, elevation, in-plane) for cache rows `idx`."""
        return self.labels.index_select(0, idx.to(self.device))


def train_batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Shuffled positions 0..n-1 in batches; a trailing batch of one joins the previous one
    (BatchNorm cannot normalise a single sample whose last feature map is 1 x 1)."""
    order = torch.randperm(n, generator=generator)
    batches = list(order.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2] = torch.cat([batches[-2], batches.pop()])
    return batches
