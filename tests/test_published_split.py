"""The published protocol's split: the notebook's own membership, shipped with the package.

The shipped file must equal the project's shared copy (../shared/data, as CI checks out), a
real-format Pix3D folder named like it must get exactly that split (through the same
`split_indices` a run calls, on real pix3d.json parsing and real image files), and other data
must fall back to the rule, saying so.
"""

from __future__ import annotations

import copy
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pix3d.data.annotations import parse_entries, read_entries
from pix3d.data.pose import angles, fit_bins
from pix3d.data.prepare import prepare, published_split_plan
from pix3d.data.splits import (MEMBERSHIP_FILE, Membership, entry_name, match_published, membership_sha256,
                               published_membership, split_indices)
from pix3d.errors import Pix3DError
from pix3d.inspect import main as inspect_main
from pix3d.render.synthetic import STAMP_NAME
from pix3d.train.cli import main as train_main
from tests.pix3d_fixtures import REAL_ENTRY, write_pix3d_folder

REPO = Path(__file__).resolve().parents[1]
# CI checks the project out beside shared/; a worktree elsewhere may name it in PIX3D_SHARED_DIR.
SHARED = Path(os.environ.get("PIX3D_SHARED_DIR", REPO.parent / "shared"))
SHARED_SPLIT = SHARED / "data" / "pix3d_published_split.json"


@pytest.fixture(scope="module")
def shared_split() -> dict:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent (the project's shared data, present in CI); "
                    "set PIX3D_SHARED_DIR to check the shipped membership against it")
    return json.loads(SHARED_SPLIT.read_text())


def test_shipped_membership_equals_the_shared_file(shared_split):
    shipped = published_membership()
    assert shipped.train == frozenset(shared_split["train"]) and shipped.val == frozenset(shared_split["val"])
    assert (len(shipped.train), len(shipped.val)) == (9064, 1002)
    assert shipped.sha256 == membership_sha256(shared_split["train"], shared_split["val"])


def test_shipped_file_is_package_data():
    pyproject = (REPO / "pyproject.toml").read_text()
    assert MEMBERSHIP_FILE.is_file() and "published_split.json" in pyproject


def _tiny_png(mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (4, 3), 255).save(buffer, format="PNG")
    return buffer.getvalue()


def _folder_of(names: list[str], root: Path) -> Path:
    """A real-format Pix3D folder with one entry per category/number name (4 x 3 px images)."""
    photo, mask = _tiny_png("RGB"), _tiny_png("L")
    entries = []
    for name in names:
        category, number = name.split("/")
        entry = copy.deepcopy(REAL_ENTRY)
        entry.update(img=f"img/{name}.png", mask=f"mask/{name}.png", category=category,
                     img_size=[4, 3], bbox=[0, 0, 3, 2], model=f"model/{category}/m{number[-1]}/model.obj")
        entries.append(entry)
    for category in {n.split("/")[0] for n in names}:
        (root / "img" / category).mkdir(parents=True, exist_ok=True)
        (root / "mask" / category).mkdir(parents=True, exist_ok=True)
    for name in names:
        (root / "img" / f"{name}.png").write_bytes(photo)
        (root / "mask" / f"{name}.png").write_bytes(mask)
    (root / "pix3d.json").write_text(json.dumps(entries))
    return root


@pytest.fixture(scope="module")
def pix3d_named(tmp_path_factory) -> tuple[Path, set[str], set[str]]:
    """Every listed name but three, plus two unlisted ones, in a shuffled json order."""
    membership = published_membership()
    names = sorted(membership.train | membership.val)
    absent = {names[5], names[4000], names[-1]}
    unlisted = {"chair/9998", "sofa/9999"}
    order = np.random.default_rng(0).permutation(sorted((set(names) - absent) | unlisted)).tolist()
    return _folder_of(order, tmp_path_factory.mktemp("pix3d_named")), absent, unlisted


def test_a_pix3d_folder_gets_exactly_the_notebooks_split(pix3d_named):
    root, absent, unlisted = pix3d_named
    json_path, _, raw = read_entries(root)
    annotations, _ = parse_entries(root, json_path, raw)
    imgs = [a.img for a in annotations]
    train, val = split_indices("published", [a.category for a in annotations], [a.model for a in annotations],
                               seed=7, img_paths=imgs, dataset=root.name)
    membership = published_membership()
    assert {entry_name(imgs[i]) for i in train} == membership.train - absent
    assert {entry_name(imgs[i]) for i in val} == membership.val - absent
    # The seed does not move it; the unlisted images are on neither side.
    again = split_indices("published", [a.category for a in annotations], [a.model for a in annotations],
                          seed=0, img_paths=imgs, dataset=root.name)
    assert all((a == b).all() for a, b in zip((train, val), again))
    assert not {entry_name(imgs[i]) for i in (*train, *val)} & unlisted


