"""A fifth modality defined outside the project, added the way a user would: loaded through
PIX3D_MODALITIES=tests.depth_modality (test_fifth_modality.py). Nothing else in the project
names it. Its maps come from a `depth/` folder mirroring `img/`, as normals/ and boundaries/ do."""

from __future__ import annotations

from pix3d.constants import Modality

MODALITY_ROWS = (Modality("depth", 1, "Depth", "gray", folder="depth"),)
