"""Relative-pose networks: early or late fusion of two views over a ResNet-18 backbone.

- `early`: both RGB images stacked as 6 channels into one backbone. With ImageNet weights the
  first convolution's RGB filters are copied to both halves and halved, so at the start it
  sees the mean of the two images exactly as the ImageNet model would.
- `late`: one backbone (shared weights, a siamese pair) per image, the two 512-d features
  concatenated.

Both end in an MLP that outputs a twist (v, omega) for `pix3d.geometry.se3_exp`, scaled
down and zero-initialised so training starts at the identity motion.

ImageNet weights never come from the network: `weights` is a path to a torchvision
ResNet-18 state_dict, or "imagenet" for torchvision's own file in the torch hub cache
(`<torch.hub.get_dir()>/checkpoints/resnet18-f37072fd.pth`), or None (from scratch).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pix3d.errors import Pix3DError

FUSIONS = ("early", "late")
IMAGENET_FILE = "resnet18-f37072fd.pth"  # torchvision's ResNet18_Weights.IMAGENET1K_V1 file name
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Output scale: a unit network output is 0.1 m of translation or 0.1 rad (5.7 deg) of rotation.
TWIST_SCALE = 0.1


def imagenet_weights_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_FILE


def resolve_weights(weights: str | Path | None) -> Path | None:
    """None/'none' -> None; 'imagenet' -> the torch hub cache file; else the path (must exist)."""
    if weights is None or str(weights) in ("", "none"):
        return None
    path = imagenet_weights_path() if str(weights) == "imagenet" else Path(weights)
    if not path.is_file():
        hint = (" (nothing is downloaded: copy torchvision's ResNet-18 ImageNet file there, or pass "
                "--weights PATH)") if str(weights) == "imagenet" else ""
        raise Pix3DError(f"weights file {path} does not exist{hint}")
    return path


def load_resnet18_state(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise Pix3DError(f"weights file {path} is not a torch state_dict ({type(exc).__name__}: {exc})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or "conv1.weight" not in state or "layer4.1.bn2.weight" not in state:
        raise Pix3DError(f"weights file {path} is not a ResNet-18 state_dict (no conv1 / layer4 keys)")
    return state


def resnet18_backbone(in_channels: int, weights: Path | None) -> nn.Module:
    """ResNet-18 without its classifier (outputs 512-d), optionally from an ImageNet state_dict."""
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    if weights is not None:
        state = load_resnet18_state(weights)
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing or [k for k in unexpected if not k.startswith("fc.")]:
            raise Pix3DError(f"weights file {weights} does not match ResNet-18: missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}")
    if in_channels != 3:
        rgb = net.conv1.weight.detach()
        conv = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        with torch.no_grad():
            if weights is not None and in_channels % 3 == 0:
                conv.weight.copy_(rgb.repeat(1, in_channels // 3, 1, 1) / (in_channels // 3))
        net.conv1 = conv
    net.fc = nn.Identity()
    return net


class RelPoseNet(nn.Module):
    """(source, target) float images in [0, 1], B x 3 x H x W each -> twist B x 6 (target -> source)."""

    def __init__(self, fusion: str, weights: str | Path | None = None, freeze_backbone: bool = False):
        super().__init__()
        if fusion not in FUSIONS:
            raise Pix3DError(f"unknown fusion {fusion!r}; choose from {', '.join(FUSIONS)}")
        path = resolve_weights(weights)
        self.fusion = fusion
        self.pretrained = path is not None
        self.backbone = resnet18_backbone(6 if fusion == "early" else 3, path)
        self.frozen = freeze_backbone
        if freeze_backbone:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
        features = 512 if fusion == "early" else 1024
        self.head = nn.Sequential(nn.Linear(features, 256), nn.ReLU(inplace=True), nn.Linear(256, 6))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> "RelPoseNet":
        super().train(mode)
        if self.frozen:  # a frozen backbone keeps its (ImageNet) batch-norm statistics too
            self.backbone.eval()
        return self

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        source = (source - self.mean) / self.std
        target = (target - self.mean) / self.std
        if self.fusion == "early":
            features = self.backbone(torch.cat([source, target], 1))
        else:
            both = self.backbone(torch.cat([source, target], 0))  # one pass, shared weights
            features = torch.cat(both.chunk(2, 0), 1)
        return self.head(features) * TWIST_SCALE
