"""Session-wide fixtures: one local Ray runtime, one real `mlflow server`, one sweep logged to it.

Defined here (not imported into test modules) so pytest builds each once per session and the
tracking and table tests share the same server and sweep.
"""

from __future__ import annotations

import pytest

from pix3d.data.cache import default_cache_dir
from tests import loopback
from tests.mlflow_server import mlflow_server


@pytest.fixture(scope="session")
def ray_session():
    import ray

    if not ray.is_initialized():
        # address="local": always a fresh private instance, never a `ray start` cluster whose
        # address file happens to be on this machine (that would refuse num_cpus).
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
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
