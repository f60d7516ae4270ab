"""What an MLflow run records of a Tune trial: its name, tags, params and metrics.

Owns the mapping from a trial's config and reported results to run fields, shared by the
live callback and the replay (analysis.sync) so that both write the same runs: readable run
names, the tags the tables and the UI filter on, params (nested configs flattened, long
values cut to MLflow's limit), the data's provenance, the scalar metrics and their step.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

from pix3d.constants import modalities_key

# Bookkeeping that is not a measurement of the model: Ray's stamps and counters, the epoch and
# Tune's iteration (the step of every metric, not a metric), and flags and placement (params
# and tags of the run: analysis.sweep_logger.PLACEMENT_KEYS).
_SKIP_METRICS = frozenset({
    "timestamp", "pid", "done", "time_since_restore", "iterations_since_restore",
    "checkpoint_dir_name", "should_checkpoint", "started_at", "time_this_iter_s", "time_total_s",
    "epoch", "training_iteration", "bf16_autocast", "gpus_given", "simulated_gpu",
})
# The sizes of the split a trial trained on: fixed for the run, params (`size_params`), not metrics.
SIZE_KEYS = ("n_train", "n_val", "n_test")
# What a reviewer reads first on a trial's Model metrics page. MLflow 3.17 orders a run's charts
# by name and has no per-run or per-experiment setting for it (the order it keeps is in the
# browser's localStorage); a metric named `<section>/<name>` goes to a section of its own, and
# those sections come before "Model metrics" (docs/review.md). So these are logged twice: under
# their own names, which everything reads, and under HEADLINE_SECTION, which the UI opens on.
HEADLINE_SECTION = "headline"
HEADLINE_CHARTS = ("val_azimuth_acc", "val_azimuth_mederr", "train_loss", "val_loss")
# Reported names logged under a name that says what they are: the learning rate the schedule
# gave this epoch (not the config's lr, a param), and the timings, which MLflow's run page shows
# under "System metrics" (the `system/` prefix) rather than among the model's results.
METRIC_RENAMES = {"lr": "lr_scheduled", "images_per_s": "system/images_per_s",
                  "epoch_time_s": "system/epoch_time_s"}
_MAX_PARAM_CHARS = 6000   # MLflow's limit on one param value


def flatten(mapping: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """Nested dict -> {'a.b': leaf}; lists and tuples of scalars stay one value."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, name, sep))
        else:
            flat[name] = value
    return flat


def param_text(value: Any) -> str:
    """A param value as MLflow stores it: text, lists of names joined by +, cut to its limit."""
    if isinstance(value, (list, tuple)):
        value = "+".join(map(str, value)) if all(isinstance(v, str) for v in value) else list(value)
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= _MAX_PARAM_CHARS else text[: _MAX_PARAM_CHARS - 3] + "..."


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and (
        isinstance(value, (int, float)) or type(value).__name__ in ("float32", "float64", "int64", "int32"))


def scalar_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The MLflow metrics of one reported result: its numeric, finite-or-not scalars, without
    bookkeeping (bools, Ray stamps, the step, flags, the split's sizes), named as METRIC_RENAMES
    says, and the HEADLINE_CHARTS again as `headline/<name>`."""
    out: dict[str, float] = {}
    for key, value in result.items():
        if key in _SKIP_METRICS or key in SIZE_KEYS:
            continue
        if _is_number(value):
            out[METRIC_RENAMES.get(key, key)] = float(value)
    out.update({headline_key(key): out[key] for key in HEADLINE_CHARTS if key in out})
    return out


def headline_key(metric: str) -> str:
    """The name a headline metric's second copy has (its chart in the run page's first section)."""
    return f"{HEADLINE_SECTION}/{metric}"


def size_params(result: Mapping[str, Any]) -> dict[str, int]:
    """The split's sizes a result reports (`n_train`, `n_val`, relpose's `n_test`): run params."""
    return {key: int(result[key]) for key in SIZE_KEYS if _is_number(result.get(key))}


def result_step(result: Mapping[str, Any]) -> int:
    """step = epoch as the trainable reports it (1-based), else Tune's training_iteration."""
    for key in ("epoch", "training_iteration"):
        value = result.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return int(value)
    return 0


RELPOSE_TAG_KEYS = ("fusion", "weights", "loss", "freeze_backbone", "backbone")  # trainables.relpose's grid axes
# How a run name spells a searched parameter (short: the UI's list cuts long names).
_NAME_KEYS = {"batch_size": "bs", "weight_decay": "wd"}


def stopped_text(epoch: int, scheduler: str = "ASHA") -> str:
    """How a trial the scheduler stopped early reads everywhere (console, search view, MLflow tag)."""
    return f"stopped by {scheduler} at epoch {int(epoch)}"


def _number_text(value: Any) -> str:
    try:
        return f"{float(value):.2g}" if isinstance(value, float) else str(value)
    except (TypeError, ValueError):
        return str(value)


