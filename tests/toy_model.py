"""A model defined outside the project, registered the way a user would: loaded through
PIX3D_MODELS=tests.toy_model (test_registry.py). Nothing else in the project names it."""

from __future__ import annotations

import torch
from torch import nn

from pix3d.constants import HEADS, N_BINS, modality_channels
from pix3d.models import TABLE_METRIC, register_model


class ToyNet(nn.Module):
    """conv 3x3 -> global average -> one linear layer to every head's logits."""

    def __init__(self, modalities: tuple[str, ...]):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(len(modality_channels(modalities)), 8, 3), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.heads = nn.Linear(8, len(HEADS) * N_BINS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads(self.features(x)).view(-1, len(HEADS), N_BINS)


@register_model("toy_net", published_lr=3e-3, published={TABLE_METRIC: {"rgb": 12.5}})
def toy_net(modalities: tuple[str, ...], *, image_size: int = 224, seed_quirks: bool = False) -> nn.Module:
    """A toy for the registry test: 8 filters and a linear head."""
    return ToyNet(modalities)
