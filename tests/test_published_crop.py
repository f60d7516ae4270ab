"""The notebook's crop: Pose-from-Shape's rule (data/Pix3D/clean_dataset.py of PoseFromShape),
checked on a hand-made entry against the rule's own steps, and a preparation option that is
part of the cache key (another crop builds another cache, never a mix).
"""

from __future__ import annotations

import copy

import numpy as np
from PIL import Image

from pix3d.constants import MODALITY_CHANNELS
from pix3d.data.images import Letterbox, letterbox_resize, mask_rect
from pix3d.data.prepare import prepare
from tests.pix3d_fixtures import REAL_ENTRY, write_pix3d_folder


def pose_from_shape_crop(photo: np.ndarray, mask: np.ndarray, size: int) -> np.ndarray:
    """The rule step by step as Pose-from-Shape writes it: OpenCV's boundingRect of the mask,
    im[y:y+h, x:x+w], ratio = size / max(w, h), new = int(side * ratio), ANTIALIAS (Lanczos),
    pasted at ((size - w') // 2, (size - h') // 2) on a black RGB image."""
    ys, xs = np.nonzero(mask)
    x, y, w, h = xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    cut = Image.fromarray(photo[y:y + h, x:x + w, :])
    ratio = float(size) / max(cut.size)
    new = tuple(int(v * ratio) for v in cut.size)
    cut = cut.resize(new, Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (size, size))
    canvas.paste(cut, ((size - new[0]) // 2, (size - new[1]) // 2))
    return np.asarray(canvas)


def test_the_geometry_on_a_hand_made_rectangle():
    # 21 x 10 px at 16: ratio 16/21, w' = int(16.0) = 16, h' = int(7.62) = 7 (truncated), pasted at (0, 4).
    box = Letterbox((5, 3, 21, 10), 16)
    assert box.resized == (16, 7) and box.offset == (0, 4)
    content = box.content()
    assert content[4:11].all() and not content[:4].any() and not content[11:].any()
    left, top, right, bottom = box.window()
    assert np.isclose(left, 5) and np.isclose(right, 26)  # the full width: no margin
    assert np.isclose(top, 3 - 4 * 10 / 7) and np.isclose(bottom, 3 + 12 * 10 / 7)


def test_a_hand_made_entry_is_cropped_as_pose_from_shape_crops_it(tmp_path):
    rng = np.random.default_rng(3)
    photo = rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
    mask = np.zeros((30, 40), dtype=np.uint8)
    mask[3:13, 5:26] = 255       # rows 3..12, columns 5..25: w 21, h 10
    mask[7, 2] = 255             # one stray pixel widens the rectangle to x = 2 (boundingRect counts it)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    assert mask_rect(tmp_path / "mask.png", (40, 30)) == (2, 3, 24, 10)
    for size in (16, 64, 224):
        ours = letterbox_resize(tmp_path / "photo.png", (2, 3, 24, 10), (40, 30), size, "rgb").transpose(1, 2, 0)
        assert np.array_equal(ours, pose_from_shape_crop(photo, mask, size)), size


def test_crop_is_an_option_of_the_cache_and_never_mixed(tmp_path):
    entry = copy.deepcopy(REAL_ENTRY)
    entry.update(img_size=[60, 40], bbox=[10, 8, 50, 30])
    root = write_pix3d_folder(tmp_path / "set", [entry], kinds=(("png", "RGB"),))
    cache = tmp_path / "cache"
    margin = prepare(root, 32, cache_dir=cache, workers=1, progress=False, log=lambda _: None)
    published = prepare(root, 32, cache_dir=cache, workers=1, crop="published", progress=False, log=lambda _: None)
    assert margin.manifest["key"] != published.manifest["key"]
    assert (margin.manifest["crop"], published.manifest["crop"]) == ("margin", "published")
    assert len(list((cache / "prepared").iterdir())) == 2
    # The cache's rgb is the rule's crop of the files; the mask channel follows the same geometry.
    photo = np.asarray(Image.open(root / entry["img"]).convert("RGB"))
    mask = np.asarray(Image.open(root / entry["mask"]))
    lo, hi = MODALITY_CHANNELS["rgb"]
    assert np.array_equal(published.images[0, lo:hi].transpose(1, 2, 0), pose_from_shape_crop(photo, mask, 32))
    bars = ~Letterbox(mask_rect(root / entry["mask"], (60, 40)), 32).content()
    assert bars.any() and not published.images[0][:, bars].any()  # every channel black in the bars
    assert not np.array_equal(margin.images[0, lo:hi], published.images[0, lo:hi])
    again = prepare(root, 32, cache_dir=cache, workers=1, crop="published", progress=False, log=lambda _: None)
    assert again.manifest["key"] == published.manifest["key"]
