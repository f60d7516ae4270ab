"""Dataset boundaries (issue 26, 5): a pix3d.json cannot make the pipeline read files outside
its folder, and a duplicate entry is never split across train and validation. Real PNG files,
real pix3d.json parsing, the real `pix3d.prepare` command."""

from __future__ import annotations

import os
import shutil

import pytest

from pix3d.data.annotations import load_annotations
from pix3d.data.splits import split_indices
from pix3d.errors import Pix3DError
from tests.pix3d_fixtures import read_json, write_json, write_pix3d_folder
from tests.test_faults import assert_one_clean_line, run_entry


@pytest.fixture
def folder(tmp_path):
    return write_pix3d_folder(tmp_path / "pix3d", 9)


def _outside_png(folder, tmp_path):
    """A real image outside the dataset folder (a copy of one of its photos)."""
    first = read_json(folder)[0]["img"]
    outside = tmp_path / ("outside" + os.path.splitext(first)[1])
    shutil.copy(folder / first, outside)
    return outside


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink", "mask-dotdot", "model-absolute"])
def test_paths_outside_the_dataset_are_refused_or_skipped(folder, tmp_path, how):
    outside = _outside_png(folder, tmp_path)
    entries = read_json(folder)
    entry = entries[3]
    if how == "dotdot":
        entry["img"] = f"../{outside.name}"
    elif how == "absolute":
        entry["img"] = str(outside)
    elif how == "symlink":  # a link inside img/ that points out of the folder
        os.symlink(outside, folder / "img" / "link.png")
        entry["img"] = "img/link.png"
    elif how == "mask-dotdot":
        entry["mask"] = f"mask/../../{outside.name}"
    else:
        entry["model"] = "/etc/passwd"
    write_json(folder, entries)
    key = {"mask-dotdot": "mask", "model-absolute": "model"}.get(how, "img")
    with pytest.raises(Pix3DError, match=rf"entry 3 \(.*\): {key} .*(outside the dataset folder|absolute path)"):
        load_annotations(folder)
    kept, skipped = load_annotations(folder, skip_invalid=True)
    assert [a.index for a in kept] == [0, 1, 2, 4, 5, 6, 7, 8] and len(skipped) == 1


def test_prepare_refuses_an_image_outside_the_folder_in_one_line(folder, tmp_path, monkeypatch, capsys):
    """What the issue saw: `img: ../outside.png` went into the cache with exit 0."""
    outside = _outside_png(folder, tmp_path)
    entries = read_json(folder)
    entries[5]["img"] = f"../{outside.name}"
    write_json(folder, entries)
    monkeypatch.setenv("PIX3D_CACHE", str(tmp_path / "cache"))
    code, err = run_entry("pix3d.prepare", ["--data", str(folder), "--size", "32", "--cache", str(tmp_path / "cache"),
                                            "--no-progress", "--workers", "1"])
    assert_one_clean_line(code, err, f"entry 5 (../{outside.name}): img")
    assert "outside the dataset folder" in err and not (tmp_path / "cache" / "prepared").exists()


def test_identical_duplicates_collapse_and_never_straddle_the_split(folder):
    entries = read_json(folder)
    write_json(folder, entries + [dict(entries[2]), dict(entries[2], img="img/./" + entries[2]["img"][4:])])
    kept, notes = load_annotations(folder)
    assert len(kept) == 9 and [a.index for a in kept] == list(range(9))
    assert len(notes) == 2 and all("a duplicate of entry 2, collapsed into it" in n for n in notes)
    # The collapsed set is what the splits see: each photo on exactly one side.
    for scheme in ("random", "published", "by_model"):
        train, val = split_indices(scheme, [a.category for a in kept], [a.model for a in kept], seed=0,
                                   val_fraction=0.3)
        photos = [kept[i].img for i in train], [kept[i].img for i in val]
        assert not set(photos[0]) & set(photos[1]) and len(photos[0]) + len(photos[1]) == 9


def test_conflicting_duplicate_is_refused_naming_both(folder):
    entries = read_json(folder)
    write_json(folder, entries + [dict(entries[2], inplane_rotation=entries[2]["inplane_rotation"] + 0.5)])
    with pytest.raises(Pix3DError, match=r"entry 9 \(.*\): the same photo as entry 2 with different annotations"):
        load_annotations(folder)
    kept, skipped = load_annotations(folder, skip_invalid=True)
    assert len(kept) == 9 and len(skipped) == 1
