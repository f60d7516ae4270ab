"""`python -m benchmarks.device_check`: the first measurements on a GPU, one command, one table.

    python -m benchmarks.device_check                          # on a CUDA machine (<= 8 min on one H100)
    python -m benchmarks.device_check --cache /data/pix3d      # reuse prepared data: no generation
    python -m benchmarks.device_check --device cpu --dry-run   # the plan and the memory estimates only

Parts, in this order, all in bf16 autocast with the data on the GPU (`BatchSource` copies the
cache there): the GPU's ceiling (a bf16 matmul and a bf16 3x3 convolution, timed between
`torch.cuda.synchronize` calls); one `paper`-budget epoch at 224 px of each model on all four
modalities, in the budget's memory layout and in channels_last, against that ceiling (the
step's FLOPs counted by torch); a sweep of 8 trials at 0.25 GPU each, packed on one GPU by Ray,
with each trial's start and end and its `torch.cuda.max_memory_allocated` against the memory
plan's estimate (`pix3d.devices.estimate_train_memory`, as `search.run` plans a packing); and
one Tune trial against the same `fit` run bare in this process (`benchmarks.throughput.trials`).
Without CUDA it says so in one line and exits 1.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

import torch
from ray import tune

from benchmarks.bench_train import calls_per_second, training_step
from benchmarks.throughput import compute, trials
from pix3d.cli import ArgumentParser, positive_float, positive_int, run_cli
from pix3d.constants import parse_modalities
from pix3d.devices import ALLOCATOR_SLACK, GIB, estimate_train_memory, torch_cuda_report
from pix3d.errors import Pix3DError, UsageError
from pix3d.fileio import ensure_writable_dir, write_json
from pix3d.models import published_lr
from pix3d.train import BUDGETS, fit
from search.devices import estimate_trials, plan_gpu_packing, trials_per_gpu
from trainables.pose import train_config_from_tune

MODELS = ("combined_net", "separate_net")
ALL_FOUR = "rgb+mask+boundaries+normals"
# The sweep: both models on four nested subsets = 8 trials, as an ablation's trials are shaped.
SWEEP_SUBSETS = ("rgb", "rgb+mask", "rgb+mask+boundaries", ALL_FOUR)
TUNE_MODEL = "separate_net"
PEAK_KEY = "cuda_peak_dir"   # Tune config key: where train_pose_cuda_peak writes each trial's peak


@dataclass(frozen=True)
class Plan:
    """What the check runs and how big each part is."""

    device: str
    data: str
    n_images: int
    image_size: int = BUDGETS["paper"]["image_size"]
    batch_size: int = BUDGETS["paper"]["batch_size"]
    epoch_epochs: int = 2            # the first epoch pays cuDNN's autotuning; the second is the rate
    sweep_epochs: int = 2
    gpus_per_trial: float = 0.25
    cpus_per_trial: int = 2
    tune_epochs: int = 3
    matmul_n: int = 8192
    conv: tuple[int, int, int, int] = (64, 256, 56, 3)   # batch, channels in = out, side, kernel
    seconds: float = 1.0             # timed seconds per ceiling

    def paper_config(self, model: str, modalities: str, **overrides) -> dict:
        """A Tune config of the paper budget in bf16 on CUDA, the model at its published lr."""
        return {**BUDGETS["paper"], "image_size": self.image_size, "batch_size": self.batch_size,
                "model": model, "modalities": modalities, "lr": published_lr(model),
                "seed": 0, "precision": "bf16", "device": self.device, "cpus_per_trial": self.cpus_per_trial,
                "gpus_per_trial": self.gpus_per_trial, **overrides}

    def sweep_configs(self) -> list[dict]:
        return [self.paper_config(m, s, epochs=self.sweep_epochs) for m in MODELS for s in SWEEP_SUBSETS]


def count_images(data: str) -> int:
    """Entries of the data set without preparing it: the built-in set's size, or pix3d.json's length."""
    if data == "synthetic":
        from pix3d.render.synthetic import SyntheticConfig

        return SyntheticConfig().n
    path = Path(data) / "pix3d.json"
    try:
        return len(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        raise Pix3DError(f"--data {data}: cannot read {path}: {exc}") from None


def plan_lines(plan: Plan, gpu_memory: int | None) -> list[str]:
    """The dry run's output: the parts with their sizes, and the memory plan of the sweep."""
    per_gpu = trials_per_gpu(plan.gpus_per_trial)
    n, c, side, k = plan.conv
    lines = [
        f"device_check plan: device {plan.device}, data {plan.data} ({plan.n_images} images at "
        f"{plan.image_size} px), batch {plan.batch_size}, bf16 autocast",
        f"1. ceiling: bf16 matmul {plan.matmul_n}^3; bf16 conv {k}x{k} {c}->{c} ch at {side} px, batch {n}, "
        f"channels_last; {plan.seconds:g} s each",
        f"2. paper epoch: {', '.join(MODELS)} on {ALL_FOUR}, {plan.epoch_epochs} epochs each "
        f"(the second timed), budget layout and channels_last",
        f"3. sweep: {len(plan.sweep_configs())} trials x {plan.gpus_per_trial:g} GPU, {plan.cpus_per_trial} CPUs, "
        f"{plan.sweep_epochs} epochs; expect {per_gpu} at once on one GPU",
        f"4. tune vs bare: {TUNE_MODEL} on {ALL_FOUR}, {plan.tune_epochs} epochs, bare then one Tune trial "
        "(1 GPU) in a fresh and in a reused actor",
        "memory plan of the sweep's trials (estimate_train_memory, bf16):",
    ]
    # The sweep's trials are distinct shapes: estimate_trials (what search.run plans) gives one each.
    estimates = estimate_trials(plan.sweep_configs(), plan.n_images)
    lines.extend(f"  {estimate.describe()}" for estimate in estimates)
    lines.append("  " + plan_gpu_packing(estimates, plan.gpus_per_trial, gpu_memory, "--gpu-memory-gib"))
    return lines


