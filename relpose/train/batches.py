"""The pair arrays on the device, cut into float batches."""

from __future__ import annotations

import torch

from relpose.pairs import PairData


class PairTensors:
    """The pair arrays as tensors on the device (images as float in [0, 1] per batch)."""

    def __init__(self, data: PairData, device: torch.device):
        self.source = torch.as_tensor(data.source).to(device)
        self.target = torch.as_tensor(data.target).to(device)
        self.depth = torch.as_tensor(data.depth).to(device)
        self.mask = torch.as_tensor(data.mask).to(device)
        self.K = torch.as_tensor(data.K).to(device)
        self.T = torch.as_tensor(data.T).to(device)
        self.device = device

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        idx = idx.to(self.device)
        return {"source": self.source[idx].float() / 255, "target": self.target[idx].float() / 255,
                "depth": self.depth[idx], "mask": self.mask[idx], "K": self.K[idx], "T": self.T[idx]}