def trial_run_name(config: Mapping[str, Any], trial_id: str = "", searched: tuple[str, ...] = ()) -> str:
    """`combined_net rgb+mask lr=1e-05 s0` (+ ` quirks`): a sweep reads as a list in the UI.
    Relative-pose trials (fusion grids): `relpose early scratch pose frozen lr=0.001 s0`
    (`frozen` for a frozen backbone, the backbone's name when it is not ResNet-18). A search's
    trial (`searched`: the sampled keys): the model and each sampled value, which tell its
    runs apart (`separate_net lr=0.00032 bs=16 wd=1.2e-05`), not its constant modalities."""
    if searched:
        parts = [str(config.get("model", "trial"))]
        parts += [f"{_NAME_KEYS.get(k, k)}={_number_text(config[k])}" for k in searched if k != "model" and k in config]
        return " ".join(parts)
    parts = [str(config.get("model", "relpose" if "fusion" in config else "trial"))]
    parts += [str(config[k]) for k in ("fusion", "weights", "loss") if k in config]
    if config.get("freeze_backbone"):
        parts.append("frozen")
    if config.get("backbone", "resnet18") != "resnet18":
        parts.append(str(config["backbone"]))
    if "modalities" in config:
        try:
            parts.append(modalities_key(config["modalities"]))
        except ValueError:
            parts.append(str(config["modalities"]))
    if "lr" in config:
        try:
            parts.append(f"lr={float(config['lr']):g}")
        except (TypeError, ValueError):
            parts.append(f"lr={config['lr']}")
    if "seed" in config:
        parts.append(f"s{config['seed']}")
    if config.get("category"):
        parts.append(f"{config['category']} only")
    quirks = config.get("seed_quirks")
    if quirks is True or str(quirks) == "True":
        parts.append("quirks")
    elif isinstance(quirks, str) and quirks not in ("", "False", "none"):
        parts.append(f"quirks={quirks}")
    if len(parts) == 1 and trial_id:
        parts.append(trial_id)
    return " ".join(parts)


def trial_tags(config: Mapping[str, Any]) -> dict[str, str]:
    """The tags the table and the UI filter on (docs/interfaces.md)."""
    tags: dict[str, str] = {}
    for key in ("model", "seed", "seed_quirks", "lr", "split", *RELPOSE_TAG_KEYS):
        if key in config:
            tags[key] = str(config[key])
    if "modalities" in config:
        try:
            tags["modalities"] = modalities_key(config["modalities"])
        except ValueError:
            tags["modalities"] = str(config["modalities"])
    if config.get("category"):
        tags["train_category"] = str(config["category"])  # trained on that category only
    return tags


ORACLE_TAG = "oracle_inputs"  # child and parent runs: the modalities rendered from the CAD model

# Parent run: the config keys the sweep's grid varies (search.grids.varied_keys), as a JSON
# list. Together with model, modalities and seed they say which trials are different points
# and which are repeats (analysis.records, analysis.summary).
VARIES_TAG = "grid.varies"

# Parent run: the kind of sweep (search.kinds: "grid", "search", "fusion"), which says how it
# reads as a table (analysis.table.VIEWS).
KIND_TAG = "sweep.kind"


def varies_text(keys) -> str:
    """The VARIES_TAG value: the keys as a JSON list, in the grid's order."""
    return json.dumps(list(keys))


def read_varies(text: str | None) -> tuple[str, ...] | None:
    """The keys a VARIES_TAG value names; None when absent or not a JSON list of names (runs
    logged before the tag existed, whose identity is then the table's usual keys)."""
    try:
        keys = json.loads(text) if text else None
    except ValueError:
        return None
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        return None
    return tuple(keys)


def oracle_inputs(manifest: Mapping[str, Any], modalities: Any = None) -> str:
    """'normals+boundaries' style list of the cache's oracle modalities (those of `modalities`
    only, when given), or 'none': trials trained on them are not comparable with photos."""
    oracle = [m for m in manifest.get("oracle") or [] if isinstance(m, str)]
    if modalities is not None:
        try:
            used = set(modalities_key(modalities).split("+"))
        except ValueError:
            used = set(str(modalities).replace(",", "+").split("+"))
        oracle = [m for m in oracle if m in used]
    return "+".join(oracle) or "none"


def split_membership(split: Any, manifest: Mapping[str, Any]) -> str:
    """Which membership a run's split is: the notebook's (with its hash) where `published`
    applies it to the cache (pix3d.data.splits.match_published, recorded in the manifest),
    else the seeded rule of the split named."""
    record = manifest.get("published_split") or {}
    if str(split) in ("published", "seed") and record.get("membership") == "notebook" and record.get("sha256"):
        return f"notebook sha256:{record['sha256']}"
    return f"rule {split}"


def data_provenance(manifest: Mapping[str, Any], split: Any = None) -> dict[str, Any]:
    """What a child run needs to say where its data came from: dataset, cache key, crop,
    sources (an oracle source says "oracle"), which modalities are oracle renders, and (given
    the run's split) which train/validation membership it trained on (`data.split_membership`),
    and what the boundaries show (`data.edges`: 3D or texture edges, pix3d.data.maps.edges_label)."""
    picked: dict[str, Any] = {"oracle": oracle_inputs(manifest)}
    for key in ("dataset", "name", "path", "key", "n", "size", "crop", "margin", "version", "published_split", "edges"):
        if key in manifest and not isinstance(manifest[key], list):
            picked[key] = manifest[key]
    if split is not None:
        picked["split_membership"] = split_membership(split, manifest)
    for key, value in manifest.items():
        if "source" in key and isinstance(value, Mapping):
            picked[key] = dict(value)
    return {f"data.{k}": v for k, v in flatten(picked).items()}
