"""Relative-pose networks: early or late fusion of two views over a ResNet-18 or AlexNet backbone.

- `early`: both RGB images stacked as 6 channels into one backbone. With ImageNet weights the
  first convolution's RGB filters are copied to both halves and halved, so at the start it
  sees the mean of the two images exactly as the ImageNet model would.
- `late`: one backbone (shared weights, a siamese pair) per image, the two feature vectors
  (512-d for ResNet-18, 256-d for AlexNet) concatenated.

AlexNet (the backbone of the seed study) is torchvision's convolutional part without its last
max-pool, globally average-pooled: so it accepts the 32-128 px pairs here (its classifier
needs 224 px) and keeps every ImageNet-trained filter.

Both end in an MLP that outputs a twist (v, omega) for `pix3d.geometry.se3_exp`, scaled
down and zero-initialised so training starts at the identity motion.

ImageNet weights never come from the network: `weights` is a path to a torchvision
state_dict of the backbone, or "imagenet" for torchvision's own file in the torch hub cache
(`<torch.hub.get_dir()>/checkpoints/resnet18-f37072fd.pth` or `alexnet-owt-7be5be79.pth`),
or None (from scratch).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pix3d.errors import Pix3DError

FUSIONS = ("early", "late")
BACKBONES = ("resnet18", "alexnet")
# torchvision's file names for ResNet18_Weights.IMAGENET1K_V1 and AlexNet_Weights.IMAGENET1K_V1.
IMAGENET_FILES = {"resnet18": "resnet18-f37072fd.pth", "alexnet": "alexnet-owt-7be5be79.pth"}
IMAGENET_FILE = IMAGENET_FILES["resnet18"]
FEATURES = {"resnet18": 512, "alexnet": 256}
NAMES = {"resnet18": "ResNet-18", "alexnet": "AlexNet"}  # as messages name them
# Keys a state_dict must have to be the backbone's (its first and last convolutions).
_REQUIRED_KEYS = {"resnet18": ("conv1.weight", "layer4.1.bn2.weight"),
                  "alexnet": ("features.0.weight", "features.10.weight")}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Output scale: a unit network output is 0.1 m of translation or 0.1 rad (5.7 deg) of rotation.
TWIST_SCALE = 0.1


def _check_backbone(backbone: str) -> None:
    if backbone not in BACKBONES:
        raise Pix3DError(f"unknown backbone {backbone!r}; choose from {', '.join(BACKBONES)}")


def imagenet_weights_path(backbone: str = "resnet18") -> Path:
    _check_backbone(backbone)
    return Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_FILES[backbone]


def resolve_weights(weights: str | Path | None, backbone: str = "resnet18") -> Path | None:
    """None/'none' -> None; 'imagenet' -> the torch hub cache file; else the path (must exist)."""
    if weights is None or str(weights) in ("", "none"):
        return None
    path = imagenet_weights_path(backbone) if str(weights) == "imagenet" else Path(weights)
    if not path.is_file():
        hint = (f" (nothing is downloaded: copy torchvision's {NAMES[backbone]} ImageNet file there, or pass "
                "--weights PATH)") if str(weights) == "imagenet" else ""
        raise Pix3DError(f"weights file {path} does not exist{hint}")
    return path


def load_backbone_state(path: Path, backbone: str = "resnet18") -> dict:
    """The state_dict in `path`, checked to be `backbone`'s (a torchvision file, or one wrapped
    as {"state_dict": ...})."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise Pix3DError(f"weights file {path} is not a torch state_dict ({type(exc).__name__}: {exc})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    first, last = _REQUIRED_KEYS[backbone]
    if not isinstance(state, dict) or first not in state or last not in state:
        raise Pix3DError(f"weights file {path} is not a {NAMES[backbone]} state_dict (no {first} / {last} keys)")
    return state


def _widen_first_conv(conv: nn.Conv2d, in_channels: int, pretrained: bool) -> nn.Conv2d:
    """`conv` for `in_channels` inputs; pretrained RGB filters are copied to each group of 3
    channels and divided by the number of groups (so stacked copies of one image give the
    ImageNet response)."""
    wide = nn.Conv2d(in_channels, conv.out_channels, kernel_size=conv.kernel_size, stride=conv.stride,
                     padding=conv.padding, bias=conv.bias is not None)
    with torch.no_grad():
        if pretrained and in_channels % 3 == 0:
            wide.weight.copy_(conv.weight.detach().repeat(1, in_channels // 3, 1, 1) / (in_channels // 3))
            if conv.bias is not None:
                wide.bias.copy_(conv.bias.detach())
    return wide


def _load_imagenet(net: nn.Module, weights: Path, backbone: str, label: str, *, classifier: str) -> None:
    """Load torchvision's ImageNet state_dict into `net`; only the classifier's keys (under
    `classifier`, which the backbone drops) may go unused, anything else is a wrong file."""
    state = load_backbone_state(weights, backbone)
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or [k for k in unexpected if not k.startswith(classifier)]:
        raise Pix3DError(f"weights file {weights} does not match {label}: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")


def resnet18_backbone(in_channels: int, weights: Path | None) -> nn.Module:
    """ResNet-18 without its classifier (outputs 512-d), optionally from an ImageNet state_dict."""
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    if weights is not None:
        _load_imagenet(net, weights, "resnet18", "ResNet-18", classifier="fc.")
    if in_channels != 3:
        net.conv1 = _widen_first_conv(net.conv1, in_channels, weights is not None)
    net.fc = nn.Identity()
    return net


def alexnet_backbone(in_channels: int, weights: Path | None) -> nn.Module:
    """AlexNet's convolutions (outputs 256-d after a global average pool), optionally from an
    ImageNet state_dict; its classifier is dropped."""
    from torchvision.models import alexnet  # torchvision is heavy: only when a net is built

    net = alexnet(weights=None)
    if weights is not None:
        _load_imagenet(net, weights, "alexnet", "AlexNet", classifier="classifier.")
    # Without the last max-pool: a 32 px input still leaves a 1 x 1 map after conv5.
    layers = list(net.features.children())[:-1]
    if in_channels != 3:
        layers[0] = _widen_first_conv(layers[0], in_channels, weights is not None)
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())


BUILDERS = {"resnet18": resnet18_backbone, "alexnet": alexnet_backbone}


class RelPoseNet(nn.Module):
    """(source, target) float images in [0, 1], B x 3 x H x W each -> twist B x 6 (target -> source)."""

    def __init__(self, fusion: str, weights: str | Path | None = None, freeze_backbone: bool = False,
                 backbone: str = "resnet18"):
        super().__init__()
        if fusion not in FUSIONS:
            raise Pix3DError(f"unknown fusion {fusion!r}; choose from {', '.join(FUSIONS)}")
        _check_backbone(backbone)
        path = resolve_weights(weights, backbone)
        self.fusion = fusion
        self.pretrained = path is not None
        self.backbone = BUILDERS[backbone](6 if fusion == "early" else 3, path)
        self.frozen = freeze_backbone
        if freeze_backbone:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
        features = FEATURES[backbone] * (1 if fusion == "early" else 2)
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
