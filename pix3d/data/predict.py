"""Surface normals and boundaries predicted from real photos, as the published pipeline made them.

The published work ran visualpriors' `feature_readout(x, 'normal')` and
`feature_readout(x, 'edge_texture')` (the Taskonomy networks of Sax et al.) on the bbox crop
of each photo, resized so that its shorter side is 224 px and scaled to [-1, 1], and stored
the readout as a PNG of `pred / 2 + 0.5`. This module owns that pipeline without letting
visualpriors download anything: it builds the same networks (`TaskonomyNetwork`: the
ResNet-like encoder and the pixel decoder, tanh output) from visualpriors' classes, and
loads their checkpoints from a folder on disk (`weights_dir`, `$PIX3D_VISUALPRIORS_DIR`,
else torch's hub `checkpoints/` folder, where visualpriors' own `model_zoo.load_url` would
have cached them under the same file names).

  missing_weights(feature, weights_dir)   None, or one line naming the absent files, the
                                          folder to put them in and the URLs to fetch once
  predict_crop(rgb_crop, feature, ...)    the readout of one crop at the crop's size, uint8
  load_network(feature, ...)              the network, loaded once per process and device

One departure from `feature_readout`: its decoder crops every upsampling step to a square
(visualpriors' `Scissor` cuts both axes to the height), so on a crop that is not square it
returns only the top / left square of the crop. Here a non-square crop is covered by square
224 px windows along its longer side (each exactly what the published network saw for a
square crop) and overlaps are averaged. Normals stay in Taskonomy's encoding, unconverted,
as the published PNGs were (x right, y down, z towards the camera; `store_readout`): the
one encoding of the normals modality, which oracle renders and the built-in set's normals/
files use too (`pix3d.render.shading.normals_to_rgb`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pix3d.errors import Pix3DError, one_line
from pix3d.render.shading import readout_to_uint8

# feature -> channels of its readout (visualpriors' TASKS_TO_CHANNELS)
FEATURES = {"normal": 3, "edge_texture": 1}
PARTS = ("encoder", "decoder")
WEIGHTS_ENV = "PIX3D_VISUALPRIORS_DIR"
PUBLISHED_SIZE = 224  # the shorter side of the crop the published code fed the network


class WeightsError(Pix3DError):
    """The visualpriors checkpoints are absent, unreadable or not those of the network."""


def _vp():
    """visualpriors' network module (imported on first use: the rest of pix3d runs without it)."""
    try:
        from visualpriors import taskonomy_network
    except ImportError as exc:
        raise Pix3DError(f"predicting normals and boundaries needs the visualpriors package "
                         f"(pip install visualpriors==0.3.5): {one_line(exc)}") from None
    return taskonomy_network


def _check_feature(feature: str) -> None:
    if feature not in FEATURES:
        raise Pix3DError(f"unknown feature {feature!r}: predict_crop knows {', '.join(FEATURES)}")


def checkpoint_urls(feature: str) -> dict[str, str]:
    """{'encoder': url, 'decoder': url} of a feature, as visualpriors' feature_readout fetches them."""
    _check_feature(feature)
    urls = _vp().TASKONOMY_PRETRAINED_URLS
    return {part: urls[f"{feature}_{part}"] for part in PARTS}


def checkpoint_names(feature: str) -> dict[str, str]:
    """{'encoder': file name, 'decoder': file name}: the URLs' last parts, which torch's
    model_zoo uses as the cached files' names."""
    return {part: url.rsplit("/", 1)[1] for part, url in checkpoint_urls(feature).items()}


def default_weights_dir() -> Path:
    """`$PIX3D_VISUALPRIORS_DIR`, else torch's hub checkpoints folder
    (`$TORCH_HOME/hub/checkpoints`, default `~/.cache/torch/hub/checkpoints`)."""
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        return Path(env).expanduser()
    return Path(torch.hub.get_dir()) / "checkpoints"


def _weights_dir(weights_dir: Path | str | None) -> Path:
    return Path(weights_dir).expanduser() if weights_dir is not None else default_weights_dir()


def missing_weights(feature: str, weights_dir: Path | None = None) -> str | None:
    """None when the encoder and decoder checkpoints of `feature` are in the folder; else one
    line naming the absent file(s), the folder to put them in and the URL(s) to fetch once."""
    folder = _weights_dir(weights_dir)
    urls = checkpoint_urls(feature)
    absent = [part for part in PARTS if not (folder / checkpoint_names(feature)[part]).is_file()]
    if not absent:
        return None
    names = " and ".join(checkpoint_names(feature)[p] for p in absent)
    fetch = " and ".join(urls[p] for p in absent)
    return (f"visualpriors {feature} weights missing: put {names} in {folder} "
            f"(set {WEIGHTS_ENV} for another folder); fetch once from {fetch}")


def build_network(feature: str) -> torch.nn.Module:
    """The network feature_readout builds for `feature`, with random weights, in eval mode."""
    _check_feature(feature)
    vp = _vp()
    net = vp.TaskonomyNetwork(out_channels=FEATURES[feature], is_decoder_mlp=False,
                              apply_tanh=feature not in vp.DONT_APPLY_TANH_TASKS)
    return net.eval()


