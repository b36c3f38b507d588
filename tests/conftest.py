"""Test tiers, and the fixtures that start real services.

Three tiers, by marker (torchtune's split: unit tests by default, the rest on request):

    default      fast tests of one layer: no Ray, no server, no spawned process group
    integration  real services: a local Ray, an MLflow server, PostgreSQL, a browser,
                 torch process groups on spawned processes
    e2e          whole commands: sweeps, training runs, rehearsals, Slurm jobs

A test is put in its tier by the fixtures it uses (``TIER_OF_FIXTURE``), or by its own
``pytest.mark.integration`` / ``pytest.mark.e2e``. ``pytest tests`` runs the default tier;
``--tier integration``, ``--tier e2e`` (repeatable) or ``--tier all`` choose others. A test
named on the command line (``path::test``) runs whatever its tier.
"""

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

TIERS = ("default", "integration", "e2e")
# The fixtures that put a test in a tier (the most expensive one wins).
TIER_OF_FIXTURE = {
    "ray_local": "integration",
    "ray_head": "integration",
    "postgres": "integration",
    "postgres_url": "integration",
    "mlflow_server": "integration",
    "browser": "integration",
    "spawn": "integration",
    "shared_sweep": "e2e",
}


def pytest_addoption(parser):
    parser.addoption("--tier", action="append", choices=[*TIERS, "all"], default=None,
                     help="which tiers to run (repeatable; default: the default tier, see tests/conftest.py)")


def pytest_configure(config):
    config.addinivalue_line("markers", "integration: uses real services: Ray, an MLflow server, PostgreSQL, a "
                                       "browser, spawned torch process groups (--tier integration)")
    config.addinivalue_line("markers", "e2e: runs a whole command: a sweep, a training run, a rehearsal, a Slurm "
                                       "job (--tier e2e)")


def tier_of(item) -> str:
    marked = {m.name for m in item.iter_markers()} & {"integration", "e2e"}
    found = [TIER_OF_FIXTURE[f] for f in item.fixturenames if f in TIER_OF_FIXTURE]
    tiers = marked | set(found)
    return "e2e" if "e2e" in tiers else "integration" if "integration" in tiers else "default"


def pytest_collection_modifyitems(config, items):
    chosen = set(config.getoption("--tier") or ["default"])
    if "all" in chosen:
        chosen = set(TIERS)
    named = any("::" in arg for arg in config.args)  # tests named one by one run whatever their tier
    selected, deselected = [], []
    for item in items:
        tier = tier_of(item)
        if tier != "default":
            item.add_marker(getattr(pytest.mark, tier))
        (selected if named or tier in chosen else deselected).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected
    config._gmt_ray_left_out = len(deselected)


def pytest_terminal_summary(terminalreporter, config):
    left_out = getattr(config, "_gmt_ray_left_out", 0)
    if left_out:
        terminalreporter.write_line(f"{left_out} tests of other tiers not run: --tier all runs every tier "
                                    "(tests/conftest.py)")


# ----------------------------------------------------------------------------- real services


@pytest.fixture
def spawn():
    """``spawn(worker, tmp_path, *args)``: ``worker(rank, port, tmp, *args)`` on two fresh
    processes (tests.helpers.spawn), e.g. a gloo process group; its test is in the
    integration tier."""
    from tests.helpers import spawn as spawn_ranks

    return spawn_ranks


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray instance for the whole session (starting one costs ~10 s)."""
    from gmt_ray.cluster import init_ray

    # Logical CPUs: room for two 1-CPU workers plus trial drivers on a 2-core machine.
    init_ray(num_cpus=6)
    import ray

    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def ray_head():
    """A live local Ray head started with `ray start --head` (tests.servers.RayHead, 3 CPUs, in
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


@pytest.fixture(scope="session")
def shared_sweep(tmp_path_factory):
    """One real sweep (tests.helpers.SHARED_SWEEP: 4 trials) that many e2e tests read instead
    of each running its own: run from Python (``gmt_ray.sweep.run``) in a fresh process, with
    W&B in offline mode, next to a Ray bootstrap file whose head is dead (as a killed
    `ray start --head` leaves it). Tests must only read it, or add to it what no other reads."""
    import json
    import subprocess
    import sys

    from tests.helpers import ROOT, SHARED_SWEEP, SharedSweep, free_port, write_experiment

    directory = tmp_path_factory.mktemp("shared-sweep")
    path = write_experiment(directory, **SHARED_SWEEP)
    ray_root = Path(tempfile.mkdtemp(prefix="gmtray-stale-", dir="/tmp"))  # short: Ray's socket paths under it
    dead = f"127.0.0.1:{free_port()}"
    (ray_root / "ray").mkdir()
    (ray_root / "ray" / "ray_current_cluster").write_text(dead)
    (directory / "wandb-dir").mkdir()
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_TMPDIR": str(ray_root),
           "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline",
           "WANDB_DIR": str(directory / "wandb-dir")}
    bootstrap = ray_root / "ray" / "ray_current_cluster"
    try:
        done = subprocess.run([sys.executable, "-c", "from tests.helpers import api_sweep_main; api_sweep_main()",
                               str(path)], cwd=directory, env=env, capture_output=True, text=True, timeout=1200)
        left = bootstrap.exists()
    finally:
        shutil.rmtree(ray_root, ignore_errors=True)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.rsplit("RESULT ", 1)[1])
    return SharedSweep(directory, path, done.stdout, done.stderr, result, (bootstrap, dead), left)
