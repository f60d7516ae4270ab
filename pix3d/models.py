"""The pose classifiers and their registry: name -> builder + what the project knows of it.

A model is registered once, with its builder and what was published about it (its learning
rate and its ablation-table values); grids, budgets, the table and the plots read those from
here, so adding a model is one decorated function (see docs/design.md, "Adding a model").
Models defined outside the project are loaded from the modules named in the environment
variable `PIX3D_MODELS` (comma-separated), in every process that asks the registry, Ray
trials included (search.run forwards the variable).

Both published networks are reproduced layer for layer (unpadded convolutions, BatchNorm,
ReLU, 2x2 max-pooling, an FC-128 trunk and three 8-way heads: azimuth, elevation, in-plane).
The width of the first FC layer is computed from the input size, so the same code runs at the
published 224 px and at the small sizes of the CPU budget.

`QUIRKS` are four behaviours of the published code that explain its table, each switchable
alone (`seed_quirks`: True = all four, False = none, or a "+"-joined list of names):
`relu_logits`, a ReLU on the head logits (both nets); `batch_mixing`, in `separate_net` a
concatenation that flattens each branch over the whole batch before reshaping, which mixes
the features of different samples as soon as two or more modalities are used; `raw_input`,
0..255 inputs without normalisation, and `val_batching`, validation in shuffled batches of
the training batch size (both in `pix3d.train`).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from pix3d.constants import HEADS, N_BINS, Modalities
from pix3d.errors import Pix3DError

ModelBuilder = Callable[..., nn.Module]
PLUGINS_ENV = "PIX3D_MODELS"
TABLE_METRIC = "val_azimuth_acc"  # the metric of the published ablation table
# The published code's quirks, in the order a label lists them (seed_quirks=True: all four).
QUIRKS = ("relu_logits", "batch_mixing", "raw_input", "val_batching")
SeedQuirks = bool | str


def quirk_set(seed_quirks: SeedQuirks | Sequence[str]) -> frozenset[str]:
    """The quirks a `seed_quirks` value switches on: True = all, False / "" / "none" = none,
    else names joined by "+" (or a list of names); an unknown name raises, listing them."""
    if isinstance(seed_quirks, str) and seed_quirks.strip().lower() in ("true", "all", "false", "none", ""):
        seed_quirks = seed_quirks.strip().lower() in ("true", "all")  # how a tag or a command line spells them
    if isinstance(seed_quirks, bool):
        return frozenset(QUIRKS) if seed_quirks else frozenset()
    names = seed_quirks.replace(",", "+").split("+") if isinstance(seed_quirks, str) else list(seed_quirks)
    names = {n.strip() for n in names if n.strip() and n.strip() != "none"}
    unknown = sorted(names - set(QUIRKS))
    if unknown:
        raise Pix3DError(f"seed_quirks: unknown quirk {unknown[0]!r}; choose from {', '.join(QUIRKS)} "
                         "(joined by +), true (all four) or false")
    return frozenset(names)


def quirks_value(quirks) -> SeedQuirks:
    """The canonical `seed_quirks` of a set of quirks: True (all four), False (none), else
    the names in QUIRKS order joined by "+"."""
    quirks = quirk_set(quirks)
    if quirks == frozenset(QUIRKS) or not quirks:
        return bool(quirks)
    return "+".join(q for q in QUIRKS if q in quirks)


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: how to build it and what was published about it.

    `published_lr` is the learning rate the published work trained it at (None: none was
    published, so grids that use published rates need explicit ones); `published` maps a
    metric to {modality subset key: published value} (the table shows them beside ours),
    `published_epochs` the same keys to the epoch each value came from (None: found in no
    epoch of the log; a key left out: the run's final epoch) and `published_notes` to what a
    reader must know of a value (one line each, the table's footnotes).
    """

    name: str
    builder: ModelBuilder
    description: str = ""
    published_lr: float | None = None
    published: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    published_epochs: Mapping[str, Mapping[str, int | None]] = field(default_factory=dict)
    published_notes: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


