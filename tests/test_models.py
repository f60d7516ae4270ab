"""The model registry and the two published architectures, built for every modality subset."""

from __future__ import annotations

import itertools

import pytest
import torch

from pix3d.constants import HEADS, MODALITIES, N_BINS, modality_channels
from pix3d.errors import Pix3DError
from pix3d.models import (
    feature_map_size,
    get_model,
    list_models,
    minimum_image_size,
    register_model,
)

SUBSETS = [
    combo for r in range(1, len(MODALITIES) + 1) for combo in itertools.combinations(MODALITIES, r)
]
SMALL = 64  # just above combined_net's minimum; keeps 30 builds + backward passes fast


def test_every_non_empty_subset_is_covered():
    assert len(SUBSETS) == 15


def test_registry_lists_both_published_models():
    assert {"combined_net", "separate_net"} <= set(list_models())


def test_unknown_model_lists_known_names():
    with pytest.raises(Pix3DError, match="unknown model 'resnet'.*combined_net.*separate_net"):
        get_model("resnet", ["rgb"])


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="combined_net"):
        register_model("combined_net")(lambda *a, **k: None)


def test_bad_modalities_and_too_small_images_raise():
    with pytest.raises(Pix3DError, match="unknown modality 'depth'"):
        get_model("combined_net", ["depth"])
    with pytest.raises(Pix3DError, match="empty modality list"):
        get_model("separate_net", [])
    with pytest.raises(Pix3DError, match="image_size 40 is too small for combined_net.*>= 58"):
        get_model("combined_net", ["rgb"], image_size=40)


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("modalities", SUBSETS, ids=lambda m: "+".join(m))
def test_forward_backward_every_model_and_subset(name, modalities):
    torch.manual_seed(0)
    channels = len(modality_channels(modalities))
    model = get_model(name, modalities, image_size=SMALL)
    x = torch.rand(3, channels, SMALL, SMALL) * 4 - 2
    logits = model(x)
    assert logits.shape == (3, len(HEADS), N_BINS)
    assert torch.isfinite(logits).all()
    logits.square().sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # Every layer gets a gradient (no branch silently unused).
    assert all(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("modalities", SUBSETS, ids=lambda m: "+".join(m))
def test_fc_widths_at_224_match_the_design(modalities):
    # Built at 224 but never run there: the widths come from the layer arithmetic.
    combined = get_model("combined_net", modalities, image_size=224)
    assert combined.fc_in_features == 968 == combined.trunk[0].in_features
    assert combined.features[0][0].in_channels == len(modality_channels(modalities))
    separate = get_model("separate_net", modalities, image_size=224)
    assert len(separate.branches) == len(modalities)
    for branch in separate.branches.values():
        assert branch.fc_in_features == 4608 == branch.fc[0].in_features
    assert all(h.in_features == 128 * len(modalities) for h in separate.heads.heads)


def test_architecture_matches_the_design_layer_by_layer():
    net = get_model("combined_net", ["rgb", "mask"], image_size=224)
    convs = [m for m in net.features.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.padding[0]) for c in convs] == [
        (4, 64, 7, 0), (64, 256, 7, 0), (256, 256, 3, 0), (256, 8, 3, 0)]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()) == 4
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in net.modules()) == 4
    branch = get_model("separate_net", ["normals"], image_size=224).branches["normals"]
    convs = [m for m in branch.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0]) for c in convs] == [(3, 32, 7), (32, 64, 7), (64, 8, 3)]


def test_size_arithmetic_agrees_with_a_real_forward():
    for size in (58, 64, 97):
        net = get_model("combined_net", ["rgb"], image_size=size).eval()
        side = feature_map_size(size, (7, 7, 3, 3))
        assert net.features(torch.zeros(2, 3, size, size)).shape == (2, 8, side, side)
    assert minimum_image_size((7, 7, 3, 3)) == 58
    assert feature_map_size(224, (7, 7, 3)) == 24


def _outputs_when_sample_changes(name, modalities, seed_quirks, changed=3, watched=0):
    torch.manual_seed(0)
    model = get_model(name, modalities, image_size=SMALL, seed_quirks=seed_quirks).eval()
    x = torch.randn(4, len(modality_channels(modalities)), SMALL, SMALL)
    y = x.clone()
    y[changed] = torch.randn_like(y[changed])
    with torch.no_grad():
        return model(x)[watched], model(y)[watched]


@pytest.mark.parametrize("modalities", [("rgb", "mask"), ("rgb", "mask", "boundaries", "normals")],
                         ids=lambda m: "+".join(m))
def test_quirk_concatenation_mixes_samples_with_two_or_more_modalities(modalities):
    # With n modalities, row 0 of the quirky concatenation holds features of samples 0..n-1;
    # sample 1 is in it for any n >= 2.
    before, after = _outputs_when_sample_changes("separate_net", modalities, True, changed=1)
    assert not torch.allclose(before, after)
    # Without quirks, sample 0's output does not depend on any other sample (eval mode).
    for changed in (1, 2, 3):
        before, after = _outputs_when_sample_changes("separate_net", modalities, False, changed=changed)
        assert torch.equal(before, after)


def test_quirk_is_harmless_with_one_modality():
    for changed in (1, 2, 3):
        before, after = _outputs_when_sample_changes("separate_net", ("rgb",), True, changed=changed)
        assert torch.equal(before, after)


def test_quirk_relu_on_logits():
    torch.manual_seed(0)
    for name in list_models():
        x = torch.randn(6, 4, SMALL, SMALL)
        quirky = get_model(name, ["rgb", "mask"], image_size=SMALL, seed_quirks=True).eval()
        plain = get_model(name, ["rgb", "mask"], image_size=SMALL, seed_quirks=False).eval()
        plain.load_state_dict(quirky.state_dict())
        with torch.no_grad():
            raw, clamped = plain(x), quirky(x)
        assert (raw < 0).any(), "test needs some negative logits"
        if name == "combined_net":
            assert torch.equal(clamped, raw.clamp_min(0))
        assert (clamped >= 0).all()