def test_the_folder_is_told_what_it_lacks_and_what_is_unlisted(pix3d_named):
    root, absent, unlisted = pix3d_named
    plan = published_split_plan(root)
    assert plan.used and plan.record()["membership"] == "notebook"
    assert (plan.missing, plan.unlisted) == (3, 2)
    assert "lacks 3 of the 10066 listed images" in plan.message and sorted(absent)[0] in plan.message
    assert "has 2 unlisted images (chair/9998, sofa/9999)" in plan.message
    assert published_membership().sha256[:12] in plan.message and "\n" not in plan.message


def test_other_data_takes_the_rule_and_says_so(tmp_path):
    small = write_pix3d_folder(tmp_path / "small", 12)  # Pix3D-like names, a handful of them
    plan = published_split_plan(small)
    assert not plan.used and "holds" in plan.message and "published rule" in plan.message
    (small / STAMP_NAME).write_text("{}")
    assert "built-in synthetic set" in published_split_plan(small).message
    assert "built-in synthetic set" in published_split_plan("synthetic").message
    # The rule itself: per category int(n/10) to validation, as before.
    json_path, _, raw = read_entries(small)
    annotations, _ = parse_entries(small, json_path, raw)
    train, val = split_indices("published", [a.category for a in annotations], [a.model for a in annotations],
                               seed=0, img_paths=[a.img for a in annotations], dataset=small.name)
    assert len(train) + len(val) == 12 and len(val) == 0  # three categories of 4: int(0.4) each


def test_a_disagreeing_folder_is_one_line_with_counts_and_names():
    membership = Membership(frozenset({"bed/0001", "bed/0002"}), frozenset({"bed/0003"}))
    with pytest.raises(Pix3DError) as raised:
        match_published(["img/bed/0001.png", "img/bed/0002.png", "img/bed/0777.png", "img/bed/0778.png",
                         "img/bed/0779.png"], "mine", membership=membership)
    message = str(raised.value)
    assert "\n" not in message and "2 of its 5 images listed, 3 not (bed/0777, bed/0778, bed/0779)" in message
    assert "1 of 3 listed absent (bed/0003)" in message
    with pytest.raises(Pix3DError, match="names twice"):
        match_published(["img/bed/0001.png", "img/bed/0001.jpg", "img/bed/0003.png"], "dup", membership=membership)


def test_the_cache_records_the_membership(tmp_path):
    small = write_pix3d_folder(tmp_path / "small", 6)
    data = prepare(small, 32, cache_dir=tmp_path / "cache", progress=False, log=lambda _: None)
    assert data.manifest["published_split"]["membership"] == "rule"
    assert data.manifest["dataset"]["builtin"] is False


def test_a_refused_split_writes_nothing(pix3d_named, tmp_path, capsys):
    root, _, _ = pix3d_named
    entries = json.loads((root / "pix3d.json").read_text())
    twin = copy.deepcopy(next(e for e in entries if e["img"] == "img/bed/0001.png"))
    twin.update(img="img/bed/0001.jpg")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "pix3d.json").write_text(json.dumps(entries + [twin]))
    out, cache = tmp_path / "run", tmp_path / "cache"
    with pytest.raises(Pix3DError) as raised:
        train_main(["--data", str(bad), "--split", "published", "--out", str(out), "--cache", str(cache),
                    "--budget", "quick", "--no-progress"])
    assert "names 1 images twice" not in str(raised.value) and "1 names twice (bed/0001)" in str(raised.value)
    assert not out.exists() and not cache.exists()


def test_inspect_prints_each_sides_label_histogram(tmp_path, capsys):
    """The notebook's cell 7: per-split label histograms, train and val side by side."""
    root = write_pix3d_folder(tmp_path / "set", 40)
    assert inspect_main([str(root), "--split", "random", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    json_path, _, raw = read_entries(root)
    annotations, _ = parse_entries(root, json_path, raw)
    train, val = split_indices("random", [a.category for a in annotations], [a.model for a in annotations], seed=1)
    assert f"split random: {len(train)} train / {len(val)} val" in out
    azimuth = out.split("azimuth:")[1].split("elevation:")[0]
    rows = [line.split() for line in azimuth.splitlines() if line.strip().startswith("bin ") and "(~" in line]
    counts = [(int(r[-4]), int(r[-2])) for r in rows]
    assert sum(t for t, _ in counts) == len(train) and sum(v for _, v in counts) == len(val)
    # The published bins are fixed edges: each side's counts are its own entries' azimuth bins.
    pose = np.array([angles(a) for a in annotations])
    labels = fit_bins("published", pose[:, 0], pose[:, 1], pose[:, 2]).labels(pose[:, 0], pose[:, 1], pose[:, 2])
    assert [v for _, v in counts] == np.bincount(labels[val, 0], minlength=8).tolist()
