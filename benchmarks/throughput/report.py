"""The throughput benchmark's table and its targets, from the results dict the command collects.

Owns `TARGETS` (the issue's ratios: Tune trial >= 0.95x the bare loop, data path >= 10x the
step, two trials <= 1.2x one cache copy, sweep <= 1.10x and the whole command <= 1.3x its
trials' time over the concurrency), `verdicts` (each target: its figure, met or missed) and
`table_lines` (what the command prints and docs/performance.md quotes).
"""

from __future__ import annotations

import operator
from typing import Any

from pix3d.fileio import human_bytes

# name -> (where the figure is in the results, comparison, target, what it is)
TARGETS: dict[str, tuple[tuple[str, ...], str, float, str]] = {
    "tune_trial": (("tune", "ratio"), ">=", 0.95, "Tune trial images/s / bare loop's"),
    "data_path": (("data_path_min_multiple",), ">=", 10.0, "batch assembly images/s / step's (slowest case)"),
    "memory": (("memory", "ratio"), "<=", 1.2, "cache memory of two trials / one copy"),
    "sweep": (("sweep", "sweep_ratio"), "<=", 1.10, "sweep wall / (trials' time / concurrency)"),
    "command": (("sweep", "command_ratio"), "<=", 1.3, "whole command wall / (trials' time / concurrency)"),
}
_COMPARE = {">=": operator.ge, "<=": operator.le}


