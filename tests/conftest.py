"""Session-wide fixtures: one local Ray runtime, one real `mlflow server`, one sweep logged to it.

Defined here (not imported into test modules) so pytest builds each once per session and the
tracking and table tests share the same server and sweep.
"""

from __future__ import annotations

import pytest

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