_MODELS: dict[str, ModelSpec] = {}
_plugins_loaded: set[str] = set()


def register_model(name: str, *, published_lr: float | None = None,
                   published: Mapping[str, Mapping[str, float]] | None = None,
                   published_epochs: Mapping[str, Mapping[str, int | None]] | None = None,
                   published_notes: Mapping[str, Mapping[str, str]] | None = None,
                   ) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator adding a builder (and what was published about it) to the registry.

    The builder is called as `builder(modalities, image_size=..., seed_quirks=...)` with the
    modalities in canonical order (`seed_quirks` a bool, or a "+"-joined list of QUIRKS:
    `quirk_set` reads it). A second builder under one name is a bug.
    """

    def decorate(builder: ModelBuilder) -> ModelBuilder:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        doc = (builder.__doc__ or "").strip().splitlines()
        _MODELS[name] = ModelSpec(name, builder, doc[0] if doc else "", published_lr,
                                  {k: dict(v) for k, v in (published or {}).items()},
                                  {k: dict(v) for k, v in (published_epochs or {}).items()},
                                  {k: dict(v) for k, v in (published_notes or {}).items()})
        return builder

    return decorate


def load_plugins() -> None:
    """Import the modules named in PIX3D_MODELS (once each): they register their models."""
    for module in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
        if module in _plugins_loaded:
            continue
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - any import failure is the user's module
            raise Pix3DError(f"{PLUGINS_ENV}: cannot import {module!r} ({type(exc).__name__}: {exc})") from None
        _plugins_loaded.add(module)


def list_models() -> list[str]:
    """Registered model names, in registration order (the table's row order)."""
    load_plugins()
    return list(_MODELS)


def model_spec(name: str) -> ModelSpec:
    """The registration of model `name`; a Pix3DError listing the registered ones if unknown."""
    load_plugins()
    if name not in _MODELS:
        raise Pix3DError(f"unknown model {name!r}; choose from {', '.join(list_models())}")
    return _MODELS[name]


def published_lr(name: str) -> float:
    """The learning rate model `name` was published at; a Pix3DError when none was."""
    lr = model_spec(name).published_lr
    if lr is None:
        raise Pix3DError(f"model {name!r} has no published learning rate; give one (--lr, or a grid with lrs)")
    return lr


def published_value(name: str, metric: str, subset_key: str) -> float | None:
    """The published value of `metric` for model `name` on a modality subset, if any."""
    load_plugins()
    spec = _MODELS.get(name)
    return spec.published.get(metric, {}).get(subset_key) if spec else None


FINAL = "final"  # published_epoch's answer for a value from the run's last epoch


def published_epoch(name: str, metric: str, subset_key: str) -> int | str | None:
    """The epoch model `name`'s published value of `metric` on a subset came from: a number,
    FINAL (its registration names none: the last epoch), or None (found in no epoch)."""
    load_plugins()
    spec = _MODELS.get(name)
    epochs = spec.published_epochs.get(metric, {}) if spec else {}
    return epochs.get(subset_key, FINAL)


def published_note(name: str, metric: str, subset_key: str) -> str | None:
    """What a reader must know of a published value (None: nothing)."""
    load_plugins()
    spec = _MODELS.get(name)
    return spec.published_notes.get(metric, {}).get(subset_key) if spec else None


def get_model(
    name: str,
    modalities: str | Sequence[str],
    *,
    image_size: int = 224,
    seed_quirks: SeedQuirks = False,
) -> nn.Module:
    """Build model `name` for `modalities` (canonical order) and square inputs of `image_size`.

    Raises Pix3DError for an unknown name (listing the registered ones), a bad modality list,
    or an input too small for the unpadded convolutions.
    """
    spec = model_spec(name)
    try:
        mods = Modalities(modalities)
    except ValueError as exc:
        raise Pix3DError(f"modalities: {exc}") from None
    return spec.builder(mods, image_size=int(image_size), seed_quirks=quirks_value(seed_quirks))


# --------------------------------------------------------------------------- building blocks

def conv_block(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    """conv (no padding) -> BN -> ReLU -> max-pool 2: the unit both published nets stack."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


def conv_stack(in_channels: int, widths: Sequence[int], kernel_sizes: Sequence[int]) -> nn.Sequential:
    """conv_blocks of the given output widths and kernels, each fed by the one before."""
    blocks = []
    for out, k in zip(widths, kernel_sizes):
        blocks.append(conv_block(in_channels, out, k))
        in_channels = out
    return nn.Sequential(*blocks)


def feature_map_size(image_size: int, kernel_sizes: Sequence[int]) -> int:
    """Side of the last feature map after unpadded conv(k) + max-pool 2 stages.

    Pure arithmetic, so FC widths at 224 px are known without a 224 px forward pass.
    """
    side = image_size
    for k in kernel_sizes:
        side = (side - k + 1) // 2
    return side


def minimum_image_size(kernel_sizes: Sequence[int]) -> int:
    """Smallest input side for which every stage still has a >= 1 px output."""
    side = 1
    for k in reversed(kernel_sizes):
        side = 2 * side + k - 1
    return side


def _check_size(name: str, image_size: int, kernel_sizes: Sequence[int]) -> int:
    side = feature_map_size(image_size, kernel_sizes)
    if side < 1:
        raise Pix3DError(
            f"image_size {image_size} is too small for {name} (unpadded convolutions need "
            f">= {minimum_image_size(kernel_sizes)} px)"
        )
    return side


class PoseHeads(nn.Module):
    """Three independent FC(features -> N_BINS) heads stacked as B x 3 x N_BINS logits."""

    def __init__(self, in_features: int, relu_on_logits: bool):
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(in_features, N_BINS) for _ in HEADS)
        # The published code ended each head with a ReLU, which clamps every negative logit
        # to 0; kept only under the relu_logits quirk so its table can be explained.
        self.relu_on_logits = relu_on_logits

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logits = torch.stack([head(features) for head in self.heads], dim=1)
        return torch.relu(logits) if self.relu_on_logits else logits


# --------------------------------------------------------------------------- combined_net

COMBINED_KERNELS = (7, 7, 3, 3)
COMBINED_WIDTHS = (64, 256, 256, 8)


class CombinedNet(nn.Module):
    """Early fusion: every chosen modality stacked as channels into one CNN."""

    def __init__(self, modalities: Modalities, image_size: int, seed_quirks: SeedQuirks):
        super().__init__()
        self.modalities = modalities
        side = _check_size("combined_net", image_size, COMBINED_KERNELS)
        self.features = conv_stack(len(Modalities(modalities).channels), COMBINED_WIDTHS, COMBINED_KERNELS)
        self.fc_in_features = COMBINED_WIDTHS[-1] * side * side  # 968 at 224 px
        self.trunk = nn.Sequential(nn.Linear(self.fc_in_features, 128), nn.ReLU(inplace=True))
        self.heads = PoseHeads(128, relu_on_logits="relu_logits" in quirk_set(seed_quirks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x).flatten(1)
        return self.heads(self.trunk(features))


# Published azimuth accuracy (%, 8 bins, the notebook's 1,002 validation images) per modality
# subset, with the epoch of the notebook's 25-epoch log each came from (read from its saved
# outputs): five are epoch-25 values; two are epoch 24; one is in no epoch of its model's log.
@register_model("combined_net", published_lr=1e-5, published={TABLE_METRIC: {
    "rgb": 56.8862, "rgb+mask": 72.0559, "rgb+mask+boundaries": 64.3713, "rgb+mask+boundaries+normals": 65.5329}},
    published_epochs={TABLE_METRIC: {"rgb": 25, "rgb+mask": 24, "rgb+mask+boundaries": None,
                                     "rgb+mask+boundaries+normals": 25}},
    published_notes={TABLE_METRIC: {
        "rgb+mask": "the epoch-24 value of the notebook's log (its final, epoch 25: 70.66)",
        "rgb+mask+boundaries": "appears nowhere in that model's log (its maximum over the 25 epochs is 57.39)",
        "rgb+mask+boundaries+normals": "not k/1002 for any k: not an accuracy over the 1,002 validation images",
    }})
def combined_net(modalities: tuple[str, ...], *, image_size: int = 224, seed_quirks: SeedQuirks = False) -> nn.Module:
    """The published early-fusion network (conv 64/7, 256/7, 256/3, 8/3 -> FC 128 -> 3 heads)."""
    return CombinedNet(modalities, image_size, seed_quirks)


# --------------------------------------------------------------------------- separate_net

SEPARATE_KERNELS = (7, 7, 3)
SEPARATE_WIDTHS = (32, 64, 8)


class ModalityBranch(nn.Module):
    """One modality's small CNN (conv 32/7, 64/7, 8/3) -> FC 128 + ReLU."""

    def __init__(self, in_channels: int, side: int):
        super().__init__()
        self.features = conv_stack(in_channels, SEPARATE_WIDTHS, SEPARATE_KERNELS)
        self.fc_in_features = SEPARATE_WIDTHS[-1] * side * side  # 4608 at 224 px
        self.fc = nn.Sequential(nn.Linear(self.fc_in_features, 128), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))


class SeparateNet(nn.Module):
    """Late fusion: one branch per modality, the 128-d features concatenated per sample."""

    def __init__(self, modalities: tuple[str, ...], image_size: int, seed_quirks: SeedQuirks):
        super().__init__()
        self.modalities = modalities
        side = _check_size("separate_net", image_size, SEPARATE_KERNELS)
        # Channel slices of the stacked input, one per modality, in canonical order.
        self.channel_slices: list[tuple[int, int]] = list(Modalities(modalities).spans)
        self.branches = nn.ModuleDict(
            {m: ModalityBranch(b - a, side) for m, (a, b) in zip(modalities, self.channel_slices)}
        )
        quirks = quirk_set(seed_quirks)
        self.batch_mixing = "batch_mixing" in quirks
        self.heads = PoseHeads(128 * len(modalities), relu_on_logits="relu_logits" in quirks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        per_branch = [
            self.branches[m](x[:, a:b]) for m, (a, b) in zip(self.modalities, self.channel_slices)
        ]
        batch = x.shape[0]
        if self.batch_mixing:
            # Published behaviour: each branch flattened over the whole batch, the flat
            # vectors concatenated, then reshaped to B x (n*128). Row i then holds features
            # of samples n*i .. n*i+n-1 of the first branch(es), not sample i's own: the
            # batch is mixed whenever n >= 2 (with n == 1 it is the identity).
            fused = torch.cat([f.reshape(-1) for f in per_branch]).reshape(batch, -1)
        else:
            fused = torch.cat(per_branch, dim=1)
        return self.heads(fused)


@register_model("separate_net", published_lr=1e-3, published={TABLE_METRIC: {
    "rgb": 50.7984, "rgb+mask": 36.9261, "rgb+mask+boundaries": 38.1238, "rgb+mask+boundaries+normals": 41.1178}},
    published_epochs={TABLE_METRIC: {"rgb": 25, "rgb+mask": 25, "rgb+mask+boundaries": 25,
                                     "rgb+mask+boundaries+normals": 24}},
    published_notes={TABLE_METRIC: {
        "rgb+mask+boundaries+normals": "the epoch-24 value of the notebook's log (its final, epoch 25: 36.53)",
    }})
def separate_net(modalities: tuple[str, ...], *, image_size: int = 224, seed_quirks: SeedQuirks = False) -> nn.Module:
    """The published late-fusion network (per modality conv 32/7, 64/7, 8/3 -> FC 128)."""
    return SeparateNet(modalities, image_size, seed_quirks)
