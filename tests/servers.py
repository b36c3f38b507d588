"""Real servers for tests: a throwaway PostgreSQL cluster, `mlflow server`, and a local
Ray head started as users start one (`ray start --head`).

Importable by any test (``from tests.servers import ...``); the pytest fixtures that wrap
these live in tests/conftest.py (``postgres``, ``postgres_url``, ``mlflow_server``,
``ray_head``).

PostgreSQL refuses to run as root, and CI runs as root, so the cluster's binaries run as
an unprivileged user (``postgres``, created by Debian's package) when the tests run as
root, and as the current user otherwise. Nothing here binds anything but 127.0.0.1.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "MlflowServer",
    "PostgresCluster",
    "PostgresUnavailable",
    "RayHead",
    "find_postgres_bindir",
    "free_port",
    "postgres_cluster",
    "postgres_user",
]

PG_USER_ENV = "GMT_RAY_PG_USER"  # who runs the cluster's binaries when the tests run as root
PG_BINDIR_ENV = "GMT_RAY_PG_BINDIR"  # a bin directory holding initdb and pg_ctl


class PostgresUnavailable(RuntimeError):
    """PostgreSQL cannot run here; the message says why and is meant as a skip reason."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_postgres_bindir() -> Path:
    """The server binaries: $GMT_RAY_PG_BINDIR, else Debian's newest /usr/lib/postgresql/N/bin,
    else initdb on PATH (Debian's /usr/bin holds only wrappers, so PATH comes last)."""
    candidates = []
    if os.environ.get(PG_BINDIR_ENV):
        candidates.append(Path(os.environ[PG_BINDIR_ENV]))
    versions = Path("/usr/lib/postgresql").glob("*/bin")
    candidates += sorted(versions, key=lambda p: _version_key(p.parent.name), reverse=True)
    if shutil.which("initdb"):
        candidates.append(Path(shutil.which("initdb")).parent)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's `postgresql` "
        f"package (apt-get install postgresql, as .ci/run does) or set {PG_BINDIR_ENV}"
    )


def _version_key(name: str) -> tuple:
    return tuple(int(part) if part.isdigit() else 0 for part in name.split("."))


def postgres_user() -> pwd.struct_passwd:
    """The account that runs the cluster: the current one, or an unprivileged one under root."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    name = os.environ.get(PG_USER_ENV, "postgres")
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise PostgresUnavailable(
            f"running as root and there is no user {name!r} to run PostgreSQL as (it refuses to run "
            f"as root): install Debian's `postgresql` package, which creates `postgres`, or set "
            f"{PG_USER_ENV} to an unprivileged user"
        ) from None


@dataclass
class PostgresCluster:
    """One running cluster on 127.0.0.1:``port``, password-authenticated over TCP."""

    bindir: Path
    base: Path  # holds data/, the socket and the server log; removed by stop()
    port: int
    password: str
    superuser: str = "postgres"
    _user: pwd.struct_passwd | None = field(default=None, repr=False)

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def log(self) -> Path:
        return self.base / "server.log"

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL (MLflow's --backend-store-uri, Optuna's storage)."""
        return f"postgresql://{self.superuser}:{self.password}@127.0.0.1:{self.port}/{database}"

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """Runs one of the cluster's binaries (``initdb``, ``psql``, ...) as the cluster's user."""
        command = [str(self.bindir / args[0]), *args[1:]]
        env = {**os.environ, "PGPASSWORD": self.password, "PGHOST": "127.0.0.1", "PGPORT": str(self.port),
               "PGUSER": self.superuser, "LC_ALL": "C"}
        result = subprocess.run(command, env=env, cwd=self.base, check=False, capture_output=True, text=True,
                                timeout=timeout, **_as_user(self._user))
        if check and result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({result.returncode}): {result.stderr.strip()}{self._log_tail()}")
        return result

    def sql(self, statement: str, database: str = "postgres") -> str:
        """One statement through psql; returns its unaligned output."""
        return self.run("psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-tA", "-d", database, "-c", statement).stdout

    def create_database(self, name: str) -> str:
        """A new, empty database; returns its URL."""
        if not name.replace("_", "").isalnum():
            raise ValueError(f"database name {name!r}: letters, digits and _ only")
        self.sql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def start(self, timeout: float = 60) -> None:
        # Settings for a throwaway cluster: loopback only, a socket beside the data rather than
        # in /var/run/postgresql (which another cluster may own), and no fsync (nothing here
        # must survive a power cut; it saves seconds on a shared disk).
        options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.base} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        self.run("pg_ctl", "start", "-w", "-t", str(int(timeout)), "-D", str(self.data), "-l", str(self.log),
                 "-o", options, timeout=timeout + 10)

    def stop(self) -> None:
        self.run("pg_ctl", "stop", "-m", "fast", "-w", "-D", str(self.data), check=False)

    def _log_tail(self) -> str:
        try:
            return "\n--- server log ---\n" + "\n".join(self.log.read_text().splitlines()[-20:])
        except OSError:
            return ""


