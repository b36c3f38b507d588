import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")

# Every Ray these tests start, and every command they run, uses a Ray temp dir of its own:
# without --address gmt-ray connects to the live local cluster Ray's bootstrap file names
# (/tmp/ray/ray_current_cluster), which on a developer's machine may be theirs. Short, as
# Ray's socket paths under it must fit in 107 bytes.
_RAY_TMPDIR = tempfile.mkdtemp(prefix="gmtray-", dir=os.environ.get("RAY_TMPDIR", "/tmp"))
os.environ["RAY_TMPDIR"] = _RAY_TMPDIR
atexit.register(shutil.rmtree, _RAY_TMPDIR, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray instance for the whole session (starting one costs ~10 s)."""
    from gmt_ray.train.launch import init_ray

    # Logical CPUs: room for two 1-CPU workers plus trial drivers on a 2-core machine.
    init_ray(num_cpus=6)
    import ray

    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def ray_head():
    """A live local Ray head started with `ray start --head` (tests.servers.RayHead, 2 CPUs, in
    a RAY_TMPDIR of its own: pass ``ray_head.env`` to a command that should find it), killed
    by its process group at the end of the session."""
    from tests.servers import RayHead

    head = RayHead(Path(tempfile.mkdtemp(prefix="gmtray-head-", dir="/tmp")))
    try:
        yield head.start()
    finally:
        head.stop()
        shutil.rmtree(head.temp_root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres():
    """One throwaway PostgreSQL cluster (tests.servers.PostgresCluster) for the whole session,
    on a free 127.0.0.1 port; skips with the reason where PostgreSQL cannot run here."""
    from tests.servers import PostgresUnavailable, postgres_cluster

    context = postgres_cluster(database=None)
    try:
        cluster = context.__enter__()
    except PostgresUnavailable as e:
        pytest.skip(f"PostgreSQL unavailable: {e}")
    try:
        yield cluster
    finally:
        context.__exit__(None, None, None)


@pytest.fixture
def postgres_url(postgres):
    """A fresh, empty database in the session's cluster: its SQLAlchemy URL
    (postgresql://postgres:PASSWORD@127.0.0.1:PORT/tNNNN)."""
    import secrets

    return postgres.create_database(f"t{secrets.token_hex(6)}")


@pytest.fixture
def mlflow_server(tmp_path, monkeypatch):
    """Factory: ``mlflow_server(backend_store_uri=None, *, auth=False, workers=1)`` starts a
    tests.servers.MlflowServer (SQLite in tmp_path by default, artifacts in tmp_path), waits
    until it answers and returns it; it can be stopped and restarted, and every server is
    stopped at the end. With auth=True the admin credentials go into this test's environment
    (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD), where MLflow clients and any
    subprocess started from the test read them."""
    from tests.servers import MlflowServer

    servers = []

    def start(backend_store_uri: str | None = None, *, auth: bool = False, workers: int = 1, **kwargs):
        workdir = tmp_path / f"mlflow-server-{len(servers)}"
        workdir.mkdir()
        server = MlflowServer(backend_store_uri or f"sqlite:///{workdir / 'mlflow.db'}", workdir, auth=auth,
                              workers=workers, **kwargs)
        servers.append(server)
        server.start()
        for key, value in server.client_env.items():
            monkeypatch.setenv(key, value)
        return server

    yield start
    for server in servers:
        server.stop()