def memory_estimate(config: dict, n_images: int):
    return estimate_train_memory(config["model"], parse_modalities(config["modalities"]),
                                 image_size=config["image_size"], batch_size=config["batch_size"],
                                 n_images=n_images, precision=config["precision"])


def tensor_estimate(estimate) -> int:
    """The estimate less the CUDA context and workspace: what max_memory_allocated can see."""
    return int((estimate.cache + estimate.model_state + estimate.activations) * ALLOCATOR_SLACK)


# ----------------------------------------------------------------------------- measurements

def gpu_ceilings(plan: Plan, device: torch.device) -> dict:
    """bf16 TFLOP/s of a large matmul and of a 3x3 convolution (forward), synchronised timings."""
    torch.backends.cudnn.benchmark = True
    n = plan.matmul_n
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    matmul = calls_per_second(lambda: torch.mm(a, b), seconds=plan.seconds, device=device, min_calls=3) * 2 * n**3
    batch, ch, side, k = plan.conv
    x = torch.randn(batch, ch, side, side, device=device, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    w = torch.randn(ch, ch, k, k, device=device, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    conv_flops = 2 * batch * ch * side * side * ch * k * k
    conv = calls_per_second(lambda: torch.nn.functional.conv2d(x, w, padding=k // 2), seconds=plan.seconds,
                            device=device, min_calls=3) * conv_flops
    return {"matmul_tflops": matmul / 1e12, "conv_tflops": conv / 1e12}


def paper_epochs(plan: Plan, data, device: torch.device, ceilings: dict) -> list[dict]:
    """Per model and memory layout: the second epoch's training images/s of `fit` on the paper
    budget, the step's GFLOP per image, and the achieved TFLOP/s against the conv ceiling."""
    rows = []
    for model in MODELS:
        for channels_last in sorted({BUDGETS["paper"]["channels_last"], True}):
            step = training_step(model, parse_modalities(ALL_FOUR), image_size=plan.image_size,
                                 batch_size=plan.batch_size, precision="bf16", channels_last=channels_last,
                                 device=device)
            gflop = compute.step_flops(step) / plan.batch_size / 1e9
            config = plan.paper_config(model, ALL_FOUR, epochs=plan.epoch_epochs, channels_last=channels_last)
            history = fit(train_config_from_tune(config), data)["history"]
            rate = history[-1]["images_per_s"]
            achieved = rate * gflop / 1e3
            rows.append({"model": model, "channels_last": channels_last, "images_per_s": rate,
                         "first_epoch_s": history[0]["epoch_time_s"], "epoch_s": history[-1]["epoch_time_s"],
                         "n_train": history[-1]["n_train"], "gflop_per_image": gflop, "tflops": achieved,
                         "conv_ceiling_share": achieved / ceilings["conv_tflops"]})
    return rows


def train_pose_cuda_peak(config: dict, data=None) -> None:
    """`trainables.pose.train_pose` with this trial's `torch.cuda.max_memory_allocated` (and
    reserved) written to `<config[PEAK_KEY]>/<trial id>.json` (the key is not passed on)."""
    from trainables.pose import train_pose

    out = Path(config[PEAK_KEY]) / f"{tune.get_context().get_trial_id()}.json"
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()   # a reused actor's previous trial must not count
    train_pose({k: v for k, v in config.items() if k != PEAK_KEY}, data)
    write_json(out, {"model": config["model"], "modalities": config["modalities"],
                     "max_memory_allocated": torch.cuda.max_memory_allocated() if cuda else None,
                     "max_memory_reserved": torch.cuda.max_memory_reserved() if cuda else None})


def most_at_once(intervals: Sequence[tuple[float, float]]) -> int:
    """The largest number of (start, end) intervals open at one instant."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    open_now = best = 0
    for _, step in events:
        open_now += step
        best = max(best, open_now)
    return best


def packed_sweep(plan: Plan, data, work: Path) -> dict:
    """The 8 trials at 0.25 GPU through `search.run.run_sweep`: each one's start and end (driver
    clock, seconds from the sweep's start), peak memory and the memory plan's estimate."""
    peaks_dir = work / "peaks"
    peaks_dir.mkdir(parents=True, exist_ok=True)
    configs = plan.sweep_configs()
    space = {**configs[0], "model": tune.grid_search(list(MODELS)), "modalities": tune.grid_search(list(SWEEP_SUBSETS)),
             PEAK_KEY: str(peaks_dir)}
    results, clock, wall = trials.tune_trials(space, data, storage=str(work / "tune"), experiment="packed",
                                              function=train_pose_cuda_peak, cpus_per_trial=plan.cpus_per_trial,
                                              gpus_per_trial=plan.gpus_per_trial)
    peaks = {(p["model"], p["modalities"]): p for p in (json.loads(f.read_text()) for f in peaks_dir.glob("*.json"))}
    t0 = min(t["start"] for t in clock.trials.values())
    rows = []
    for result in results:
        key = (result.config["model"], result.config["modalities"])
        timing = clock.trials[result.metrics["trial_id"]]
        estimate = memory_estimate({**result.config, "precision": "bf16"}, len(data))
        peak = peaks.get(key, {}).get("max_memory_allocated")
        rows.append({"model": key[0], "modalities": key[1], "start_s": timing["start"] - t0,
                     "end_s": timing["end"] - t0, "gpu_ids": result.metrics.get("gpu_ids"),
                     "peak_bytes": peak, "reserved_bytes": peaks.get(key, {}).get("max_memory_reserved"),
                     "estimate_bytes": estimate.total, "estimate_tensor_bytes": tensor_estimate(estimate)})
    rows.sort(key=lambda r: r["start_s"])
    return {"wall_s": wall, "trials": rows, "most_at_once": most_at_once([(r["start_s"], r["end_s"]) for r in rows]),
            "expected_at_once": trials_per_gpu(plan.gpus_per_trial)}


def tune_vs_bare(plan: Plan, data, work: Path) -> dict:
    """The same paper-budget fit bare in this process and as a Tune trial given one GPU."""
    config = plan.paper_config(TUNE_MODEL, ALL_FOUR, epochs=plan.tune_epochs, gpus_per_trial=1)
    bare = trials.bare_fit(config, data)
    fresh, reused, _ = trials.fresh_and_reused(config, data, storage=str(work / "tune"), gpus_per_trial=1)
    return {**trials.tune_ratio(bare, reused), "fresh_actor": trials.tune_ratio(bare, fresh)}


# ----------------------------------------------------------------------------- the table

def _gib(n: int | None) -> str:
    return "-" if n is None else f"{n / GIB:.2f} GiB"


def table_lines(results: dict) -> list[str]:
    """One table: part | item | measured | against."""
    rows: list[tuple[str, str, str, str]] = []
    c = results["ceiling"]
    rows.append(("ceiling", "bf16 matmul", f"{c['matmul_tflops']:.1f} TFLOP/s", ""))
    rows.append(("ceiling", "bf16 conv 3x3", f"{c['conv_tflops']:.1f} TFLOP/s", ""))
    for r in results["epochs"]:
        layout = "channels_last" if r["channels_last"] else "NCHW"
        rows.append(("paper epoch", f"{r['model']} all four, {layout}",
                     f"{r['images_per_s']:.0f} images/s ({r['epoch_s']:.1f} s, first {r['first_epoch_s']:.1f} s)",
                     f"{r['tflops']:.1f} TFLOP/s = {100 * r['conv_ceiling_share']:.1f}% of conv ceiling "
                     f"({r['gflop_per_image']:.1f} GFLOP/image)"))
    s = results["sweep"]
    rows.append(("sweep", f"{len(s['trials'])} trials x {results['plan']['gpus_per_trial']:g} GPU",
                 f"{s['most_at_once']} at once, {s['wall_s']:.0f} s", f"{s['expected_at_once']} per GPU planned"))
    for t in s["trials"]:
        share = f" = {t['peak_bytes'] / t['estimate_tensor_bytes']:.2f}x" if t["peak_bytes"] else ""
        rows.append(("sweep trial", f"{t['model']} {t['modalities']} (GPU {t['gpu_ids']})",
                     f"{t['start_s']:.0f}-{t['end_s']:.0f} s, peak {_gib(t['peak_bytes'])}",
                     f"plan {_gib(t['estimate_bytes'])} (tensors {_gib(t['estimate_tensor_bytes'])}){share}"))
    tv = results["tune"]
    rows.append(("tune vs bare", f"{TUNE_MODEL} all four, 1 GPU",
                 f"{tv['tune_images_per_s']:.0f} vs {tv['bare_images_per_s']:.0f} images/s",
                 f"{tv['ratio']:.3f}x reused actor, {tv['fresh_actor']['ratio']:.3f}x fresh"))
    widths = [max(len(r[i]) for r in rows + [("part", "item", "measured", "against")]) for i in range(4)]
    head = ("part", "item", "measured", "against")
    return [results["title"], *("  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip() for row in [head, *rows])]


# ----------------------------------------------------------------------------- command

def get_args_parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m benchmarks.device_check", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                   help="cuda measures; cpu is only for --dry-run (the plan on a machine without a GPU)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the memory estimates; train nothing")
    p.add_argument("--data", default="synthetic", help="a Pix3D folder, or 'synthetic' (the built-in set, generated when missing)")
    p.add_argument("--cache", type=Path, default=None, help="cache root of prepared data (default: PIX3D_CACHE)")
    p.add_argument("--work", type=Path, default=None, help="folder for the sweeps (default: a temp folder)")
    p.add_argument("--out", type=Path, default=Path("device_check.json"), help="JSON file of the results")
    p.add_argument("--gpu-memory-gib", type=positive_float, default=None,
                   help="GPU size to check the memory plan against in --dry-run (default: the GPU's own)")
    p.add_argument("--sweep-epochs", type=positive_int, default=Plan.sweep_epochs, help="epochs of each sweep trial")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.device == "cpu" and not args.dry_run:
        raise UsageError("--device cpu only prints the plan: add --dry-run (the check measures a GPU)")
    if args.device == "cuda" and not args.dry_run and not torch.cuda.is_available():
        raise Pix3DError(f"device_check needs a CUDA GPU and this machine has none: {torch_cuda_report()}")
    plan = Plan(device=args.device, data=args.data, n_images=count_images(args.data), sweep_epochs=args.sweep_epochs)
    gpu_memory = int(args.gpu_memory_gib * GIB) if args.gpu_memory_gib else (
        torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else None)
    if args.dry_run:
        print("\n".join(plan_lines(plan, gpu_memory)))
        return 0
    print("\n".join(plan_lines(plan, gpu_memory)), flush=True)
    return measure(plan, args, gpu_memory)


def measure(plan: Plan, args, gpu_memory: int) -> int:
    """Run the four parts on the GPU, print the table, write the JSON file."""
    import ray

    from pix3d.data.prepare import prepare
    from search.cluster import init_ray

    def log(line: str) -> None:
        print(line, flush=True)

    started = time.perf_counter()
    device = torch.device("cuda")
    work = ensure_writable_dir(args.work or Path(tempfile.mkdtemp(prefix="pix3d-device-check-")), "--work")
    results: dict = {"plan": asdict(plan), "machine": compute.machine_info(), "gpu": torch.cuda.get_device_name(0),
                     "gpu_memory_bytes": gpu_memory, "cuda": torch.version.cuda}
    results["title"] = (f"device_check on {results['gpu']} ({gpu_memory / GIB:.0f} GiB), torch {torch.__version__}, "
                        f"CUDA {torch.version.cuda}, {results['machine']['cpu']} x{results['machine']['cores']}")
    log("1. ceiling ...")
    results["ceiling"] = gpu_ceilings(plan, device)
    log(f"data: {plan.data} at {plan.image_size} px ...")
    t0 = time.perf_counter()
    data = prepare(plan.data, plan.image_size, cache_dir=args.cache, progress=False, log=log)
    results["data_s"] = time.perf_counter() - t0
    plan = replace(plan, n_images=len(data))
    log("2. paper epochs ...")
    results["epochs"] = paper_epochs(plan, data, device, results["ceiling"])
    torch.cuda.empty_cache()   # the driver's cached blocks would sit beside the packed trials
    init_ray(None, log=log)
    try:
        log("3. packed sweep ...")
        results["sweep"] = packed_sweep(plan, data, work)
        log("4. tune vs bare ...")
        results["tune"] = tune_vs_bare(plan, data, work)
    finally:
        ray.shutdown()
    results["wall_s"] = time.perf_counter() - started
    write_json(args.out, results)
    print("\n".join(table_lines(results)))
    print(f"{results['wall_s']:.0f} s in all (data {results['data_s']:.0f} s); results -> {args.out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
