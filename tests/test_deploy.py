"""The cluster recipes in deploy/: the KubeRay RayJob manifest has what KubeRay reads and a
driver command search.run accepts; the SLURM batch script's Ray commands start a head, join a
worker and hand the cluster to search.run, on loopback (SLURM itself replaced by two stand-ins: `scontrol show
hostnames` lists the node list, `srun` runs its command here).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from search.options import check_options, get_args_parser
from tests.mlflow_server import free_port
from tests.test_search import REPO, cli_env

MANIFEST = REPO / "deploy" / "kuberay" / "rayjob.yaml"
SBATCH = REPO / "deploy" / "slurm" / "sweep.sbatch"


def _containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def test_the_rayjob_manifest_is_what_kuberay_reads():
    job = yaml.safe_load(MANIFEST.read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob" and job["metadata"]["name"]
    spec = job["spec"]
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"].startswith("2.60")  # the version pyproject pins
    assert cluster["authOptions"]["mode"] == "token"  # Ray 2.60 `ray start` uses token auth
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        # KubeRay passes rayStartParams as `ray start --key=value`: a map of strings only.
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in group["rayStartParams"].items())
        for container in _containers(group):
            assert container["name"] and container["image"]
            # Every pod reaches S3 with the same keys: the driver writes Tune's state, trials their checkpoints.
            assert {"secretRef": {"name": "pix3d-s3"}} in container["envFrom"]
    for worker in cluster["workerGroupSpecs"]:
        assert worker["groupName"] and worker["minReplicas"] <= worker["replicas"] <= worker["maxReplicas"]
    head_ports = {p["name"]: p["containerPort"] for p in _containers(cluster["headGroupSpec"])[0]["ports"]}
    assert head_ports["gcs-server"] == 6379

    # The entrypoint is a search.run command the parser and its checks accept, joining the
    # cluster KubeRay started and storing in S3 and an MLflow server.
    command = shlex.split(spec["entrypoint"])
    assert command[:3] == ["python", "-m", "search.run"]
    args = get_args_parser().parse_args(command[3:])
    check_options(args)
    assert args.address == "auto" and args.storage.startswith("s3://")
    assert args.mlflow_uri.startswith("http") and not args.no_mlflow
    assert args.gpus_per_trial > 0


def _stand_ins(folder: Path) -> Path:
    """`srun` and `scontrol` that do here what SLURM does on an allocation."""
    folder.mkdir()
    scripts = {
        # srun [--opt=value | -w NODE]... COMMAND...: every step runs on this machine.
        "srun": '#!/usr/bin/env bash\n'
                'while [ $# -gt 0 ]; do case "$1" in -w) shift 2;; -*) shift;; *) break;; esac; done\n'
                'exec "$@"\n',
        # scontrol show hostnames "a,b": one name a line.
        "scontrol": '#!/usr/bin/env bash\n[ "$1 $2" = "show hostnames" ] && tr , "\\n" <<< "$3"\n',
    }
    for name, text in scripts.items():
        (folder / name).write_text(text)
        (folder / name).chmod((folder / name).stat().st_mode | stat.S_IXUSR)
    return folder


@pytest.mark.slow  # a Ray head, a worker and a join probe: ~40 s on a shared 2-core machine (minutes under heavy load)
def test_the_slurm_script_starts_a_head_joins_a_worker_and_hands_the_cluster_to_search_run(s3, tmp_path):
    bin_dir = _stand_ins(tmp_path / "bin")
    job_id = f"pytest{os.getpid()}{time.monotonic_ns() % 10**6}"
    bucket = s3.create_bucket(f"slurm-{job_id}")
    env = cli_env() | {
        "PATH": f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "SLURM_JOB_ID": job_id, "SLURM_JOB_NODELIST": "node1,node2", "SLURM_CPUS_PER_TASK": "1",
        "SLURM_GPUS_PER_TASK": "0",
        "PIX3D_STORAGE": f"{bucket}/sweeps", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "PIX3D_GRID": "smoke", "PIX3D_GPUS_PER_TRIAL": "0", "PIX3D_CPUS_PER_TRIAL": "1",
        # Loopback, and ports of their own: other Ray clusters may run on this machine.
        "RAY_HEAD_IP": "127.0.0.1", "RAY_PORT": str(free_port()),
        "RAY_HEAD_ARGS": f"--include-dashboard=false --dashboard-port={free_port()} "
                         f"--dashboard-agent-listen-port={free_port()}",
        "RAY_WORKER_ARGS": f"--node-ip-address=127.0.0.1 --dashboard-agent-listen-port={free_port()}",
        "RAY_JOIN_TIMEOUT_S": "400",
    }
    env.pop("RAY_AUTH_MODE", None)
    env.pop("RAY_AUTH_TOKEN", None)
    # The driver's own work is a dry run here: a sweep on a loopback cluster with S3 storage is
    # tests/test_s3.py's; this checks the script's Ray commands and the command it builds.
    job = subprocess.Popen(["bash", str(SBATCH), "--dry-run"], cwd=tmp_path, env=env, start_new_session=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = job.communicate(timeout=600)
    finally:
        # Exactly this job's processes (its own session): other people's Ray is never touched.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(job.pid, sig)
            except ProcessLookupError:
                break
            time.sleep(3)
        shutil.rmtree(f"/tmp/ray-{job_id}", ignore_errors=True)
    assert job.returncode == 0, out[-4000:]
    assert "ray head on node1 (127.0.0.1:" in out and "1 worker node(s)" in out
    assert "ray cluster up: 2 node(s)" in out  # the worker joined the head, token auth and all
    assert f"results would go to {bucket}/sweeps/smoke" in out  # search.run got the storage and its options
