"""pix3d.prepare on real image files: crops, modalities, cache hits, atomicity, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from PIL import Image

from pix3d.constants import MODALITY_CHANNELS
from pix3d.errors import Pix3DError, UsageError
from pix3d.data.pose import angles
from pix3d.data.cache import load_prepared
from pix3d.data.edges import canny_edges
from pix3d.data.images import crop_box
from pix3d.data.maps import BOUNDARIES_DERIVED
from pix3d.data.prepare import prepare
from pix3d.data.annotations import load_annotations
from tests.pix3d_fixtures import REAL_ENTRY, read_json, seed_builtin_set, write_json, write_pix3d_folder
from tests.inproc import run_module

REPO = Path(__file__).resolve().parents[1]
RGB, MASK, BOUNDARIES, NORMALS = (slice(*MODALITY_CHANNELS[m]) for m in ("rgb", "mask", "boundaries", "normals"))


def quiet_prepare(root, size, cache, **kwargs):
    messages: list[str] = []
    kwargs.setdefault("progress", False)
    data = prepare(root, size, cache_dir=cache, log=messages.append, **kwargs)
    return data, messages


def prepared_dirs(cache: Path) -> list[str]:
    folder = cache / "prepared"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_prepares_every_image_kind(tmp_path):
    root = write_pix3d_folder(tmp_path / "pix3d", 14)
    data, messages = quiet_prepare(root, 32, tmp_path / "cache", workers=2)
    assert data.images.shape == (14, 8, 32, 32) and data.images.dtype == np.uint8
    assert data.image_size == 32 and len(data.categories) == 14
    assert data.available == {"rgb": True, "mask": True, "boundaries": True, "normals": False}
    sources = data.manifest["sources"]
    assert sources["boundaries"] == BOUNDARIES_DERIVED and sources["normals"] == "unavailable"
    assert data.manifest["canny"]["sigma"] > 0
    assert np.all(data.images[:, NORMALS] == 0)
    assert data.images[:, BOUNDARIES].max() == 255  # edges were found
    anns, _ = load_annotations(root)
    np.testing.assert_allclose(data.azimuth, [angles(a)[0] for a in anns])
    assert data.model_ids == [a.model for a in anns] and data.img_paths == [a.img for a in anns]
    for i, ann in enumerate(anns):
        mode = Image.open(root / ann.img).mode
        rgb = data.images[i, RGB].astype(int)
        if mode == "L":  # greyscale photos become RGB with three equal channels
            assert np.array_equal(rgb[0], rgb[1]) and np.array_equal(rgb[1], rgb[2])
        if mode == "RGBA":  # transparent background composited over black, like the padding
            assert rgb[:, data.images[i, MASK][0] == 0].max() < 40
        # Mask and RGB are cropped from the same box: masked cache pixels carry the object's
        # colour from the original file.
        original = np.asarray(Image.open(root / ann.img).convert("RGB"), dtype=float)
        inside = np.asarray(Image.open(root / ann.mask)) > 127
        cached_inside = data.images[i, MASK][0] > 200
        cached_mean = data.images[i, RGB].transpose(1, 2, 0)[cached_inside].mean(0)
        assert np.abs(cached_mean - original[inside].mean(0)).max() < 25, ann.img
    assert any("preparing 14 entries" in m for m in messages)


def test_crop_is_square_centred_and_padded(tmp_path):
    root = write_pix3d_folder(tmp_path / "real", [REAL_ENTRY])
    data, _ = quiet_prepare(root, 64, tmp_path / "cache", margin=0.1, workers=1)
    # bbox 358 x 206 centred at y=125 in a 244-px-high photo: the 429.6-px square reaches
    # 89.8 px above the photo, i.e. 13.4 output rows of zero padding at the top and bottom.
    left, top, right, bottom = crop_box(REAL_ENTRY["bbox"], 0.1)
    assert right - left == pytest.approx(429.6) and bottom - top == pytest.approx(429.6)
    pad_rows = -top * 64 / 429.6
    rgb = data.images[0, RGB]
    assert rgb[:, : int(pad_rows) - 1].max() == 0 and rgb[:, -int(pad_rows) + 1 :].max() == 0
    assert rgb[:, int(pad_rows) + 2 : 64 - int(pad_rows) - 2].mean() > 20
    mask = data.images[0, MASK][0]
    assert mask[32, 32] == 255 and mask[32, 1] == 0  # object in the middle, background at the side


def test_big_jpeg_uses_draft_and_stays_aligned(tmp_path):
    root = write_pix3d_folder(tmp_path / "big", 1, img_size=(2000, 1500), kinds=(("jpg", "RGB"),))
    data, _ = quiet_prepare(root, 32, tmp_path / "cache", workers=1)
    for i in range(1):
        mask = data.images[i, MASK][0] > 127
        # The ellipse fills the bbox: with margin 0.1 the mask covers the centre, not the corners.
        assert mask[16, 16] and not mask[0, 0] and not mask[31, 31]
        assert 0.3 < mask.mean() < 0.8


def test_workers_give_identical_caches(tmp_path):
    root = write_pix3d_folder(tmp_path / "pix3d", 10)
    one, _ = quiet_prepare(root, 24, tmp_path / "c1", workers=1)
    two, _ = quiet_prepare(root, 24, tmp_path / "c2", workers=2)
    assert np.array_equal(np.asarray(one.images), np.asarray(two.images))
    assert one.manifest["key"] == two.manifest["key"]


def test_a_caller_holding_threads_gets_workers_from_a_forkserver(tmp_path):
    """A thread in the caller (a Ray driver's, a notebook's) is never forked: the workers come
    from a forkserver, and the cache is the same."""
    import threading

    from pix3d.data.prepare import _worker_context

    root = write_pix3d_folder(tmp_path / "pix3d", 10)
    release = threading.Event()
    holder = threading.Thread(target=release.wait, daemon=True)
    holder.start()
    try:
        assert _worker_context().get_start_method() == "forkserver"
        two, _ = quiet_prepare(root, 24, tmp_path / "c2", workers=2)
    finally:
        release.set()
        holder.join()
    one, _ = quiet_prepare(root, 24, tmp_path / "c1", workers=1)
    assert np.array_equal(np.asarray(one.images), np.asarray(two.images))


def test_a_script_without_a_main_guard_prepares_with_workers(tmp_path):
    """What a researcher writes: prepare() at a script's top level, no `if __name__ == ...`.
    Workers that import the main module again (spawn, forkserver) would run it again; with one
    thread running, the workers are forked and the script works."""
    root = write_pix3d_folder(tmp_path / "pix3d", 10)
    script = tmp_path / "make_cache.py"
    script.write_text("from pix3d.data.prepare import prepare\n"
                      f"data = prepare({str(root)!r}, 24, cache_dir={str(tmp_path / 'cache')!r}, workers=2, progress=False)\n"
                      "print('entries', len(data.images))\n")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(REPO)),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().splitlines()[-1] == "entries 10", proc.stderr[-2000:]
    assert len(prepared_dirs(tmp_path / "cache")) == 1


def test_second_call_is_a_cache_hit_and_inputs_change_the_key(tmp_path):
    root = write_pix3d_folder(tmp_path / "pix3d", 6)
    cache = tmp_path / "cache"
    first, _ = quiet_prepare(root, 24, cache)
    images_file = Path(first.manifest["cache_path"]) / "images.npy"
    stamp = images_file.stat().st_mtime_ns
    second, messages = quiet_prepare(root, 24, cache)
    assert any(m.startswith("cache hit") for m in messages)
    assert second.manifest["key"] == first.manifest["key"] and images_file.stat().st_mtime_ns == stamp
    bigger, messages = quiet_prepare(root, 28, cache)
    assert bigger.manifest["key"] != first.manifest["key"] and not any("cache hit" in m for m in messages)
    # A changed image file (new content, new mtime) is a new key too.
    entry = read_json(root)[0]
    Image.new("RGB", tuple(entry["img_size"]), (255, 0, 0)).save(root / entry["img"])
    os.utime(root / entry["img"], ns=(stamp + 10**9, stamp + 10**9))
    changed, _ = quiet_prepare(root, 24, cache)
    assert changed.manifest["key"] != first.manifest["key"]
    assert prepared_dirs(cache) == sorted({first.manifest["key"], bigger.manifest["key"], changed.manifest["key"]})
    reloaded = load_prepared(Path(changed.manifest["cache_path"]))
    assert np.array_equal(np.asarray(reloaded.images), np.asarray(changed.images))


def test_a_loaded_cache_pickles_its_images_out_of_band(tmp_path):
    """Ray shares pickle-5 out-of-band buffers zero-copy; a memmap would be pickled inside the
    bytes and every trial would unpickle a private copy of the cache."""
    import pickle

    root = write_pix3d_folder(tmp_path / "pix3d", 6)
    prepared, _ = quiet_prepare(root, 24, tmp_path / "cache")
    data = load_prepared(Path(prepared.manifest["cache_path"]))
    assert isinstance(data.images, np.memmap)
    buffers: list[pickle.PickleBuffer] = []
    payload = pickle.dumps(data, protocol=5, buffer_callback=buffers.append)
    assert data.images.nbytes in [buffer.raw().nbytes for buffer in buffers]
    assert len(payload) < data.images.nbytes
    copy = pickle.loads(payload, buffers=buffers)
    assert type(copy.images) is np.ndarray and np.array_equal(copy.images, data.images)
    assert copy.categories == data.categories and copy.manifest == data.manifest
    assert isinstance(data.images, np.memmap)  # the original is untouched


def test_precomputed_maps_are_used_and_recorded(tmp_path):
    root = write_pix3d_folder(tmp_path / "pix3d", 5, normals=True, boundaries=True)
    data, _ = quiet_prepare(root, 24, tmp_path / "cache")
    assert data.available["normals"] and data.manifest["sources"] == {
        "rgb": "img files", "mask": "mask files", "boundaries": "files", "normals": "files",
    }
    assert data.images[:, NORMALS].std() > 10  # the smooth normal ramp, not zeros
    # The fixture's boundaries are vertical stripes every 7 px: columns, not Canny edges.
    central_rows = data.images[0, BOUNDARIES][0][8:16].astype(int)
    assert (central_rows == central_rows[0]).all() and central_rows[0].std() > 10


def test_maps_at_another_resolution_are_scaled_to_the_photo(tmp_path):
    # A user's network may predict normals at its own resolution: the crop box is scaled.
    root = write_pix3d_folder(tmp_path / "pix3d", 3, normals=True, img_size=(120, 90))
    full, _ = quiet_prepare(root, 24, tmp_path / "c1")
    normal_file = root / "normals" / Path(read_json(root)[1]["img"]).relative_to("img").with_suffix(".png")
    Image.open(normal_file).resize((60, 45), Image.Resampling.BILINEAR).save(normal_file)
    half, _ = quiet_prepare(root, 24, tmp_path / "c2")
    diff = np.abs(half.images[1, NORMALS].astype(int) - full.images[1, NORMALS].astype(int))
    assert diff.mean() < 4 and half.images[1, NORMALS].std() > 10


def test_partial_normals_are_unavailable_not_zero_filled(tmp_path):
    root = write_pix3d_folder(tmp_path / "pix3d", 5, normals=True)
    (root / "normals" / Path(read_json(root)[2]["img"]).relative_to("img").with_suffix(".png")).unlink()
    data, messages = quiet_prepare(root, 24, tmp_path / "cache")
    assert data.available["normals"] is False and data.manifest["sources"]["normals"] == "unavailable"
    assert any("normals/ lacks maps for 1 of 5 entries" in m for m in messages)


def test_canny_finds_a_thin_step_edge_and_nothing_on_flat_images():
    image = np.full((40, 40, 3), 30, np.uint8)
    image[:, 20:] = 200
    edges = canny_edges(image)
    columns = np.nonzero(edges.any(axis=0))[0]
    assert set(columns) <= {19, 20} and edges[:, 19:21].any(axis=1).all()
    assert (edges.sum(axis=1) // 255 <= 2).all()  # thin: non-max suppression worked
    noise = np.random.default_rng(0).integers(100, 103, (40, 40, 3)).astype(np.uint8)
    assert canny_edges(noise).max() == 0
    diagonal = np.where(np.add.outer(np.arange(40), np.arange(40)) < 40, 30, 200).astype(np.uint8)
    assert canny_edges(np.stack([diagonal] * 3, -1)).sum() // 255 >= 35


def test_corrupt_pixels_fail_cleanly_or_are_skipped(tmp_path):
    root = write_pix3d_folder(tmp_path / "pix3d", 6, kinds=(("png", "RGB"),))
    bad = read_json(root)[3]["img"]
    payload = (root / bad).read_bytes()
    (root / bad).write_bytes(payload[: len(payload) // 2])  # header reads, pixels do not
    cache = tmp_path / "cache"
    with pytest.raises(Pix3DError, match=rf"entry 3 \({bad}\): cannot decode {bad}"):
        quiet_prepare(root, 24, cache, workers=2)
    assert prepared_dirs(cache) == []  # no partial cache, no temp folder
    data, messages = quiet_prepare(root, 24, cache, skip_invalid=True, workers=2)
    assert len(data) == 5 and bad not in data.img_paths
    assert any(m.startswith(f"skipped entry 3 ({bad})") for m in messages)
    assert data.manifest["skipped"][0].startswith("entry 3")


def test_bad_arguments(tmp_path):
    root = write_pix3d_folder(tmp_path / "pix3d", 2)
    with pytest.raises(UsageError, match="--size"):
        prepare(root, 4, cache_dir=tmp_path / "c")
    with pytest.raises(UsageError, match="--margin"):
        prepare(root, 32, cache_dir=tmp_path / "c", margin=-1)
    with pytest.raises(UsageError, match="--workers"):
        prepare(root, 32, cache_dir=tmp_path / "c", workers=0)
    with pytest.raises(Pix3DError, match="is not a prepared cache"):
        load_prepared(tmp_path)


# ------------------------------------------------------------------------ the CLI


def run_prepare_cli(*args, cache, in_process=False):
    """`python -m pix3d.prepare`; `in_process` for runs refused before any image is read
    (tests.inproc: no interpreter start-up; a run that prepares forks workers, so not here)."""
    if in_process:
        with mock.patch.dict(os.environ, PIX3D_CACHE=str(cache)):
            return run_module("pix3d.prepare", *args)
    env = dict(os.environ, PIX3D_CACHE=str(cache), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "pix3d.prepare", *map(str, args)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )


def test_cli_prepares_then_hits_the_cache(tmp_path):
    root = write_pix3d_folder(tmp_path / "pix3d", 4)
    cache = tmp_path / "cache"
    first = run_prepare_cli("--data", root, "--size", 24, "--workers", 2, cache=cache)
    assert first.returncode == 0, first.stderr
    assert "preparing 4 entries" in first.stdout and "prepare:" in first.stderr  # tqdm bar
    (key,) = prepared_dirs(cache)
    manifest = json.loads((cache / "prepared" / key / "manifest.json").read_text())
    assert manifest["n"] == 4 and manifest["size"] == 24 and manifest["dataset"]["path"] == str(root.resolve())
    second = run_prepare_cli("--data", root, "--size", 24, "--cache", cache, cache=tmp_path / "elsewhere")
    assert second.returncode == 0 and "cache hit" in second.stdout


def _mask_mismatch(root):
    entry = read_json(root)[1]
    Image.new("L", (10, 10)).save(root / entry["mask"])
    return f"entry 1 ({entry['img']}): mask"


def _malformed(root):
    (root / "pix3d.json").write_text('[{"img": ')
    return "malformed JSON"


def _missing_field(root):
    entries = read_json(root)
    del entries[2]["bbox"]
    write_json(root, entries)
    return "entry 2 (img/table/0002.tiff): missing required field bbox"


def _corrupt_image(root):
    entry = read_json(root)[0]
    (root / entry["img"]).write_bytes(b"\x89PNG garbage")
    return f"entry 0 ({entry['img']}): image"


def _empty(root):
    (root / "pix3d.json").write_text("[]")
    return "empty"


def _no_json(root):
    (root / "pix3d.json").unlink()
    return "pix3d.json not found"


@pytest.mark.parametrize("breaker", [_mask_mismatch, _malformed, _missing_field, _corrupt_image, _empty, _no_json])
def test_cli_bad_input_is_one_error_line_and_no_cache(tmp_path, breaker):
    root = write_pix3d_folder(tmp_path / "pix3d", 4)
    expected = breaker(root)
    cache = tmp_path / "cache"
    # The annotation file's faults are refused before any image is read: in this process.
    in_process = breaker in (_malformed, _missing_field, _empty, _no_json)
    result = run_prepare_cli("--data", root, "--size", 24, cache=cache, in_process=in_process)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert prepared_dirs(cache) == []


def test_cli_skip_invalid_lists_the_skipped_entry(tmp_path):
    root = write_pix3d_folder(tmp_path / "pix3d", 4)
    expected = _mask_mismatch(root)
    result = run_prepare_cli("--data", root, "--size", 24, "--skip-invalid", "--no-progress", cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    assert f"skipped {expected}" in result.stdout and "3 entries" in result.stdout


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--size", "24"], "--data"),
        (["--data", "DIR", "--size", "2"], "--size must be an integer of at least 16"),
        (["--data", "DIR", "--size", "24", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_cli_usage_errors_exit_2(tmp_path, args, expected):
    root = write_pix3d_folder(tmp_path / "pix3d", 2)
    args = [str(root) if a == "DIR" else a for a in args]
    result = run_prepare_cli(*args, cache=tmp_path / "cache", in_process=True)
    assert result.returncode == 2 and expected in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_missing_folder(tmp_path):
    result = run_prepare_cli("--data", tmp_path / "absent", "--size", 24, cache=tmp_path / "cache", in_process=True)
    assert result.returncode == 1 and result.stderr.startswith("error: dataset folder") and "absent" in result.stderr
    assert prepared_dirs(tmp_path / "cache") == []


@pytest.mark.slow
def test_builtin_synthetic_set_prepares(builtin_set, tmp_path):
    # The set is rendered once per session (the builtin_set fixture), prepared here in a fresh cache.
    seed_builtin_set(builtin_set, tmp_path / "cache")
    data, messages = quiet_prepare("synthetic", 32, tmp_path / "cache")
    assert not any(m.startswith("cache hit") for m in messages)
    assert data.manifest["dataset"]["name"] == "synthetic" and len(data) > 0
    again, messages = quiet_prepare("synthetic", 32, tmp_path / "cache")
    assert any(m.startswith("cache hit") for m in messages)


def test_stale_temp_folders_of_killed_runs_are_removed(tmp_path):
    """A `.<key>.tmp-*` folder (fileio.atomic_dir) untouched for over an hour (a SIGKILLed preparation) is cleaned up;
    a fresh one (maybe a concurrent run) is left alone."""
    import os
    import time

    root = write_pix3d_folder(tmp_path / "pix3d", 2)
    cache = tmp_path / "cache"
    prepared = cache / "prepared"
    stale, fresh = prepared / ".deadbeef.tmp-1", prepared / ".cafe.tmp-2"
    for folder in (stale, fresh):
        folder.mkdir(parents=True)
        (folder / "images.npy").write_bytes(b"partial")
    old = time.time() - 2 * 3600
    os.utime(stale / "images.npy", (old, old))
    os.utime(stale, (old, old))
    quiet_prepare(root, 16, cache)
    assert not stale.exists() and fresh.exists()


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (read from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _workers(pid: int) -> list[int]:
    """The command's pool workers: its children, or, under a forkserver (a child that forks
    them), that server's children; never multiprocessing's resource tracker."""
    found = []
    for child in _children(pid):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"resource_tracker" in command:
            continue
        found.extend(_children(child) if b"forkserver" in command else [child])
    return found


@pytest.mark.slow  # a command of its own and 120 images written: 4 s
def test_a_killed_worker_is_one_error_line_not_a_hang(tmp_path):
    """A worker killed mid-way (a signal, the OOM killer) used to leave the pool waiting forever
    for its entries; now the command stops with one line and writes no cache."""
    import signal
    import time

    root = write_pix3d_folder(tmp_path / "pix3d", 120, img_size=(320, 240))
    cache = tmp_path / "cache"
    env = dict(os.environ, PIX3D_CACHE=str(cache), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "pix3d.prepare", "--data", str(root), "--size", "128",
                             "--workers", "2", "--no-progress"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        workers = []
        while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
            workers = _workers(proc.pid)  # both started: the pool is working
            time.sleep(0.05)
        assert workers, "no worker process seen before the command ended"
        os.kill(workers[0], signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: a worker preparing {root} died"), err
    assert "--workers 1" in lines[0] and "Traceback" not in err
    assert prepared_dirs(cache) == []
