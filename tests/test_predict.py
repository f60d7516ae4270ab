"""The published normals / boundaries pipeline (pix3d.data.predict), with self-saved weights.

The real Taskonomy checkpoints cannot be fetched on the test machine, so the networks are
built from visualpriors' own classes with random weights and saved here in visualpriors'
checkpoint format ({'state_dict': ...} under the file names its URLs end in). That checks
the plumbing (file names, loading, preprocessing, windows, output encoding, errors,
caching), not what the real weights predict. Expected readouts are computed here from the
network and the published formula, not through the code under test.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from PIL import Image

from pix3d.data import predict
from pix3d.errors import Pix3DError

visualpriors = pytest.importorskip("visualpriors")
from visualpriors.taskonomy_network import TaskonomyNetwork  # noqa: E402


def _save(net, feature, folder):
    urls = visualpriors.taskonomy_network.TASKONOMY_PRETRAINED_URLS
    for part in ("encoder", "decoder"):
        name = urls[f"{feature}_{part}"].rsplit("/", 1)[1]
        torch.save({"state_dict": getattr(net, part).state_dict()}, folder / name)


def _calibrate(net):
    """BatchNorm statistics measured on random images: with the initial ones (mean 0, var 1)
    the signal dies out over ~60 random layers and the readout hardly depends on the input."""
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a plain average over the calibration batch
        m.training = True  # not net.train(): visualpriors' encoder refuses train mode
    with torch.no_grad():
        net(torch.rand(4, 3, 64, 64) * 2 - 1)
    for m in norms:
        m.training = False


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A folder with random-weight normal and edge_texture checkpoints; the nets themselves."""
    folder = tmp_path_factory.mktemp("visualpriors")
    torch.manual_seed(0)
    nets = {}
    for feature, channels in (("normal", 3), ("edge_texture", 1)):
        net = TaskonomyNetwork(out_channels=channels).eval()
        _calibrate(net)
        _save(net, feature, folder)
        nets[feature] = net
    predict.clear_networks()
    yield folder, nets
    predict.clear_networks()


