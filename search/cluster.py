"""The Ray runtime a sweep runs on: a private local Ray, or a running cluster (`--address`).

Owns the checks that make a bad `--address` fail in seconds (a TCP probe, then a bounded join
in a child process), token authentication for joining a cluster, starting or joining Ray
with the driver's environment forwarded to the trials, and the check that some node can
host one trial at all.

Token auth goes through Ray's documented switch only, the environment variable
`RAY_AUTH_MODE=token` (the token itself comes from `~/.ray/auth_token`, `RAY_AUTH_TOKEN` or
`RAY_AUTH_TOKEN_PATH`). Ray reads the variable once, when `ray` is imported, and `search.run`
imports it before it knows the address (the grids are Tune search spaces), so the command
restarts itself once, same arguments and same process id, with the variable set.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import Callable, Sequence

from pix3d.errors import Pix3DError, UsageError, one_line

CONNECT_TIMEOUT_S = 5.0  # TCP connect to --address
JOIN_TIMEOUT_S = float(os.environ.get("PIX3D_RAY_JOIN_TIMEOUT_S", "20"))  # a full ray.init probe
AUTH_MODE_VAR = "RAY_AUTH_MODE"

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


def use_token_auth(address: str | None, restart: Sequence[str] | None = None, log: Callable = print) -> bool:
    """Join clusters in token mode (`RAY_AUTH_MODE=token`) unless the user chose a mode.

    Clusters started with token auth (the default for `ray start` since Ray 2.59/2.60) reject
    a driver that does not also run in token mode. `restart`: the command line of this process
    (`sys.orig_argv`), run again in its place with the variable set when `ray` is already
    imported (the variable is only read then). Without it (a library caller) True means this
    process's Ray keeps the mode it was imported with; its children (the join probe) switch.
    """
    if address is None or AUTH_MODE_VAR in os.environ:
        return False
    os.environ[AUTH_MODE_VAR] = "token"
    log(f"{AUTH_MODE_VAR} not set: using token auth to join the cluster (set {AUTH_MODE_VAR}=disabled to opt out)")
    if "ray" not in sys.modules:
        return False
    if restart:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, list(restart))
    return True


def restart_for_token_auth(address: str, log: Callable = print) -> None:
    """The command's first step towards a cluster, before any work or output: an unreachable
    address fails now, else the command restarts in token mode when no mode is set."""
    if address != "auto":
        check_reachable(address)
    use_token_auth(address, restart=sys.orig_argv, log=log)


# The driver's settings every trial must see, on any node: what `auto` precision means
# (pix3d.train.precision) and the modules that register models (pix3d.models) and modalities
# (pix3d.constants).
FORWARDED_ENV = ("PIX3D_PRECISION", "PIX3D_MODELS", "PIX3D_MODALITIES")


def _forwarded_env() -> dict | None:
    """A runtime_env that carries the driver's FORWARDED_ENV variables to every trial."""
    values = {name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)}
    return {"env_vars": values} if values else None


LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # Ray's own switch; "0": one machine, on loopback


def start_local_ray(num_cpus: int | None = None, log_to_driver: bool = True) -> None:
    """Start a private Ray on this machine whose GCS, raylet and workers listen on 127.0.0.1 only.

    address="local" always starts a fresh instance (a bare ray.init() would silently join
    whatever `ray start` cluster runs on this machine); no dashboard (an HTTP port that runs
    jobs); token auth is Ray 2.60's default. Ray resolves 127.0.0.1 to the machine's routable
    address and binds its servers to the node's address, unless its switch for one-machine
    Ray (the one it uses on macOS and Windows against firewall prompts) is off: then the
    node's address is 127.0.0.1 and every server listens on loopback. Ray reads the switch
    when it is imported, so the imported constant is set too, and both are put back once the
    node runs (the raylet has inherited the variable; a later `ray start` from this process,
    which refuses to run with it off, does not see it).
    """
    import ray
    from ray._private import ray_constants

    saved_env, saved_flag = os.environ.get(LOOPBACK_SWITCH), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[LOOPBACK_SWITCH] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                 log_to_driver=log_to_driver, configure_logging=False, runtime_env=_forwarded_env())
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(LOOPBACK_SWITCH, None)
        else:
            os.environ[LOOPBACK_SWITCH] = saved_env


def init_ray(address: str | None, log: Callable = print) -> None:
    """Join `address` or start a private local Ray on loopback (all of this machine's cores)."""
    import ray

    if address is None:
        try:
            start_local_ray()
        except Exception as exc:  # noqa: BLE001 - Ray raises bare Exception / RuntimeError for these
            if "timed out" not in str(exc).lower():
                raise
            ray.shutdown()  # whatever half of it started
            raise Pix3DError(
                f"Ray did not start on this machine in time ({one_line(exc)}); the machine is probably "
                "busy: retry when it is quieter, or give Ray longer to start "
                "(RAY_gcs_server_port_wait_time_s=120), or use a running cluster with --address"
            ) from None
        return
    if address != "auto":
        check_reachable(address)
    too_late = use_token_auth(address, log=log)
    _probe_cluster(address)
    try:
        ray.init(address=address, configure_logging=False, runtime_env=_forwarded_env())
    except (ConnectionError, RuntimeError, ValueError) as exc:
        hint = f" (set {AUTH_MODE_VAR}=token before Python starts: Ray reads it on import)" if too_late else ""
        raise Pix3DError(f"--address {address}: cannot join the Ray cluster: {one_line(exc)}{hint}") from None


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
