"""One encoding per modality: oracle normals are stored exactly as the published network's
predicted normals are (visualpriors' Taskonomy `normal` readout saved as pred / 2 + 0.5).

The same geometry goes through both encoders: a known normal field is encoded by the oracle's
encoder (`normals_to_rgb`, camera-frame normals in) and, as a predicted readout would be
stored (`pix3d.data.predict.store_readout`), after the test's own conversion to Taskonomy's
axes as its documentation states them (NYU / 2D3DS colouring: red = right, green = down,
blue = towards the camera; a normal facing the camera is (128, 128, 255)).
"""

from __future__ import annotations

import numpy as np
import torch

from pix3d.data.predict import store_readout
from pix3d.render.shading import NORMALS_BACKGROUND, normals_from_rgb, normals_to_rgb


def sphere_field(size: int = 41) -> tuple[np.ndarray, np.ndarray]:
    """Normals of a sphere seen head-on, in the project's camera frame (x left, y up, z
    forward): at image column u (to the right) and row v (down) the surface faces left by
    -u, up by -v and back at the camera (z < 0). Zero off the sphere."""
    coords = (np.arange(size) + 0.5) / size * 2 - 1
    right, down = np.meshgrid(coords, coords)  # image axes: u to the right, v down
    inside = right**2 + down**2 < 0.95
    towards = np.sqrt(np.clip(1 - right**2 - down**2, 0, None))
    normals = np.stack([-right, -down, -towards], axis=-1)  # left = -right, up = -down, forward = -towards
    normals[~inside] = 0
    return normals.astype(np.float32), inside


def as_taskonomy_readout(normals_cam: np.ndarray) -> np.ndarray:
    """The test's own reading of Taskonomy's axes: (right, down, towards the camera)."""
    left, up, forward = normals_cam[..., 0], normals_cam[..., 1], normals_cam[..., 2]
    return np.stack([-left, -up, -forward], axis=-1)


def test_the_same_geometry_encodes_identically_as_oracle_and_as_predicted():
    normals, inside = sphere_field()
    oracle = normals_to_rgb(normals, inside)
    readout = torch.from_numpy(as_taskonomy_readout(normals)).permute(2, 0, 1)  # C x H x W, as the network gives
    predicted = store_readout(readout)
    assert oracle.dtype == predicted.dtype == np.uint8 and oracle.shape == predicted.shape
    np.testing.assert_array_equal(oracle, predicted)
    # Off the surface: the zero vector, the readout's 0, stored as 128 grey (not black).
    assert (oracle[~inside] == NORMALS_BACKGROUND).all()
    assert (store_readout(torch.zeros(3, 2, 2)) == NORMALS_BACKGROUND).all()


def test_axes_and_range_match_taskonomy_documentation():
    normals, inside = sphere_field()
    rgb = normals_to_rgb(normals, inside).astype(int)
    centre = rgb[20, 20]
    assert abs(centre[0] - 128) <= 2 and abs(centre[1] - 128) <= 2 and centre[2] >= 250  # faces the camera
    # The sphere's right edge faces right: red high; its top faces up: green low.
    row = rgb[20, inside[20]]
    assert row[-1, 0] > 230 and row[0, 0] < 25
    column = rgb[inside[:, 20], 20]
    assert column[0, 1] < 25 and column[-1, 1] > 230
    # Blue never below the middle on a surface the camera sees.
    assert (rgb[inside][:, 2] >= 127).all()


def test_normals_decode_back_to_the_camera_frame():
    normals, inside = sphere_field()
    decoded = normals_from_rgb(normals_to_rgb(normals, inside))
    np.testing.assert_allclose(decoded[inside], normals[inside], atol=1.0 / 127)
    np.testing.assert_allclose(decoded[~inside], 0.0, atol=1.0 / 255)
