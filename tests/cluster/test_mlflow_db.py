"""cluster/mlflow-db.sh, the head node's MLflow stores, run for real on this machine with its
paths moved into temporary directories: PostgreSQL on a Unix socket, the basic-auth config
and credentials, re-runs as on every `ray up`, the nightly dump, and a new head restoring it.

What stays untested: apt, cron and Docker on a real head (cluster.yaml's own commands are
inspected in test_cluster_yaml.py).
"""

import os
import shlex
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.servers import MlflowServer, PostgresUnavailable, find_postgres_bindir, postgres_user

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "cluster" / "mlflow-db.sh"
HEAD_DISK = "/var/lib/gmt-ray"


class Head:
    """The script's directories, as on a head node, under one temporary directory."""

    def __init__(self, base: Path, bindir: Path):
        self.base, self.bindir = base, bindir
        self.state, self.shared, self.home = base / "state", base / "shared", base / "home"
        self.shared.mkdir()
        self.env = {**os.environ, "GMT_RAY_STATE": str(self.state), "GMT_RAY_SHARED": str(self.shared),
                    "GMT_RAY_CREDENTIALS": str(self.home / ".gmt-ray" / "mlflow-credentials"),
                    "GMT_RAY_PG_BINDIR": str(bindir)}

    def run(self, command: str, check: bool = True, **env) -> subprocess.CompletedProcess:
        result = subprocess.run(["bash", str(SCRIPT), command], env={**self.env, **env}, check=False, capture_output=True,
                                text=True, timeout=180)
        if check:
            assert result.returncode == 0, f"mlflow-db.sh {command}: {result.stdout}{result.stderr}"
        return result

    def sql(self, statement: str, database: str = "mlflow") -> str:
        socket_dir = self.state / "postgresql" / "run"
        return subprocess.run([str(self.bindir / "psql"), "-X", "-tA", "-v", "ON_ERROR_STOP=1", "-h", str(socket_dir),
                               "-d", database, "-c", statement], capture_output=True, text=True, check=True,
                              timeout=30).stdout.strip()

    def stop_postgres(self) -> None:
        data = self.state / "postgresql" / "data"
        if (data / "postmaster.pid").exists():
            subprocess.run(["runuser", "-u", "postgres", "--", str(self.bindir / "pg_ctl"), "-D", str(data), "-m",
                            "fast", "-w", "stop"], cwd="/", check=False, capture_output=True, timeout=60)

    def credentials(self) -> dict[str, str]:
        return _env_file(self.state / "mlflow" / "credentials")

    def backend_store_uri(self) -> str:
        """cluster.yaml's own --backend-store-uri, pointed at this head's directory."""
        (command,) = [c for c in yaml.safe_load((ROOT / "cluster.yaml").read_text())["head_start_ray_commands"]
                      if "nohup mlflow server" in c]
        tokens = shlex.split(command)
        uri = tokens[tokens.index("--backend-store-uri") + 1]
        assert HEAD_DISK in uri
        return uri.replace(HEAD_DISK, str(self.state))

    def mlflow_server(self, workdir: Path) -> MlflowServer:
        """The server as cluster.yaml starts it: PostgreSQL through the socket, basic auth from server.env."""
        server_env = _env_file(self.state / "mlflow" / "server.env")
        return MlflowServer(self.backend_store_uri(), workdir, auth=True, env=server_env,
                            admin_password=self.credentials()["MLFLOW_TRACKING_PASSWORD"])


def _env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


