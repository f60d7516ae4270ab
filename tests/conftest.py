"""Session-wide fixtures: one local Ray runtime, one real `mlflow server`, one sweep logged to it,
one real S3 API (moto's server on loopback).

Defined here (not imported into test modules) so pytest builds each once per session and the
tracking and table tests share the same server and sweep.
"""

from __future__ import annotations

import os

import pytest

from pix3d.data.cache import default_cache_dir
from tests import loopback
from tests.mlflow_server import mlflow_server
from tests.s3_server import s3_server


@pytest.fixture(scope="session")
def ray_session(s3):
    # After `s3`: Ray's workers inherit the driver's environment when Ray starts, and a trial
    # that checkpoints to s3:// needs the AWS variables there (moto starts in about a second).
    import ray

    if not ray.is_initialized():
        # address="local": always a fresh private instance, never a `ray start` cluster whose
        # address file happens to be on this machine (that would refuse num_cpus).
        from search.cluster import start_local_ray

        start_local_ray(num_cpus=2, log_to_driver=False)
    yield ray
    ray.shutdown()


# Ray start-up, server start-up and the sweep are most of the MLflow tests' time.
@pytest.fixture(scope="session")
def server(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow_server")) as srv:
        yield srv


@pytest.fixture(scope="session")
def served_sweep(ray_session, server, tmp_path_factory):
    storage = tmp_path_factory.mktemp("ray_storage")
    from tests.sweeps import run_sweep

    results, callback = run_sweep(storage, "served", server.url)
    return results, callback, server


@pytest.fixture(scope="session")
def loopback_cluster():
    """One real two-node Ray cluster on loopback for the suite (tests/loopback.py has its shape):
    test_cluster, test_gpu_packing and test_devices join it with `--address`."""
    # Here, not at the top: tests.test_search imports Ray Tune, which every pytest run would pay.
    from tests.test_search import cli_env

    yield from loopback.loopback_cluster(cli_env())


@pytest.fixture(scope="session")
def builtin_set():
    """The built-in synthetic set, rendered once in the session's cache ($PIX3D_CACHE): the tests
    that prepare it in a cache of their own seed it there (pix3d_fixtures.seed_builtin_set)."""
    # Here, not at the top: the renderer is not needed by most runs of the suite.
    from pix3d.render.synthetic import ensure_builtin

    return ensure_builtin(default_cache_dir(), log=None, progress=False)


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """moto's S3 server, with the standard AWS variables pointing at it for the rest of the
    session (this process and every process it starts, as on a cluster node): pyarrow in Ray
    and in pix3d, and boto3 in MLflow, find it there. Restored at the end."""
    with s3_server(tmp_path_factory.mktemp("s3")) as server:
        saved = {name: os.environ.get(name) for name in server.env}
        os.environ.update(server.env)
        try:
            yield server
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
