"""One training run: config validation, the loop's metrics, exact resume, precisions, the CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pix3d.cli import run_cli
from pix3d.constants import N_BINS
from pix3d.errors import Pix3DError, UsageError
from pix3d.models import published_lr
from pix3d.data.cache import PreparedData
from pix3d.data.prepare import prepare
from pix3d.train import (
    BUDGETS,
    TrainConfig,
    fit,
    load_checkpoint,
    main as train_main,
    resolve_budget,
    save_checkpoint,
)
from pix3d.train.batches import BatchSource
from pix3d.train.checkpoints import seed_everything
from pix3d.train.evaluation import majority_baseline
from tests.pix3d_fixtures import write_pix3d_folder

REPO = Path(__file__).resolve().parents[1]
SIZE = 64  # just above combined_net's 58 px minimum


def pose_pattern_data(n: int = 48, size: int = SIZE, *, normals: bool = True, seed: int = 0) -> PreparedData:
    """A PreparedData whose images carry the azimuth: a bright bar at an angle that follows it.

    Real cache layout (uint8 N x 8 x S x S, channels rgb/mask/boundaries/normals) with noise,
    so the models have something to learn and the loss can fall.
    """
    rng = np.random.default_rng(seed)
    azimuth = rng.uniform(0, 360, n)
    elevation = rng.uniform(0, 40, n)
    inplane = rng.uniform(-20, 20, n)
    yy, xx = np.mgrid[0:size, 0:size] - size / 2
    images = rng.integers(0, 60, (n, 8, size, size), dtype=np.uint8)
    for i, a in enumerate(np.radians(azimuth)):
        bar = np.abs(np.cos(a) * yy - np.sin(a) * xx) < 3  # line through the centre at the angle
        half = (np.cos(a) * xx + np.sin(a) * yy) > 0       # only one half: 360 degrees, not 180
        images[i, :, bar & half] = 230
    categories = [("chair", "table")[i % 2] for i in range(n)]
    return PreparedData(
        images=images, azimuth=azimuth, elevation=elevation, inplane=inplane,
        categories=categories, model_ids=[f"model/{c}/{i % 5}" for i, c in enumerate(categories)],
        img_paths=[f"img/{c}/{i:04d}.png" for i, c in enumerate(categories)],
        available={"rgb": True, "mask": True, "boundaries": True, "normals": normals},
        manifest={"dataset": {"name": "in-memory pattern"}},
    )


def small_config(**changes) -> TrainConfig:
    # precision "auto": follows $PIX3D_PRECISION, so the suite runs once in fp32 and once in bf16.
    base = dict(model="separate_net", modalities=("rgb",), lr=1e-3, batch_size=8, epochs=3,
                image_size=SIZE, threads=1, device="cpu", val_fraction=0.25, precision="auto")
    return TrainConfig.from_dict({**base, **changes})


@pytest.fixture(scope="module")
def data() -> PreparedData:
    return pose_pattern_data()


# ----------------------------------------------------------------------------- config

@pytest.mark.parametrize(
    "changes, message",
    [
        ({"colour": "red"}, "unknown config key 'colour'"),
        ({"epochs": "3"}, "'epochs' must be int"),
        ({"lr": "1e-3"}, "'lr' must be float or int"),
        ({"channels_last": 1}, "'channels_last' must be bool"),
        ({"batch_size": True}, "'batch_size' must be int"),
        ({"lr": 0.0}, "'lr' must be positive"),
        ({"lr": -1e-3}, "'lr' must be positive"),
        ({"epochs": 0}, "'epochs' must be positive"),
        ({"batch_size": -10}, "'batch_size' must be positive"),
        ({"model": "resnet"}, "'model': unknown value 'resnet'; choose from combined_net, separate_net"),
        ({"modalities": []}, "'modalities': empty modality list"),
        ({"modalities": "rgb+depth"}, "'modalities': unknown modality 'depth'"),
        ({"precision": "fp16"}, "'precision': unknown value 'fp16'; choose from auto, fp32, bf16"),
        ({"lr_schedule": "cosine"}, "'lr_schedule': unknown value 'cosine'; choose from step, none"),
        ({"bins": "fancy"}, "'bins': unknown value 'fancy'; choose from published, quantile"),
        ({"split": "oops"}, "'split': unknown value 'oops'; choose from published, random, by_model"),
        ({"val_fraction": 1.0}, "'val_fraction' must lie in"),
        ({"device": "tpu"}, "'device': unknown value 'tpu'"),
    ],
)
def test_config_rejects_bad_input_naming_the_key(changes, message):
    with pytest.raises(Pix3DError, match=message.replace("(", r"\(").replace("+", r"\+")):
        TrainConfig.from_dict({**TrainConfig().to_dict(), **changes})


def test_config_round_trip_and_canonical_modalities():
    config = TrainConfig.from_dict({"model": "separate_net", "modalities": "mask+rgb", "lr": 1})
    assert config.modalities == ("rgb", "mask") and config.lr == 1.0 and isinstance(config.lr, float)
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    # The published defaults.
    default = TrainConfig()
    assert (default.batch_size, default.epochs, default.step_size, default.gamma) == (10, 25, 3, 0.1)


def test_budgets_auto_says_which_and_why():
    name, overrides, message = resolve_budget("auto")
    expected = "paper" if torch.cuda.is_available() else "quick"
    assert name == expected and overrides == BUDGETS[expected]
    assert message.startswith(f"budget auto -> {expected}: ")
    assert BUDGETS["paper"]["image_size"] == 224 and BUDGETS["paper"]["epochs"] == 25
    assert BUDGETS["paper"]["batch_size"] == 10
    with pytest.raises(UsageError, match="unknown budget 'huge'; choose from auto, paper, quick"):
        resolve_budget("huge")


def test_seed_everything_repeats_every_generator():
    def draw():
        shuffle = seed_everything(7)
        return (torch.rand(3).tolist(), np.random.rand(3).tolist(), __import__("random").random(),
                torch.randperm(10, generator=shuffle).tolist())
    assert draw() == draw()


def test_majority_baseline_counts_the_training_mode():
    train = np.array([[2, 0, 1], [2, 0, 1], [5, 0, 3]])
    val = np.array([[2, 0, 3], [1, 0, 3], [2, 1, 3], [2, 0, 1]])
    assert majority_baseline(train, val) == {
        "majority_azimuth_acc": 0.75, "majority_elevation_acc": 0.75, "majority_inplane_acc": 0.25}


# ----------------------------------------------------------------------------- the loop

def test_fit_reports_every_metric_each_epoch(data):
    seen = []
    result = fit(small_config(epochs=4), data, on_epoch=lambda m, c: seen.append((m, c)))
    history = result["history"]
    assert [m["epoch"] for m in history] == [1, 2, 3, 4] == [m["epoch"] for m, _ in seen]
    keys = {"epoch", "train_loss", "val_loss", "val_azimuth_acc", "val_elevation_acc", "val_inplane_acc",
            "val_azimuth_acc_within1", "majority_azimuth_acc", "majority_elevation_acc",
            "majority_inplane_acc", "best_val_azimuth_acc", "lr", "images_per_s", "epoch_time_s",
            "val_azimuth_confusion"}
    assert keys <= set(history[0])
    n_val = history[0]["n_val"]
    assert n_val == 12  # int(24 / 4) per category (seed split), two categories
    for m in history:
        confusion = np.array(m["val_azimuth_confusion"])
        assert confusion.shape == (N_BINS, N_BINS) and confusion.sum() == n_val
        assert math.isclose(np.trace(confusion) / n_val, m["val_azimuth_acc"])
        assert m["val_azimuth_acc_within1"] >= m["val_azimuth_acc"]
        assert all(math.isfinite(m[k]) for k in keys - {"val_azimuth_confusion"})
    assert history[-1]["best_val_azimuth_acc"] == max(m["val_azimuth_acc"] for m in history)
    # StepLR(3, 0.1) stepped each epoch: epoch 4 runs at a tenth of the lr.
    assert [m["lr"] for m in history] == pytest.approx([1e-3, 1e-3, 1e-3, 1e-4])
    assert result["final"] == history[-1]
    checkpoint = seen[-1][1]
    assert {"model", "optimizer", "scheduler", "epoch", "rng", "config", "bins", "norm", "history", "best"} <= set(checkpoint)
    assert checkpoint["config"] == small_config(epochs=4).to_dict()


def test_lr_schedule_none_keeps_the_lr_as_the_notebook_ran(data):
    history = fit(small_config(epochs=4, lr_schedule="none"), data)["history"]
    assert [m["lr"] for m in history] == pytest.approx([1e-3] * 4)


def test_resume_continues_exactly(data, tmp_path):
    config = small_config(epochs=4, lr_schedule="step", step_size=2, gamma=0.5)
    saved = {}

    def keep(metrics, checkpoint):
        saved[metrics["epoch"]] = checkpoint

    whole = fit(config, data, on_epoch=keep)["history"]
    path = save_checkpoint(tmp_path / "run" / "checkpoint.pt", saved[2])
    assert not [p for p in path.parent.iterdir() if p.name != "checkpoint.pt"]  # no temp files left
    # Disturb every global RNG: a resumed run must restore them, not rely on luck.
    torch.manual_seed(123), np.random.seed(123)
    resumed_end = {}
    resumed = fit(config, data, resume_from=path, on_epoch=lambda m, c: resumed_end.update(c))["history"]
    assert len(resumed) == 4
    for a, b in zip(whole, resumed):
        for key in ("train_loss", "val_loss", "val_azimuth_acc", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), key
    for name, tensor in saved[4]["model"].items():
        torch.testing.assert_close(tensor, resumed_end["model"][name], rtol=1e-5, atol=1e-7)


def test_resume_from_another_config_names_the_differing_keys(data):
    saved = {}
    fit(small_config(epochs=1), data, on_epoch=lambda m, c: saved.update(c))
    with pytest.raises(Pix3DError, match=r"another config; differing keys: lr \(0.001 vs 0.01\), seed \(0 vs 1\)"):
        fit(small_config(epochs=2, lr=1e-2, seed=1), data, resume_from=saved)
    # More epochs is a continuation, not another config.
    assert len(fit(small_config(epochs=2), data, resume_from=saved)["history"]) == 2


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_both_precisions_train(data, precision):
    config = small_config(model="separate_net", modalities=("rgb", "mask"), precision=precision,
                          channels_last=precision == "bf16", epochs=3, lr=1e-3, lr_schedule="none")
    history = fit(config, data)["history"]
    losses = [m["train_loss"] for m in history]
    assert losses[-1] < losses[0] * 0.9, losses


def test_seed_quirks_train_on_raw_inputs(data):
    saved = {}
    fit(small_config(model="separate_net", modalities=("rgb", "mask"), seed_quirks=True, epochs=1),
        data, on_epoch=lambda m, c: saved.update(c))
    assert saved["norm"]["scale"] == "raw"
    plain = {}
    fit(small_config(epochs=1), data, on_epoch=lambda m, c: plain.update(c))
    # Standardisation stats come from the training split, in [0, 1] units.
    assert plain["norm"]["scale"] == "unit" and 0 < plain["norm"]["mean"][0] < 1


def test_nan_loss_stops_naming_epoch_and_step(data):
    with pytest.raises(Pix3DError, match=r"loss became (nan|inf) at epoch 1, step \d+"):
        fit(small_config(lr=1e30, epochs=1), data)


def test_missing_modality_and_size_mismatch_are_clear(data):
    with pytest.raises(Pix3DError, match="modality 'normals' is unavailable"):
        fit(small_config(modalities=("rgb", "normals")), pose_pattern_data(normals=False))
    with pytest.raises(Pix3DError, match="prepared at 64 px but config key 'image_size' is 96"):
        fit(small_config(image_size=96), data)


@pytest.mark.parametrize("modalities", [("rgb",), ("mask", "rgb"), ("rgb", "normals"), ("boundaries",),
                                        ("rgb", "mask", "boundaries", "normals")])
@pytest.mark.parametrize("channels_last", [False, True])
def test_compact_batch_source_matches_the_cache_view(data, modalities, channels_last, monkeypatch):
    """The compact layout CUDA uses (only the trial's channels, copied in chunks) gives the same
    batches as gathering from the shared cache; checked on the CPU, chunk size not dividing N."""
    monkeypatch.setattr(BatchSource, "COPY_CHUNK", 7)
    labels = np.arange(len(data) * 3).reshape(-1, 3) % N_BINS
    n = len(modalities) + 2 * sum(m in ("rgb", "normals") for m in modalities)
    norm = {"mean": np.linspace(0.1, 0.5, n).tolist(), "std": np.linspace(0.2, 0.3, n).tolist(), "scale": "unit"}
    cpu = torch.device("cpu")
    view = BatchSource(data.images, labels, modalities, norm, cpu, channels_last, compact=False)
    compact = BatchSource(data.images, labels, modalities, norm, cpu, channels_last, compact=True)
    assert view.compact is None and compact.view is None
    assert compact.compact.shape == (len(data), n, SIZE, SIZE)
    idx = torch.tensor([len(data) - 1, 0, 5, 5, 17])
    assert torch.equal(compact.inputs(idx), view.inputs(idx))
    assert torch.equal(compact.targets(idx), view.targets(idx))
    assert compact.inputs(idx).shape == (5, n, SIZE, SIZE)


def test_max_train_images_caps_the_training_split_only(data):
    history = fit(small_config(epochs=1, max_train_images=10), data)["history"]
    assert history[0]["n_train"] == 10 and history[0]["n_val"] == 12


def test_load_checkpoint_rejects_garbage(tmp_path):
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(Pix3DError, match=f"checkpoint {bad} cannot be read"):
        load_checkpoint(bad)
    with pytest.raises(Pix3DError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


# ----------------------------------------------------------------------------- CLI

def run_train_cli(*args, cwd: Path, cache: Path | None = None):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    if cache is not None:
        env["PIX3D_CACHE"] = str(cache)
    return subprocess.run([sys.executable, "-m", "pix3d.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "resnet"], "error: --model: unknown model 'resnet'; choose from combined_net, separate_net"),
        (["--modalities", ""], "error: --modalities: empty modality list"),
        (["--modalities", "rgb,depth"], "error: --modalities: unknown modality 'depth'"),
        (["--lr", "-1"], "error: --lr must be positive, got -1.0"),
        (["--epochs", "0"], "error: --epochs must be positive, got 0"),
        (["--batch-size", "0"], "error: --batch-size must be positive, got 0"),
        (["--budget", "huge"], "error: argument --budget: invalid choice"),
        (["--resume", "--out", "nowhere"], "error: --resume: no checkpoint at nowhere/checkpoint.pt"),
    ],
)
def test_cli_bad_usage_is_one_error_line(tmp_path, monkeypatch, capsys, args, message):
    # In-process through the real entry point (run_cli(main)): same stderr and exit code as
    # `python -m pix3d.train`, without paying a torch import per case.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PIX3D_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SystemExit) as exit_info:
        run_cli(train_main, args)
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2, stderr
    assert stderr.startswith(message) and stderr.count("\n") == 1, stderr
    assert "Traceback" not in stderr


def test_cli_trains_writes_outputs_and_guards_resume(tmp_path, monkeypatch, capsys):
    folder = write_pix3d_folder(tmp_path / "pix3d", 30)  # real PNG/JPEG/TIFF files, no normals/
    common = ["--data", str(folder), "--cache", str(tmp_path / "cache"), "--budget", "quick",
              "--model", "separate_net", "--threads", "1", "--batch-size", "8", "--no-progress",
              "--out", str(tmp_path / "run")]
    proc = run_train_cli(*common, "--epochs", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "budget quick" in proc.stdout
    assert "epoch   1/2" in proc.stdout and "epoch   2/2" in proc.stdout and "done in" in proc.stdout
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [m["epoch"] for m in history["history"]] == [1, 2]
    assert history["config"]["lr"] == 1e-3  # separate_net's published lr
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == 2

    def in_process(*args):
        # The same entry point as `python -m pix3d.train`, without another torch import.
        with pytest.raises(SystemExit) as exit_info:
            run_cli(train_main, list(args))
        return exit_info.value.code, capsys.readouterr().err

    monkeypatch.chdir(tmp_path)
    code, err = in_process(*common, "--epochs", "2")
    assert code == 2 and "exists; pass --resume" in err
    code, err = in_process(*common, "--epochs", "3", "--lr", "0.01", "--resume")
    assert code == 1 and err.startswith("error: checkpoint is from another config; differing keys: lr")
    code, err = in_process(*common[:-1], str(tmp_path / "run2"), "--modalities", "rgb,normals")
    assert code == 1 and err.startswith("error: modality 'normals' is unavailable")
    assert "Traceback" not in err
    more = run_train_cli(*common, "--epochs", "3", "--resume", cwd=tmp_path)
    assert more.returncode == 0, more.stderr
    assert "epoch   3/3" in more.stdout and "epoch   1/3" not in more.stdout
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == 3


# ----------------------------------------------------------------------------- learning (slow)

def _quick_fit(model: str, modalities: tuple[str, ...], lr: float | None = None, **changes) -> dict:
    """One fit on the built-in set at the quick budget's size and precision ('auto', so it follows
    $PIX3D_PRECISION), with `changes` (epochs, max_train_images) on top."""
    _, overrides, _ = resolve_budget("quick")
    data = prepare("synthetic", overrides["image_size"], progress=False, log=lambda s: None)
    config = TrainConfig.from_dict({**overrides, **changes, "model": model, "modalities": modalities,
                                    "lr": lr or published_lr(model), "threads": 2, "device": "cpu"})
    return fit(config, data)["final"]


@pytest.mark.slow  # ~9,700 passes of combined_net at 64 px: ~3 min of 2 quiet AVX2 cores in fp32
def test_combined_net_rgb_mask_learns_at_the_measured_budget():
    """The claim the project keeps for combined_net (docs/results.md, bench_learning.py): on
    RGB+mask at a constant lr 1e-3 it learns azimuth well clear of the majority baseline within
    the whole training split x 6 epochs (~9,700 image passes at the quick budget's 64 px).

    Measured with exactly this config (2 threads, seed 0) on a 2-core AMD EPYC with AVX2 only,
    2026-12-05, val azimuth accuracy against a 0.130 majority on 177 validation images:
    fp32 0.153, 0.181, 0.220, 0.220, 0.249, 0.277 over the 6 epochs (2.13x at the end);
    bf16 autocast (PIX3D_PRECISION=bf16) 0.141, 0.198, 0.186, 0.203, 0.203, 0.271 (2.09x).
    Twice the baseline sits inside one validation set's noise (+-0.03), so the test asks for
    1.5x (0.195): 0.08 of headroom in both. It ran 8 epochs (~13,000 passes) before; bf16 was
    not measured then. The quick budget's 900 passes are far from enough, which is why `quick`
    is only a smoke run; at batches of 32 (the `cpu` budget's) 3 epochs gave 1.57x in fp32 and
    1.96x in bf16 here: too little headroom for a test."""
    final = _quick_fit("combined_net", ("rgb", "mask"), lr=1e-3, max_train_images=None, epochs=6,
                       lr_schedule="none")
    assert final["n_train"] * 6 >= 9000, final["n_train"]  # the budget measured, not a smaller one
    assert final["val_azimuth_acc"] >= 1.5 * final["majority_azimuth_acc"], final


@pytest.mark.slow
def test_quick_budget_learns_the_synthetic_set():
    """separate_net on all four modalities at its published lr 1e-3 learns azimuth in the quick
    budget (measured 0.395 vs a 0.130 majority baseline)."""
    final = _quick_fit("separate_net", ("rgb", "mask", "boundaries", "normals"))
    assert final["val_azimuth_acc"] >= 2 * final["majority_azimuth_acc"], final


def test_precision_auto_follows_the_hardware(monkeypatch):
    """'auto' is bf16 only where the CPU has bf16 units (read from /proc/cpuinfo), fp32 otherwise."""
    from pix3d.train.precision import cpu_has_fast_bf16, resolve_precision

    monkeypatch.delenv("PIX3D_PRECISION", raising=False)
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if cpu_has_fast_bf16() else "fp32")
    assert resolve_precision("fp32", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"
    flags = open("/proc/cpuinfo").read()
    assert cpu_has_fast_bf16() == (" amx_bf16" in flags or " avx512_bf16" in flags)


def test_precision_env_forces_auto_only(monkeypatch, data):
    """$PIX3D_PRECISION decides what 'auto' means (both ways), leaves explicit precisions alone,
    and a bad value is one error naming the variable."""
    from pix3d.train import resolve_precision

    cpu = torch.device("cpu")
    for forced in ("fp32", "bf16", "BF16 "):
        monkeypatch.setenv("PIX3D_PRECISION", forced)
        assert resolve_precision("auto", cpu) == forced.strip().lower()
        assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    monkeypatch.setenv("PIX3D_PRECISION", "bf16")
    history = fit(small_config(epochs=1), data)["history"]
    assert history[-1]["bf16_autocast"] == 1.0  # what ran is recorded
    monkeypatch.setenv("PIX3D_PRECISION", "fp16")
    with pytest.raises(Pix3DError, match=r"environment variable PIX3D_PRECISION: unknown value 'fp16'"):
        resolve_precision("auto", cpu)