@pytest.fixture
def head():
    if os.geteuid() != 0:
        pytest.skip("mlflow-db.sh switches to the postgres user with runuser or sudo: run the tests as root")
    try:
        bindir, user = find_postgres_bindir(), postgres_user()
    except PostgresUnavailable as e:
        pytest.skip(f"PostgreSQL unavailable: {e}")
    if user.pw_name != "postgres":
        pytest.skip("mlflow-db.sh runs PostgreSQL as the 'postgres' user, which does not exist here")
    # Short and reachable by postgres (a Unix socket path has ~100 bytes; pytest's tmp is root's).
    base = Path(tempfile.mkdtemp(prefix="gmt-ray-head-"))
    base.chmod(0o755)
    head = Head(base, bindir)
    try:
        yield head
    finally:
        head.stop_postgres()
        shutil.rmtree(base, ignore_errors=True)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_setup_is_idempotent_and_keeps_everything_on_the_heads_disk(head):
    started = time.monotonic()
    first = head.run("setup")
    print(f"head setup (initdb, start, role, database, credentials) took {time.monotonic() - started:.1f} s")
    assert "initialised a new PostgreSQL cluster" in first.stdout and "generated MLflow admin" in first.stdout
    credentials = head.credentials()
    assert credentials["MLFLOW_TRACKING_USERNAME"] == "admin" and len(credentials["MLFLOW_TRACKING_PASSWORD"]) >= 12
    # MLflow's store is owned by the user that runs the server (peer authentication, no password).
    assert head.sql("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'mlflow'") == "root"
    assert head.sql("SHOW listen_addresses") == ""
    head.sql("CREATE TABLE survives (x int)")

    again = head.run("setup")  # what every later `ray up` does
    assert again.stdout == "" and again.stderr == ""
    assert head.credentials() == credentials and head.sql("SELECT count(*) FROM survives") == "0"
    assert head.run("start").stdout == ""  # head_start_ray_commands: already running

    # A stopped server (a restarted container) is started again by either command.
    head.stop_postgres()
    assert "PostgreSQL started" in head.run("start").stdout
    head.stop_postgres()
    head.run("setup")
    assert head.sql("SELECT count(*) FROM survives") == "0"

    auth = head.state / "mlflow"
    config = (auth / "basic_auth.ini").read_text()
    assert f"database_uri = sqlite:///{auth}/basic_auth.db" in config and str(head.shared) not in config
    assert "admin_password" not in config  # it comes from server.env, once
    assert _env_file(auth / "server.env")["MLFLOW_AUTH_ADMIN_PASSWORD"] == credentials["MLFLOW_TRACKING_PASSWORD"]
    for secret in (auth / "credentials", auth / "server.env", auth / "flask-secret-key",
                   head.home / ".gmt-ray" / "mlflow-credentials",
                   head.shared / "gmt-ray" / "secrets" / "mlflow-credentials"):
        assert _mode(secret) == 0o600 and _mode(secret.parent) == 0o700, secret
        assert _env_file(secret) == credentials or secret.name != "mlflow-credentials"
    assert (head.state / "postgresql" / "data").stat().st_uid == postgres_user().pw_uid


def test_setup_refuses_a_user_store_whose_admin_password_is_lost(head):
    head.run("setup")
    (head.state / "mlflow" / "basic_auth.db").write_bytes(b"")
    (head.state / "mlflow" / "credentials").unlink()
    result = head.run("setup", check=False)
    assert result.returncode == 1 and "nobody knows its admin password" in result.stderr


@pytest.mark.integration
def test_the_clusters_mlflow_server_on_this_setup_and_a_new_head_restoring_the_dump(head, tmp_path, monkeypatch):
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    head.run("setup")
    server = head.mlflow_server(tmp_path / "server")
    for key, value in head.credentials().items():
        monkeypatch.setenv(key, value)
    try:
        server.start()
        client = MlflowClient(tracking_uri=server.url)
        experiment_id = client.create_experiment("on-the-head")
        run_id = client.create_run(experiment_id).info.run_id
        client.log_metric(run_id, "loss", 0.5, step=1)
        assert head.sql(f"SELECT value FROM metrics WHERE run_uuid = '{run_id}'") == "0.5"
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password")
        with pytest.raises(MlflowException, match="401|[Uu]nauthori|not authenticated"):
            client.get_run(run_id)
    finally:
        server.stop()

    # The nightly dump, twice: only the newest GMT_RAY_KEEP_DUMPS stay.
    head.run("dump", GMT_RAY_KEEP_DUMPS="1")
    time.sleep(1.1)  # dumps are named by the second
    head.run("dump", GMT_RAY_KEEP_DUMPS="1")
    backups = head.shared / "mlflow" / "backups"
    (dump,) = backups.glob("mlflow-*.dump")
    assert _mode(dump) == 0o600 and _mode(backups) == 0o700

    # `ray down` loses the head's disk; the next head starts from the newest dump on EFS.
    head.stop_postgres()
    shutil.rmtree(head.state)
    shutil.rmtree(head.home)
    fresh = head.run("setup")
    assert f"restoring {dump}" in fresh.stdout
    assert head.credentials()["MLFLOW_TRACKING_PASSWORD"] != os.environ["MLFLOW_TRACKING_PASSWORD"]
    for key, value in head.credentials().items():
        monkeypatch.setenv(key, value)
    server = head.mlflow_server(tmp_path / "server-2")
    try:
        server.start()
        run = MlflowClient(tracking_uri=server.url).get_run(run_id)
        assert run.data.metrics == {"loss": 0.5}
    finally:
        server.stop()
