"""Atomic writes: a failed write leaves the old file and no temp file behind."""

import json

import pytest

from pix3d.fileio import atomic_path, write_json


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = write_json(tmp_path / "sub" / "a.json", {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert json.loads(target.read_text()) == {"v": 1}
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.json"]


def test_successful_write_replaces(tmp_path):
    target = write_json(tmp_path / "a.json", [1])
    write_json(target, [2])
    assert json.loads(target.read_text()) == [2]
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