def _read_state(path: Path, feature: str, part: str, module: torch.nn.Module) -> dict:
    """The checkpoint's state_dict, checked key by key and shape by shape against `module`."""
    what = f"{path}: not a visualpriors {feature} {part} checkpoint"
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise WeightsError(f"{what} (unreadable: {one_line(exc)}); fetch it again from "
                           f"{checkpoint_urls(feature)[part]}") from None
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise WeightsError(f"{what} (no 'state_dict' in it)")
    expected = module.state_dict()
    # Checkpoints written before BatchNorm counted its batches lack num_batches_tracked.
    absent = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    extra = [k for k in state if k not in expected]
    wrong = [f"{k} is {tuple(v.shape)}, expected {tuple(expected[k].shape)}"
             for k, v in state.items()
             if k in expected and (not torch.is_tensor(v) or v.shape != expected[k].shape)]
    problems = ([f"{len(absent)} missing tensor(s), e.g. {absent[0]}"] if absent else []) + \
               ([f"{len(extra)} unexpected tensor(s), e.g. {extra[0]}"] if extra else []) + \
               ([f"{len(wrong)} of the wrong shape, e.g. {wrong[0]}"] if wrong else [])
    if problems:
        raise WeightsError(f"{what} ({'; '.join(problems)})")
    return state


# (feature, resolved weights folder, device) -> the loaded network
_NETWORKS: dict[tuple[str, str, str], torch.nn.Module] = {}


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_network(feature: str, weights_dir: Path | None = None,
                 device: torch.device | str | None = None) -> torch.nn.Module:
    """The `feature` network with its checkpoints from `weights_dir`, on `device` (CUDA when
    there is one), in eval mode without gradients; loaded once per process, then reused."""
    _check_feature(feature)
    folder = _weights_dir(weights_dir)
    device = torch.device(device) if device is not None else _device()
    key = (feature, str(folder.absolute()), str(device))
    if key in _NETWORKS:
        return _NETWORKS[key]
    message = missing_weights(feature, folder)
    if message:
        raise WeightsError(message)
    net = build_network(feature)
    names = checkpoint_names(feature)
    for part in PARTS:
        module = getattr(net, part)
        module.load_state_dict(_read_state(folder / names[part], feature, part, module),
                               strict=False)  # strict checks done in _read_state
    net.requires_grad_(False)
    net = net.to(device).eval()
    _NETWORKS[key] = net
    return net


def clear_networks() -> None:
    """Forget the loaded networks (they are reloaded on next use)."""
    _NETWORKS.clear()


def _windows(length: int, side: int) -> list[int]:
    """Start offsets of square windows of `side` that cover `length` (first and last flush)."""
    if length <= side:
        return [0]
    count = math.ceil(length / side)
    return sorted({round(i * (length - side) / (count - 1)) for i in range(count)})


def predict_crop(rgb_crop: np.ndarray, feature: str, weights_dir: Path | None = None) -> np.ndarray:
    """The published readout of `feature` for one bbox crop (H x W x 3 uint8), at the crop's size.

    Returns uint8 `pred / 2 + 0.5` scaled to 0..255: H x W x 3 for 'normal', H x W for
    'edge_texture'. The crop is resized (bilinear) so that its shorter side is 224 px, scaled
    to [-1, 1] and run through the network; the readout is resized back to H x W.
    """
    _check_feature(feature)
    crop = np.asarray(rgb_crop)
    if crop.ndim != 3 or crop.shape[2] != 3 or crop.dtype != np.uint8 or min(crop.shape[:2]) < 1:
        raise Pix3DError(f"predict_crop needs an H x W x 3 uint8 RGB crop, got "
                         f"{crop.dtype} array of shape {crop.shape}")
    net = load_network(feature, weights_dir)
    device = next(net.parameters()).device
    h, w = crop.shape[:2]
    side = PUBLISHED_SIZE
    # torchvision's Resize(224) rule: the shorter side becomes 224, the longer one scales
    # with it (truncated).
    size = (side, int(side * w / h)) if h <= w else (int(side * h / w), side)
    resized = Image.fromarray(crop).resize((size[1], size[0]), Image.Resampling.BILINEAR)
    x = torch.from_numpy(np.asarray(resized, dtype=np.float32)).permute(2, 0, 1) / 255.0 * 2.0 - 1.0
    along_width = size[1] >= size[0]
    long = size[1] if along_width else size[0]
    starts = _windows(long, side)
    tiles = torch.stack([x[:, :, s:s + side] if along_width else x[:, s:s + side, :]
                         for s in starts]).to(device)
    with torch.no_grad():
        preds = net(tiles).float().cpu()  # windows x C x 224 x 224, in [-1, 1]
    total = torch.zeros(preds.shape[1], *size)
    count = torch.zeros(1, *size)
    for s, pred in zip(starts, preds):
        if along_width:
            total[:, :, s:s + side] += pred
            count[:, :, s:s + side] += 1
        else:
            total[:, s:s + side, :] += pred
            count[:, s:s + side, :] += 1
    readout = (total / count)[None]
    if (h, w) != size:
        readout = F.interpolate(readout, size=(h, w), mode="bilinear", align_corners=False,
                                antialias=h < size[0])
    out = store_readout(readout[0])
    return out[:, :, 0].copy() if FEATURES[feature] == 1 else out


def store_readout(readout: torch.Tensor) -> np.ndarray:
    """A readout C x H x W in [-1, 1] as the published PNGs stored it, H x W x C uint8:
    `pred / 2 + 0.5` scaled to 0..255 (`pix3d.render.shading.readout_to_uint8`, which the
    oracle's and the built-in set's normals are encoded with too)."""
    return np.ascontiguousarray(readout_to_uint8(readout.float().permute(1, 2, 0).cpu().numpy()))