def _as_user(user: pwd.struct_passwd | None) -> dict:
    if user is None or user.pw_uid == os.geteuid():
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


@contextmanager
def postgres_cluster(database: str | None = "mlflow") -> Iterator[PostgresCluster]:
    """Starts a throwaway cluster (initdb in a fresh temporary directory, a free loopback port),
    creates ``database`` (none if None), yields it, then stops it and removes every file.

    Raises PostgresUnavailable when the binaries, the driver or an unprivileged user is missing.
    """
    try:
        # The driver SQLAlchemy picks for a plain postgresql:// URL: psycopg2 up to SQLAlchemy
        # 2.0, psycopg (3) from 2.1 on.
        from sqlalchemy.engine import make_url

        make_url("postgresql://").get_dialect().import_dbapi()
    except ImportError as e:
        raise PostgresUnavailable(f"no PostgreSQL driver for SQLAlchemy ({e}): pip install -e '.[test]'") from None
    bindir, user = find_postgres_bindir(), postgres_user()
    # Directly under /tmp, not under pytest's tmp_path: the cluster's user must be able to reach
    # it (pytest's directories are private to root), and a Unix socket path has ~100 bytes at most.
    base = Path(tempfile.mkdtemp(prefix="gmt-ray-pg-"))
    cluster = None
    try:
        os.chown(base, user.pw_uid, user.pw_gid)
        password = secrets.token_urlsafe(16)
        pwfile = base / "pwfile"
        pwfile.write_text(password + "\n")
        os.chown(pwfile, user.pw_uid, user.pw_gid)
        cluster = PostgresCluster(bindir=bindir, base=base, port=free_port(), password=password, _user=user)
        cluster.run("initdb", "-D", str(cluster.data), "-U", cluster.superuser, f"--pwfile={pwfile}",
                    "--auth=scram-sha-256", "-E", "UTF8", "--no-locale", "--no-sync", "--no-instructions")
        pwfile.unlink()
        for attempt in range(3):
            try:
                cluster.start()
                break
            except RuntimeError:
                # The free port may have been taken between choosing and binding it.
                if attempt == 2:
                    raise
                cluster.port = free_port()
        if database:
            cluster.create_database(database)
        yield cluster
    finally:
        if cluster is not None and (cluster.data / "postmaster.pid").exists():
            cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


