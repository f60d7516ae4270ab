"""The Ray runtime a sweep runs on: a private local Ray, or a running cluster (`--address`).

Owns the checks that make a bad `--address` fail in seconds (a TCP probe, then a bounded join
in a child process), token authentication for joining a cluster, starting or joining Ray
with the driver's environment forwarded to the trials, and the check that some node can
host one trial at all.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import Callable

from pix3d.errors import Pix3DError, UsageError, one_line

CONNECT_TIMEOUT_S = 5.0  # TCP connect to --address
JOIN_TIMEOUT_S = float(os.environ.get("PIX3D_RAY_JOIN_TIMEOUT_S", "20"))  # a full ray.init probe

# Joins the cluster in a child process: ray.init against a port that accepts TCP but is not a
# Ray GCS (a proxy, another service) retries for minutes and cannot be interrupted in-process.
_JOIN_PROBE = (
    "import sys, ray\n"
    "ray.init(address=sys.argv[1], configure_logging=False, log_to_driver=False, include_dashboard=False)\n"
    "print('joined', len(ray.nodes()))\n"
)


def check_reachable(address: str) -> None:
    """Fail fast when HOST:PORT does not answer: a TCP probe, bounded by CONNECT_TIMEOUT_S."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(f"--address {address}: expected auto or HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, socket.timeout) else (exc.strerror or str(exc))
        raise Pix3DError(
            f"--address {address}: no Ray cluster reachable within {CONNECT_TIMEOUT_S:g}s ({reason}); "
            "start one with `ray start --head` or leave --address out for local Ray"
        ) from None


def _probe_cluster(address: str) -> None:
    """Join once in a child process, bounded by JOIN_TIMEOUT_S; raise naming the address if it fails."""
    try:
        probe = subprocess.run([sys.executable, "-c", _JOIN_PROBE, address], capture_output=True,
                               text=True, timeout=JOIN_TIMEOUT_S, env=dict(os.environ))
    except subprocess.TimeoutExpired:
        raise Pix3DError(
            f"--address {address}: no Ray cluster answered within {JOIN_TIMEOUT_S:g}s "
            "(is it a Ray head's GCS port, `ray start --head --port`?)"
        ) from None
    if probe.returncode != 0:
        errors = [line for line in probe.stderr.splitlines() if "Error" in line]
        reason = errors[-1].strip() if errors else f"exit code {probe.returncode}"
        raise Pix3DError(f"--address {address}: cannot join the Ray cluster: {reason[:400]}")


def _enable_token_auth() -> None:
    """RAY_AUTH_MODE=token for this process and its children.

    Ray reads the mode into a cached config when it is imported, so setting the variable is
    not enough once `ray` is loaded: Ray's own helper (the one `ray.init()` uses for local
    clusters) also refreshes that cache. It is private, hence the fallback.
    """
    os.environ["RAY_AUTH_MODE"] = "token"
    try:
        from ray._private.authentication.authentication_token_setup import _enable_token_auth as enable
    except ImportError:
        return
    enable()


def _forwarded_env() -> dict | None:
    """A runtime_env that carries the driver's $PIX3D_PRECISION to every trial, on any node."""
    value = os.environ.get("PIX3D_PRECISION")
    return {"env_vars": {"PIX3D_PRECISION": value}} if value else None


def init_ray(address: str | None, log: Callable = print) -> None:
    """Join `address` or start a private local Ray (all of this machine's cores)."""
    import ray

    if address is None:
        # address="local" always starts a fresh instance: a bare ray.init() would silently
        # join whatever `ray start` cluster happens to run on this machine.
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
                 log_to_driver=True, configure_logging=False, runtime_env=_forwarded_env())
        return
    if address != "auto":
        check_reachable(address)
    # Clusters started with token auth (the default for `ray start` since Ray 2.59/2.60)
    # reject a driver that does not also run in token mode.
    if "RAY_AUTH_MODE" not in os.environ:
        _enable_token_auth()
        log("RAY_AUTH_MODE not set: using token auth to join the cluster (set RAY_AUTH_MODE=disabled to opt out)")
    _probe_cluster(address)
    try:
        ray.init(address=address, configure_logging=False, runtime_env=_forwarded_env())
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise Pix3DError(f"--address {address}: cannot join the Ray cluster: {one_line(exc)}") from None


def check_cluster_resources(cpus_per_trial: float, gpus_per_trial: float) -> None:
    """Fail at once when no node can host one trial, instead of trials PENDING forever."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    capacity = [(n["Resources"].get("CPU", 0.0), n["Resources"].get("GPU", 0.0)) for n in nodes]
    if any(cpu >= cpus_per_trial and gpu >= gpus_per_trial for cpu, gpu in capacity):
        return
    total_gpus = sum(gpu for _, gpu in capacity)
    if gpus_per_trial > 0 and total_gpus == 0:
        raise Pix3DError(
            f"--gpus-per-trial {gpus_per_trial:g}: the Ray cluster has no GPUs "
            f"({len(nodes)} node(s)); use --gpus-per-trial 0 or join a GPU cluster with --address"
        )
    largest = ", ".join(f"{cpu:g} CPU/{gpu:g} GPU" for cpu, gpu in capacity) or "no nodes"
    raise Pix3DError(
        f"no Ray node can host a trial of {cpus_per_trial:g} CPU and {gpus_per_trial:g} GPU "
        f"(nodes: {largest}); lower --cpus-per-trial / --gpus-per-trial"
    )