def _published(net, rgb_224: np.ndarray) -> np.ndarray:
    """The published readout of a 224 x 224 crop: x in [-1, 1], PNG of pred / 2 + 0.5."""
    x = torch.from_numpy(rgb_224.astype(np.float32)).permute(2, 0, 1)[None] / 255.0 * 2 - 1
    with torch.no_grad():
        pred = net(x)[0]
    out = ((pred / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return out[:, :, 0] if out.shape[2] == 1 else out


def test_missing_weights_names_files_folder_and_urls(tmp_path, monkeypatch):
    message = predict.missing_weights("normal", tmp_path)
    assert message is not None and "\n" not in message
    assert str(tmp_path) in message
    assert "normal_encoder-f5e2c7737e49" in message and "normal_decoder-8f18bfb30ee7" in message
    assert "https://github.com/alexsax/visual-prior/raw/networks/assets/pytorch/normal_encoder-" in message
    # One present, one absent: only the absent one is named.
    names = predict.checkpoint_names("edge_texture")
    (tmp_path / names["encoder"]).write_bytes(b"x")
    message = predict.missing_weights("edge_texture", tmp_path)
    assert names["decoder"] in message and names["encoder"] not in message
    (tmp_path / names["decoder"]).write_bytes(b"x")
    assert predict.missing_weights("edge_texture", tmp_path) is None
    # The default folder: the environment variable, else torch's hub checkpoints.
    monkeypatch.setenv(predict.WEIGHTS_ENV, str(tmp_path))
    assert predict.missing_weights("edge_texture") is None
    assert predict.missing_weights("normal") is not None
    monkeypatch.delenv(predict.WEIGHTS_ENV)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    assert predict.default_weights_dir() == tmp_path / "th" / "hub" / "checkpoints"
    with pytest.raises(Pix3DError, match="unknown feature 'depth'"):
        predict.missing_weights("depth", tmp_path)


def test_predict_without_weights_is_one_line(tmp_path):
    predict.clear_networks()
    crop = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(predict.WeightsError) as err:
        predict.predict_crop(crop, "normal", tmp_path)
    assert "\n" not in str(err.value) and str(tmp_path) in str(err.value)


def test_corrupt_and_wrong_checkpoints_are_one_line(tmp_path):
    predict.clear_networks()
    names = predict.checkpoint_names("normal")
    net = TaskonomyNetwork(out_channels=3)
    torch.save({"state_dict": net.encoder.state_dict()}, tmp_path / names["encoder"])
    (tmp_path / names["decoder"]).write_bytes(b"not a checkpoint")
    with pytest.raises(predict.WeightsError) as err:
        predict.load_network("normal", tmp_path, "cpu")
    text = str(err.value)
    assert "\n" not in text and names["decoder"] in text and "unreadable" in text
    # A decoder of the wrong task (1 output channel) under the normal decoder's name.
    wrong = TaskonomyNetwork(out_channels=1)
    torch.save({"state_dict": wrong.decoder.state_dict()}, tmp_path / names["decoder"])
    with pytest.raises(predict.WeightsError, match=r"decoder_output.0.weight is \(1, 16, 3, 3\), "
                                                   r"expected \(3, 16, 3, 3\)") as err:
        predict.load_network("normal", tmp_path, "cpu")
    assert "\n" not in str(err.value)
    # A state dict saved bare (no 'state_dict' key) is refused too.
    torch.save(net.decoder.state_dict(), tmp_path / names["decoder"])
    with pytest.raises(predict.WeightsError, match="no 'state_dict'"):
        predict.load_network("normal", tmp_path, "cpu")
    assert not predict._NETWORKS  # nothing half-loaded was kept


def test_bad_crop_is_refused(weights):
    folder, _ = weights
    for bad in (np.zeros((8, 8), np.uint8), np.zeros((8, 8, 3), np.float32), np.zeros((0, 8, 3), np.uint8)):
        with pytest.raises(Pix3DError, match="H x W x 3 uint8"):
            predict.predict_crop(bad, "normal", folder)


def test_square_crop_is_the_published_readout_and_cached(weights):
    """A 224 x 224 crop: exactly the published formula; loaded once, deterministic."""
    folder, nets = weights
    rng = np.random.default_rng(1)
    crop = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    started = time.perf_counter()
    normal = predict.predict_crop(crop, "normal", folder)
    seconds = time.perf_counter() - started
    assert normal.shape == (224, 224, 3) and normal.dtype == np.uint8
    expected = _published(nets["normal"], crop)
    assert np.abs(normal.astype(int) - expected.astype(int)).max() <= 1
    # The readout depends on the input (else the comparison above would prove little).
    other = predict.predict_crop(255 - crop, "normal", folder)
    assert np.abs(normal.astype(int) - other.astype(int)).mean() > 5
    net = predict.load_network("normal", folder)
    assert predict.load_network("normal", folder) is net and not net.training
    assert not any(p.requires_grad for p in net.parameters())
    assert len(predict._NETWORKS) == 1
    again = predict.predict_crop(crop, "normal", folder)
    assert np.array_equal(normal, again) and len(predict._NETWORKS) == 1
    print(f"one 224 px forward pass: {seconds:.1f} s")


@pytest.mark.slow  # seven forward passes of a ResNet-50-sized net: ~20 s on 2 CPU cores
def test_edges_small_and_wide_crops(weights):
    """edge_texture is one channel; any crop comes back at its own size; a 1:2 crop is two
    published windows side by side."""
    folder, nets = weights
    rng = np.random.default_rng(2)
    square = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    edges = predict.predict_crop(square, "edge_texture", folder)
    assert edges.shape == (224, 224) and edges.dtype == np.uint8
    assert np.abs(edges.astype(int) - _published(nets["edge_texture"], square).astype(int)).max() <= 1
    small = rng.integers(0, 256, (17, 29, 3), dtype=np.uint8)
    out = predict.predict_crop(small, "edge_texture", folder)
    assert out.shape == (17, 29) and out.dtype == np.uint8
    wide = rng.integers(0, 256, (224, 448, 3), dtype=np.uint8)
    out = predict.predict_crop(wide, "normal", folder)
    assert out.shape == (224, 448, 3)
    for half in (slice(0, 224), slice(224, 448)):
        expected = _published(nets["normal"], np.ascontiguousarray(wide[:, half]))
        assert np.abs(out[:, half].astype(int) - expected.astype(int)).max() <= 1
    tall = np.ascontiguousarray(wide.transpose(1, 0, 2))
    out = predict.predict_crop(tall, "normal", folder)
    assert out.shape == (448, 224, 3)
    expected = _published(nets["normal"], np.ascontiguousarray(tall[224:]))
    assert np.abs(out[224:].astype(int) - expected.astype(int)).max() <= 1


def test_prepare_with_predict_caches_the_readouts_of_the_rgb(weights, tmp_path, monkeypatch):
    """`prepare --normals predict --boundaries predict` with self-saved weights: both maps come
    from the network run on each entry's cropped RGB, are labelled as predicted in the manifest,
    and differ from the folder's own normals files; auto takes the files where they exist."""
    from pix3d.constants import MODALITY_CHANNELS
    from pix3d.data.images import crop_box, crop_resize
    from pix3d.data.prepare import prepare
    from tests.test_oracle import two_entry_folder

    folder, nets = weights
    monkeypatch.setenv(predict.WEIGHTS_ENV, str(folder))
    root = two_entry_folder(tmp_path / "set")
    data = prepare(root, 48, cache_dir=tmp_path / "cache", progress=False, workers=1, log=lambda _: None,
                   normals="predict", boundaries="predict")
    m = data.manifest
    assert "predicted" in m["sources"]["normals"] and "normal" in m["sources"]["normals"]
    assert "predicted" in m["sources"]["boundaries"] and m["available"]["normals"] and m["available"]["boundaries"]
    images = np.asarray(data.images)
    entries = json.loads((root / "pix3d.json").read_text())
    for row, entry in enumerate(entries):  # prepare keeps the json's order here (nothing skipped)
        # As published: the photo's crop (the cache's window: bbox + 10% margin, squared) at 224 px,
        # decoded as every cache crop is; not the 48 px cache crop upsampled.
        window = crop_box(entry["bbox"], 0.1)
        crop = crop_resize(root / entry["img"], window, tuple(entry["img_size"]), 224, "rgb").transpose(1, 2, 0)
        small = crop_resize(root / entry["img"], window, tuple(entry["img_size"]), 48, "rgb")
        np.testing.assert_array_equal(images[row, :3], small)  # the row is this entry
        for name, feature in (("normals", "normal"), ("boundaries", "edge_texture")):
            a, b = MODALITY_CHANNELS[name]
            readout = predict.predict_crop(np.ascontiguousarray(crop), feature)
            expected = np.asarray(Image.fromarray(readout).resize((48, 48), Image.Resampling.BILINEAR), dtype=np.uint8)
            expected = expected.transpose(2, 0, 1) if expected.ndim == 3 else expected[None]
            np.testing.assert_array_equal(images[row, a:b], expected)
    # Without the weights, auto falls back (boundaries: Canny) and predict is refused in one line.
    monkeypatch.setenv(predict.WEIGHTS_ENV, str(tmp_path / "nowhere"))
    predict.clear_networks()
    auto = prepare(root, 48, cache_dir=tmp_path / "cache", progress=False, workers=1, log=lambda _: None)
    assert "predicted" not in auto.manifest["sources"]["boundaries"]
    assert auto.manifest["cache_path"] != m["cache_path"]