def _lookup(results: dict, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(results, dict) or key not in results:
            return None
        results = results[key]
    return results


def verdicts(results: dict) -> dict[str, dict]:
    """Each target with its measured figure and whether it is met (None when not measured)."""
    out = {}
    for name, (path, op, target, what) in TARGETS.items():
        value = _lookup(results, path)
        met = None if value is None else bool(_COMPARE[op](value, target))
        out[name] = {"value": value, "target": f"{op} {target:g}", "met": met, "what": what}
    return out


def _f(value, fmt: str = ".2f", unit: str = "") -> str:
    return "-" if value is None else f"{value:{fmt}}{unit}"


def _machine_lines(m: dict) -> list[str]:
    load = " ".join(f"{x:.2f}" for x in m.get("load_average_at_start") or [])
    return [f"machine: {m['cpu']}, {m['cores']} cores, bf16 units {'yes' if m['bf16_units'] else 'no'}; "
            f"torch {m['torch']}, ray {m['ray']}; {m['date']}; load average at start {load or '-'}"]


def _compute_lines(r: dict) -> list[str]:
    lines = ["", "1. ceiling: matrix multiply", f"   {'dtype':<6}{'threads':>8}{'n':>6}{'GFLOP/s':>10}"]
    lines += [f"   {c['dtype']:<6}{c['threads']:>8}{c['n']:>6}{c['gflops']:>10.1f}" for c in r["ceiling"]]
    lines += ["", "2. bare training step (all four modalities, channels_last, "
              f"batch {r['steps'][0]['batch_size']}, {r['steps'][0]['threads']} thread)",
              f"   {'model':<14}{'px':>4} {'precision':<12}{'images/s':>9}{'GFLOP/img':>10}{'GFLOP/s':>9}{'of ceiling':>11}"]
    for s in r["steps"]:
        precision = s["precision"] if s["precision"] == s["ran"] else f"{s['precision']}->{s['ran']}"
        lines.append(f"   {s['model']:<14}{s['image_size']:>4} {precision:<12}{s['images_per_s']:>9.2f}"
                     f"{s['gflop_per_image']:>10.2f}{s['gflops']:>9.1f}{_f(s['ceiling_share'], '.0%'):>11}")
    return lines


def _trial_lines(r: dict) -> list[str]:
    t, d, m = r["tune"], r["data_path"], r["memory"]
    fresh = t["fresh_actor"]
    lines = ["", f"3. through Tune: {r['tune_config']}",
             f"   bare fit {t['bare_images_per_s']:.2f} images/s ({t['bare_wall_s']:.1f} s); in a Tune trial (reused actor) "
             f"{t['tune_images_per_s']:.2f} images/s over time_total_s ({t['time_total_s']:.1f} s): {t['ratio']:.3f}x",
             f"   inside the loop only {t['loop_ratio']:.3f}x; driver's trial start to end {t['end_to_end_ratio']:.3f}x; "
             f"in a fresh actor {fresh['ratio']:.3f}x ({fresh['time_total_s']:.1f} s)",
             "", "4. data path: batch assembly from the cache (gather, channels, normalise, channels_last, to device)"]
    for row in d:
        lines.append(f"   {row['image_size']:>4} px ({row['source']}): {row['images_per_s']:.0f} images/s = "
                     + ", ".join(f"{k} {v:.0f}x" for k, v in row["multiple_of_step"].items()) + " the step")
    lines += ["", f"5. memory: two concurrent trials, cache {human_bytes(m['cache_bytes'])}",
              f"   cache pages in the trials: {'shared object-store mapping' if m['shared_mapping'] else 'private copies'}; "
              f"store copy + private copies = {human_bytes(m['cache_in_trials_bytes'])} = {m['ratio']:.2f}x one copy",
              f"   whole processes: private {human_bytes(m['processes_private_bytes'])}, "
              f"resident {human_bytes(m['processes_rss_bytes'])} (both trials)"]
    return lines


def _sweep_lines(r: dict) -> list[str]:
    s, f = r["sweep"], r["fixed_costs"]
    lines = ["", f"6. sweep: grid {s['grid']} ({s['trials']} trials, {s['concurrency']} at once)",
             f"   trials trained {s['trials_time_total_s']:.1f} s in all -> {s['ideal_s']:.1f} s at {s['concurrency']} at once",
             f"   sweep {s['sweep_s']:.1f} s = {s['sweep_ratio']:.3f}x; whole command {s['data_s'] + s['command_s']:.1f} s "
             f"(data {s['data_s']:.1f} s + command {s['command_s']:.1f} s) = {s['command_ratio']:.3f}x "
             f"({s['command_without_data_ratio']:.3f}x with the data already there)",
             "   fixed costs:",
             f"     Ray start                            {_f(f.get('ray_start_s'), '.2f', ' s')}",
             f"     sweep start: Tune set-up, cache      {_f(f.get('tune_setup_s'), '.2f', ' s')}",
             f"     sweep start: first actor (+ torch)   {_f(f.get('first_actor_s'), '.2f', ' s')}",
             f"     actor warm-up (once per actor)       {_f(f.get('actor_warm_up_s'), '.2f', ' s')}",
             f"     trial start (data from the store)    {_f(f.get('trial_start_s'), '.2f', ' s')}",
             f"     trial set-up (split, stats, model)   {_f(f.get('trial_setup_s'), '.2f', ' s')} "
             f"(bare fit: {_f(f.get('bare_setup_s'), '.2f', ' s')})",
             f"     before 1st epoch, in the sweep       {_f(s.get('before_first_epoch_fresh_s'), '.2f', ' s')} "
             f"in a fresh actor ({s.get('fresh_actor_trials')} trials), "
             f"{_f(s.get('before_first_epoch_reused_s'), '.2f', ' s')} in a reused one ({s.get('actors')} actors)",
             f"     first epoch over a later one         {_f(f.get('first_epoch_extra_s'), '.2f', ' s')}",
             f"     checkpoint write ({human_bytes(f.get('checkpoint_bytes') or 0)})       "
             f"{_f(f.get('checkpoint_save_s'), '.3f', ' s')} per epoch",
             f"     report + checkpoint round trip       {_f(f.get('report_round_trip_s'), '.3f', ' s')} per epoch",
             f"     MLflow store creation (replayed)     {_f(s['mlflow_replay']['store_setup_s'], '.2f', ' s')}",
             f"     MLflow logging (replayed)            {_f(f.get('mlflow_per_trial_s'), '.2f', ' s')} per trial"
             f" (live, one trial: {_f(f.get('mlflow_live_s'), '.2f', ' s')} on the logging thread)",
             f"     around the sweep in the command      {_f(s.get('around_sweep_s'), '.1f', ' s')} "
             "(interpreter, imports, Ray start, summary, table)"]
    return lines


def table_lines(results: dict) -> list[str]:
    """The whole table: machine, the six parts, then each target and where it stands."""
    lines = _machine_lines(results["machine"]) + _compute_lines(results) + _trial_lines(results)
    if results.get("sweep"):
        lines += _sweep_lines(results)
    lines += ["", "targets:"]
    for name, v in results["verdicts"].items():
        state = {True: "met", False: "MISSED", None: "not measured"}[v["met"]]
        lines.append(f"   {name:<11}{_f(v['value'], '.3f'):>8}  target {v['target']:<7} {state:<13}{v['what']}")
    load = " ".join(f"{x:.2f}" for x in results.get("load_average_at_end") or [])
    lines.append(f"load average at end {load or '-'}")
    return lines
