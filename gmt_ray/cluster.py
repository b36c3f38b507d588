"""Which Ray a command runs on, and connecting to it: a cluster named by address, the local
cluster Ray's bootstrap file names (if it is alive), or a fresh local Ray. Addresses are
probed within bounded waits first, so that a cluster nobody answers at is one message and
exit code 2 rather than a hang. Used by the train and sweep commands."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["CONNECT_TIMEOUT_S", "GCS_TIMEOUT_S", "LOCAL_PROBE_TIMEOUT_S", "ClusterTarget", "choose_cluster",
           "describe_cluster", "init_ray", "live_local_cluster", "local_cpus", "ray_session"]

PREEMPTION_WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


# Settings read by Ray's own processes and by Tune and Train in the driver.
_QUIET_RAY = {
    "RAY_USAGE_STATS_ENABLED": "0",
    # Train V2's controller polls its workers every 2 s by default, so every run waits up
    # to 2 s to notice start and end; sweeps of short trials pay that twice per trial.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
}
# Ray's banners, migration notes and per-report worker lines drown the console.
_QUIET_CONSOLE = {"RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0", "RAY_AIR_NEW_OUTPUT": "0"}


@contextlib.contextmanager
def ray_session(address: str | None = None, *, verbose: bool = False, num_cpus: int | None = None,
                say: Callable[[str], None] | None = None):
    """Ray for the duration of a block: connects to a running cluster or starts a local one
    (see ``init_ray``), and leaves the process as it found it: a Ray it started is shut
    down, environment variables and log levels it set are restored."""
    import ray

    saved_environ = dict(os.environ)
    ray_logger = logging.getLogger("ray")
    saved_level = ray_logger.level
    started = not ray.is_initialized()
    try:
        if started:
            init_ray(address, verbose=verbose, num_cpus=num_cpus, say=say)
        yield
    finally:
        if started and ray.is_initialized():
            from gmt_ray.ray_compat import show_worker_pool_warning

            ray.shutdown()
            show_worker_pool_warning()
        os.environ.clear()
        os.environ.update(saved_environ)
        ray_logger.setLevel(saved_level)


def init_ray(address: str | None = None, *, verbose: bool = False, num_cpus: int | None = None,
             say: Callable[[str], None] | None = None) -> None:
    """Connects to a running cluster, else starts a local one (nothing when Ray already
    runs in this process).

    ``address`` (else RAY_ADDRESS): that cluster, checked first within a bounded wait
    (``CONNECT_TIMEOUT_S`` + ``GCS_TIMEOUT_S``); ``local``: a fresh local Ray. Neither: the
    local cluster Ray's bootstrap file names if it is running (``say`` is told so, with its
    resources), else a fresh local Ray of ``num_cpus`` (default ``local_cpus()``) CPUs,
    ignoring a file left behind by a dead head (``say`` is told that too). Resource
    arguments only ever go to a Ray it starts.

    Raises:
        gmt_ray.errors.UsageError: the cluster cannot be reached (nothing started).
    """
    import ray

    if ray.is_initialized():
        return
    settings = {**_QUIET_RAY, **({} if verbose else _QUIET_CONSOLE)}
    for key, value in settings.items():
        os.environ.setdefault(key, value)
    if not verbose:
        logging.getLogger("ray").setLevel(logging.ERROR)
    target = choose_cluster(address)
    kwargs: dict[str, Any] = {
        # The dashboard serves the State API, which Ray Train's PlacementGroupCleaner needs to
        # release the resources of a run whose controller was killed (an early-stopped trial).
        # It listens on 127.0.0.1 only.
        "include_dashboard": True,
        "dashboard_host": "127.0.0.1",
        "log_to_driver": verbose,
        "logging_level": "INFO" if verbose else "ERROR",
    }
    env_vars = {"RAY_USAGE_STATS_ENABLED": "0", "PYTHONWARNINGS": os.environ.get("PYTHONWARNINGS", "ignore")}
    kwargs["runtime_env"] = {"env_vars": env_vars}
    if say is not None and target.note:
        say(target.note)
    if target.dead_bootstrap is not None:
        from gmt_ray.ray_compat import bootstrap_file, forget_recorded_cluster, recorded_cluster

        # Another process may have replaced or removed the file meanwhile: only the dead
        # address left in place is worth a word.
        if not forget_recorded_cluster(target.dead_bootstrap) and say is not None \
                and recorded_cluster() == target.dead_bootstrap:
            say(f"Ray: could not remove {bootstrap_file()}; remove it by hand (each trial waits on it as it ends)")
    if target.start_local:
        # Each Train run would start a watcher actor (a fresh process importing Ray Train,
        # ~1.5 CPU-s) for node drains, which a single local machine never has.
        env_vars[PREEMPTION_WATCHER] = os.environ[PREEMPTION_WATCHER] = os.environ.get(PREEMPTION_WATCHER, "0")
        # "local": a new Ray even where the bootstrap file names a cluster (a dead one here).
        ray.init(address="local", num_cpus=num_cpus or local_cpus(), **kwargs)
    else:
        ray.init(address=target.address, **kwargs)
        if say is not None and target.local:
            say(f"Ray: connected to the local cluster running at {target.address} ({describe_cluster()}), "
                f"named in {target.found_in}; --address ADDR chooses another cluster, --address local starts "
                "a fresh local Ray")
    if not verbose:
        from gmt_ray.ray_compat import hide_worker_pool_warning

        hide_worker_pool_warning()


# How long a command waits on a cluster before it gives up with a message (ray.init itself
# may wait minutes, or forever, on an address where nothing or no Ray answers).
CONNECT_TIMEOUT_S = 5.0  # a TCP connection to the address
GCS_TIMEOUT_S = 10.0  # then the first answer of Ray's GCS there
# The cluster the bootstrap file names runs on this machine: a live head accepts at once.
LOCAL_PROBE_TIMEOUT_S = 2.0

_ADDRESS_HINT = ("on the cluster's head node use --address auto; elsewhere give the head's own address (the "
                 "GCS address `ray start --head` printed, host:6379 by default), or leave out --address (and "
                 "RAY_ADDRESS) to start a local Ray")


@dataclass
class ClusterTarget:
    """What ``init_ray`` will do: start a local Ray, or connect to ``address``."""

    address: str | None = None  # for ray.init: a GCS host:port or a ray:// address
    start_local: bool = False
    local: bool = False  # the running local cluster named in Ray's bootstrap file
    found_in: str = ""  # that file
    note: str = ""  # to tell the user before Ray starts
    # A dead cluster on this machine that the bootstrap file still names: init_ray removes
    # the file, as `ray stop` does. Ray's own lookups inside a sweep's processes (the State
    # API of Ray Train's PlacementGroupCleaner) read it, and each waited ~10 s on the dead
    # address as its trial ended, with the cleaner unable to check the controller at all.
    dead_bootstrap: str | None = None


def choose_cluster(address: str | None = None) -> ClusterTarget:
    """Where ``init_ray`` goes, decided without starting anything.

    ``address`` (else RAY_ADDRESS) must answer as a Ray cluster within ``CONNECT_TIMEOUT_S``
    (TCP) + ``GCS_TIMEOUT_S`` (Ray's GCS). Without one, the cluster named in Ray's bootstrap
    file is used when its GCS answers (TCP within ``LOCAL_PROBE_TIMEOUT_S``); a file naming
    a dead head is ignored, with a note, and marked for removal where that head was on this
    machine and nothing listens on its port (``ClusterTarget.dead_bootstrap``).

    Raises:
        gmt_ray.errors.UsageError: the address is malformed, unreachable, not Ray, or refuses
            this process's token; one message naming it, what was tried and what to do.
    """
    from gmt_ray.ray_compat import bootstrap_file

    flag = "--address"
    if not address and os.environ.get("RAY_ADDRESS"):
        address, flag = os.environ["RAY_ADDRESS"], "RAY_ADDRESS"
    if address == "local":
        return ClusterTarget(start_local=True)
    if not address:
        recorded, problem = _recorded_cluster_state()
        if recorded is None:
            return ClusterTarget(start_local=True)
        if problem is None:
            return ClusterTarget(address=recorded, local=True, found_in=str(bootstrap_file()))
        if problem.auth:
            from gmt_ray.errors import UsageError

            raise UsageError(f"a local Ray cluster runs at {recorded} (named in {bootstrap_file()}) but refused this "
                             f"process's token: {problem.error}. Use that cluster's token (RAY_AUTH_TOKEN), or "
                             "--address local to start a fresh local Ray")
        if problem.refused and _on_this_machine(recorded):
            return ClusterTarget(start_local=True, dead_bootstrap=recorded, note=(
                f"Ray: ignoring {bootstrap_file()}: the cluster it names ({recorded}) is not running "
                f"({problem.error}); starting a fresh local Ray, and removing that file as `ray stop` "
                "would (Ray's own lookups inside the trials read it)"))
        return ClusterTarget(start_local=True, note=(
            f"Ray: ignoring {bootstrap_file()}: the cluster it names ({recorded}) is not running "
            f"({problem.error}); starting a fresh local Ray (delete that file: Ray's own lookups inside "
            "the trials read it too)"))
    return ClusterTarget(address=_reachable(address, flag))


def live_local_cluster() -> str | None:
    """The GCS address of the running local cluster a plain ``init_ray()`` would connect to."""
    recorded, problem = _recorded_cluster_state()
    return recorded if recorded is not None and problem is None else None


def describe_cluster() -> str:
    """The connected cluster in a few words: nodes, CPUs, GPUs."""
    import ray

    resources = ray.cluster_resources()
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    return f"{nodes} node{'s' if nodes != 1 else ''}, {resources.get('CPU', 0):g} CPU, {resources.get('GPU', 0):g} GPU"


class _Problem:
    def __init__(self, error: str, *, auth: bool = False, refused: bool = False):
        self.error, self.auth, self.refused = error, auth, refused


def _on_this_machine(address: str) -> bool:
    """Whether host:port's host is this machine: every address it resolves to is a loopback
    address or one of this machine's interfaces (not "can be bound here": with
    ip_nonlocal_bind any address binds)."""
    import ipaddress

    import psutil

    def ip(text: str):
        return ipaddress.ip_address(text.split("%", 1)[0])  # without an IPv6 zone (fe80::1%eth0)

    try:
        host, _ = _split(address)
        resolved = {ip(info[4][0]) for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
        interfaces = {ip(entry.address) for entries in psutil.net_if_addrs().values() for entry in entries
                      if entry.family in (socket.AF_INET, socket.AF_INET6)}
    except (ValueError, OSError):
        return False
    return bool(resolved) and all(each.is_loopback or each in interfaces for each in resolved)


def _recorded_cluster_state():
    """(the GCS address in Ray's bootstrap file or None, why it does not answer or None)."""
    from gmt_ray.ray_compat import recorded_cluster

    recorded = recorded_cluster()
    if recorded is None:
        return None, None
    return recorded, _probe(recorded, LOCAL_PROBE_TIMEOUT_S, local=True)


def _probe(gcs_address: str, connect_timeout_s: float, *, local: bool):
    """None when a Ray GCS answers at ``gcs_address`` (host:port), else a ``_Problem``."""
    from gmt_ray.ray_compat import gcs_answers, use_local_token

    tcp = _tcp_problem(gcs_address, connect_timeout_s)
    if tcp is not None:
        return _Problem(tcp, refused=tcp == _REFUSED)
    answer = gcs_answers(gcs_address, GCS_TIMEOUT_S)
    if answer.auth and local and use_local_token():
        # A cluster on this machine that wants a token gets this machine's, as ray.init does
        # for the cluster it finds itself; one that does not (a ray.cluster_utils.Cluster, a
        # head with auth off) is never sent one: its workers would then refuse the job's actors.
        answer = gcs_answers(gcs_address, GCS_TIMEOUT_S)
    if answer.ok:
        return None
    if answer.timeout:
        return _Problem(f"it accepts connections, but no Ray GCS answered there within {GCS_TIMEOUT_S:g} s "
                        "(is it the GCS port? not the dashboard's 8265 or Ray Client's 10001)")
    return _Problem(answer.error, auth=answer.auth)


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(address)
    return host.strip("[]"), int(port)


_REFUSED = "connection refused: nothing listens there"


def _tcp_problem(address: str, timeout_s: float) -> str | None:
    """None when something accepts a TCP connection at host:port within ``timeout_s``."""
    host, port = _split(address)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except TimeoutError:
        return f"no answer to a TCP connection within {timeout_s:g} s"
    except ConnectionRefusedError:
        return _REFUSED
    except socket.gaierror as error:
        return f"cannot resolve {host!r}: {error.strerror}"
    except OSError as error:
        return f"cannot connect: {error.strerror or error}"


def _reachable(address: str, flag: str) -> str:
    """The address to give ray.init, once a Ray cluster answered there."""
    from gmt_ray.errors import UsageError
    from gmt_ray.ray_compat import bootstrap_file, canonical_address, local_gcs_addresses, recorded_cluster

    where = f"{flag} {address}" if flag == "--address" else f"RAY_ADDRESS={address}"
    if address.startswith("ray://"):  # Ray Client: its own server; only the connection can be checked here
        try:
            problem = _tcp_problem(address[len("ray://"):].split("/")[0], CONNECT_TIMEOUT_S)
        except ValueError:
            raise UsageError(f"{where}: expected ray://host:port") from None
        if problem:
            raise UsageError(f"cannot reach the Ray Client server at {where}: {problem}; {_ADDRESS_HINT}")
        return address
    try:
        resolved = canonical_address(address)
        _split(resolved)
    except ValueError:
        raise UsageError(f"{where}: not a cluster address; expected host:port (a head's GCS address), auto, "
                         "local or ray://host:port") from None
    except ConnectionError:
        raise UsageError(f"{where}: no Ray cluster runs on this machine (none named in {bootstrap_file()}, no "
                         "raylet found); start one with `ray start --head`, give a head's address, or leave out "
                         "--address to start a local Ray") from None
    dialled = f" (dialled as {resolved})" if resolved != address else ""
    local = resolved in local_gcs_addresses() or resolved == recorded_cluster()
    problem = _probe(resolved, CONNECT_TIMEOUT_S, local=local)
    if problem is None:
        return resolved
    if problem.auth:
        raise UsageError(f"the Ray cluster at {where}{dialled} refused this process's token: it uses token "
                         "authentication. Set RAY_AUTH_MODE=token and its token in RAY_AUTH_TOKEN (or "
                         "~/.ray/auth_token), or on its head node use --address auto")
    raise UsageError(f"cannot reach a Ray cluster at {where}{dialled}: {problem.error} (tried a TCP connection, "
                     f"waiting up to {CONNECT_TIMEOUT_S:g} s, then Ray's GCS, up to {GCS_TIMEOUT_S:g} s); "
                     f"{_ADDRESS_HINT}")


def local_cpus() -> int:
    """Logical CPUs of a local Ray: the cores, plus one shared by the trials' light drivers.

    Without it, two 1-CPU trials could not run at once on a 2-core machine: each trial's
    driver holds 0.01 CPU beside its worker.
    """
    return (os.cpu_count() or 1) + 1