class MlflowServer:
    """`mlflow server` on 127.0.0.1:``port`` for one backend store, as a restartable process.

    ``auth=True`` runs MLflow's basic-auth app (``--app-name basic-auth``) with its user store
    in SQLite under ``workdir`` and a random admin password; ``client_env`` holds the
    MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD that MLflow's clients read.
    Stopping and starting again keeps the port, stores and credentials, so clients holding
    the URL carry on after a restart. ``env`` goes into the server's environment last (e.g. a
    deployment's own MLFLOW_AUTH_CONFIG_PATH; then pass its ``admin_password`` too).
    """

    def __init__(self, backend_store_uri: str, workdir: str | os.PathLike, *, auth: bool = False,
                 workers: int = 1, port: int | None = None, admin_username: str = "admin",
                 admin_password: str | None = None, env: dict[str, str] | None = None,
                 extra_args: tuple[str, ...] = ()):
        self.backend_store_uri = backend_store_uri
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.artifacts = self.workdir / "artifacts"
        self.auth, self.workers, self.extra_args = auth, workers, tuple(extra_args)
        self.port = port or free_port()
        self.log = self.workdir / "mlflow-server.log"
        self.admin_username = admin_username
        self.admin_password = (admin_password or secrets.token_urlsafe(18)) if auth else None
        self.extra_env = dict(env or {})
        self._secret_key = secrets.token_hex(32)
        self.process: subprocess.Popen | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def client_env(self) -> dict[str, str]:
        """What an MLflow client needs in its environment to be let in (empty without auth)."""
        if not self.auth:
            return {}
        return {"MLFLOW_TRACKING_USERNAME": self.admin_username, "MLFLOW_TRACKING_PASSWORD": self.admin_password}

    def command(self) -> list[str]:
        command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
                   "--workers", str(self.workers), "--backend-store-uri", self.backend_store_uri,
                   "--serve-artifacts", "--artifacts-destination", str(self.artifacts)]
        if self.auth:
            command += ["--app-name", "basic-auth"]
        return command + list(self.extra_args)

    def _env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("MLFLOW_TRACKING_", "MLFLOW_AUTH_"))}
        if self.auth:
            config = self.workdir / "basic_auth.ini"
            config.write_text(auth_config(self.workdir / "basic_auth.db", self.admin_username))
            env.update(MLFLOW_AUTH_CONFIG_PATH=str(config), MLFLOW_AUTH_ADMIN_PASSWORD=self.admin_password,
                       MLFLOW_FLASK_SERVER_SECRET_KEY=self._secret_key)
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 180) -> MlflowServer:
        """Starts the server and returns once it answers /health; raises with the log's tail
        when it exits or does not answer in time."""
        if self.running:
            return self
        with self.log.open("a") as log:
            log.write(f"\n=== start {self.starts + 1}: {' '.join(self.command())}\n")
            log.flush()
            # Its own session, so stop() reaches uvicorn's worker processes too.
            self.process = subprocess.Popen(self.command(), cwd=self.workdir, env=self._env(), stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.process.returncode}{self.log_tail()}")
            if self.healthy():
                return self
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer {self.url}/health within {timeout:.0f} s{self.log_tail()}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return response.status == 200
        except (OSError, urllib.error.URLError):
            return False

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM to the whole process group, SIGKILL after ``timeout`` seconds."""
        self._signal((signal.SIGTERM, signal.SIGKILL), timeout)

    def kill(self, timeout: float = 30) -> None:
        """SIGKILL at once, as a crash would: no request finishes, nothing is flushed."""
        self._signal((signal.SIGKILL,), timeout)

    def _signal(self, signals: tuple[signal.Signals, ...], timeout: float) -> None:
        if self.process is None:
            return
        for sig in signals:
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=timeout)
                break
            except subprocess.TimeoutExpired:
                continue
        # uvicorn's workers can outlive their supervisor; the port must be free before a
        # restart binds it again.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _port_in_use(self.port):
            time.sleep(0.2)
        self.process = None

    def restart(self, timeout: float = 180) -> MlflowServer:
        self.stop()
        return self.start(timeout)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n--- mlflow server log ---\n" + "\n".join(self.log.read_text().splitlines()[-lines:])
        except OSError:
            return ""


def auth_config(database: Path, admin_username: str = "admin") -> str:
    """basic_auth.ini for MLflow's basic-auth app (read via MLFLOW_AUTH_CONFIG_PATH). The admin
    password is not in it: MLflow takes it from MLFLOW_AUTH_ADMIN_PASSWORD the first time it
    starts against an empty user store and ships no default."""
    return (
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{database}\n"
        f"admin_username = {admin_username}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "auth_cache_ttl_seconds = 60\n"  # as cluster/mlflow-db.sh: a PBKDF2 hash per request is slow
    )


def _port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class RayHead:
    """``ray start --head --port PORT --num-cpus N`` from this venv, as a user starts a local
    cluster, isolated in its own RAY_TMPDIR (``temp_root``, where it writes its bootstrap
    file ``ray/ray_current_cluster``) and on free ports, so that it meets no other Ray on
    the machine. ``stop`` kills exactly the processes it started (its process group:
    ``ray start`` runs in a session of its own) and never runs ``ray stop``, which would
    stop every Ray on the machine.
    """

    temp_root: Path
    num_cpus: int = 3  # as a local Ray: the 2 cores and a logical CPU for trial drivers
    port: int = field(default_factory=free_port)
    address: str = ""  # the GCS address ray start recorded (the node's IP, not loopback)
    pgid: int | None = None

    @property
    def env(self) -> dict[str, str]:
        """This process's environment with the head's RAY_TMPDIR: where a plain ``ray.init()``
        (and gmt-ray without --address) finds the head."""
        return {**os.environ, "RAY_TMPDIR": str(self.temp_root)}

    @property
    def bootstrap_file(self) -> Path:
        return self.temp_root / "ray" / "ray_current_cluster"

    @property
    def log(self) -> Path:
        return self.temp_root / "ray-start.log"

    def start(self, timeout: float = 180) -> RayHead:
        ports = {flag: str(free_port()) for flag in (
            "--ray-client-server-port", "--dashboard-port", "--dashboard-agent-listen-port",
            "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port")}
        command = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--port", str(self.port),
                   "--num-cpus", str(self.num_cpus), "--disable-usage-stats", *(x for kv in ports.items() for x in kv)]
        with open(self.log, "w") as log:
            process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        self.pgid = process.pid
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        if code != 0 or not self.bootstrap_file.exists():
            self.stop()
            raise RuntimeError(f"ray start --head failed (exit {code}):\n{self.log.read_text()[-3000:]}")
        self.address = self.bootstrap_file.read_text().strip()
        return self

    def processes(self) -> list:
        """Its live processes: its process group (the head's daemons) and their descendants
        (the raylet starts each worker in a session of its own)."""
        import psutil

        found = {}
        for process in psutil.process_iter(["pid", "status"]):
            try:
                if os.getpgid(process.pid) == self.pgid:
                    for member in [process, *process.children(recursive=True)]:
                        found[member.pid] = member
            except (ProcessLookupError, psutil.Error):
                continue
        return [process for process in found.values() if _alive(process)]

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM to every process it started, SIGKILL to what is left after ``timeout`` seconds."""
        import psutil

        if self.pgid is None:
            return
        started = self.processes()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for process in started:
                try:
                    process.send_signal(sig)  # psutil checks the pid was not reused
                except psutil.Error:
                    pass
            deadline = time.monotonic() + timeout
            while started and time.monotonic() < deadline:
                time.sleep(0.2)
                started = [process for process in started if _alive(process)]
            if not started:
                break
        self.pgid = None


def _alive(process) -> bool:
    """Running, not a zombie (reparented daemons are reaped by init, in its own time)."""
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
