"""benchmarks.device_check on a machine without a GPU: the refusal, and the plan of `--dry-run`.

The measurements themselves need CUDA (docs/device_check.md); here the command runs in-process
(no interpreter start-up) and its plan is checked against the memory plan's own functions.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.device_check import MODELS, SWEEP_SUBSETS, main, most_at_once
from pix3d.cli import run_cli
from pix3d.constants import parse_modalities
from pix3d.devices import estimate_train_memory
from pix3d.render.synthetic import SyntheticConfig
from pix3d.train import BUDGETS
from tests.pix3d_fixtures import write_pix3d_folder

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")


def run(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@no_cuda
def test_without_cuda_it_says_so_in_one_line_and_exits_non_zero(capsys, tmp_path):
    code, out, err = run(["--out", str(tmp_path / "r.json")], capsys)
    assert code == 1 and out == ""
    assert err.startswith("error: device_check needs a CUDA GPU") and "cuda.is_available()=False" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "r.json").exists()


def test_cpu_without_dry_run_is_a_usage_error(capsys):
    code, out, err = run(["--device", "cpu"], capsys)
    assert code == 2 and out == "" and err.startswith("error: --device cpu only prints the plan: add --dry-run")


def test_dry_run_prints_the_plan_with_each_trials_memory_estimate(capsys, tmp_path):
    code, out, err = run(["--device", "cpu", "--dry-run", "--gpu-memory-gib", "80", "--out", str(tmp_path / "r.json")],
                         capsys)
    assert code == 0, err
    n_images = SyntheticConfig().n
    size, batch = BUDGETS["paper"]["image_size"], BUDGETS["paper"]["batch_size"]
    assert out.startswith(f"device_check plan: device cpu, data synthetic ({n_images} images at {size} px), batch {batch}")
    assert "3. sweep: 8 trials x 0.25 GPU" in out and "expect 4 at once on one GPU" in out
    estimates = [estimate_train_memory(m, parse_modalities(s), image_size=size, batch_size=batch, n_images=n_images,
                                       precision="bf16") for m in MODELS for s in SWEEP_SUBSETS]
    for estimate in estimates:
        assert f"  {estimate.describe()}\n" in out
    worst = max(e.total for e in estimates)
    assert f"GPU memory plan: 4 trial(s) per GPU x up to {worst / 2**30:.2f} GiB" in out and "of 80.00 GiB" in out
    assert not (tmp_path / "r.json").exists()  # nothing measured, nothing written


def test_dry_run_refuses_a_gpu_too_small_for_four_trials(capsys):
    code, _, err = run(["--device", "cpu", "--dry-run", "--gpu-memory-gib", "8"], capsys)
    assert code == 1 and err.startswith("error: --gpus-per-trial 0.25 packs 4 trial(s) on each GPU")
    assert err.count("\n") == 1


def test_dry_run_sizes_the_plan_from_a_pix3d_folder(capsys, tmp_path):
    folder = write_pix3d_folder(tmp_path / "pix3d", 7)
    code, out, _ = run(["--device", "cpu", "--dry-run", "--data", str(folder)], capsys)
    assert code == 0 and f"data {folder} (7 images at 224 px)" in out
    code, _, err = run(["--device", "cpu", "--dry-run", "--data", str(tmp_path / "nowhere")], capsys)
    assert code == 1 and err.startswith(f"error: --data {tmp_path / 'nowhere'}: cannot read")


def test_most_at_once_counts_overlapping_trials():
    assert most_at_once([(0, 10), (1, 9), (2, 8), (3, 7), (10, 12)]) == 4
    assert most_at_once([(0, 1), (1, 2), (2, 3)]) == 1   # one ends as the next starts
    assert most_at_once([]) == 0
