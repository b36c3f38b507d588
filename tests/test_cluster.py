"""Where a command's Ray comes from (gmt_ray.cluster.choose_cluster): a live local
cluster is used, a stale bootstrap file ignored, an unreachable address refused at once."""

import socket
import time

import pytest

from gmt_ray import cluster
from gmt_ray.errors import UsageError
from tests.servers import free_port


@pytest.fixture
def ray_tmpdir(tmp_path, monkeypatch):
    """An empty Ray temp dir of this test's own (no bootstrap file), and no RAY_ADDRESS."""
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return tmp_path


def stale_bootstrap_file(ray_tmpdir) -> str:
    """A bootstrap file naming a head that is gone (nothing listens on its port), as a killed
    `ray start --head` leaves it."""
    address = f"127.0.0.1:{free_port()}"
    (ray_tmpdir / "ray").mkdir(exist_ok=True)
    (ray_tmpdir / "ray" / "ray_current_cluster").write_text(address)
    return address


def test_no_bootstrap_file_starts_a_local_ray(ray_tmpdir):
    target = cluster.choose_cluster(None)
    assert target.start_local and not target.note


# Bounds below are the tests' own (monkeypatched) timeouts with room for a loaded machine:
# an unbounded wait (Ray's own, a minute or for ever) still fails them, a slow one does not.
SLACK_S = 10


def test_a_stale_bootstrap_file_is_ignored_with_a_note(ray_tmpdir, monkeypatch):
    monkeypatch.setattr(cluster, "LOCAL_PROBE_TIMEOUT_S", 0.5)
    address = stale_bootstrap_file(ray_tmpdir)
    start = time.monotonic()
    target = cluster.choose_cluster(None)
    assert time.monotonic() - start < 0.5 + SLACK_S
    assert target.start_local
    assert f"ignoring {ray_tmpdir / 'ray' / 'ray_current_cluster'}" in target.note
    assert address in target.note and "not running" in target.note
    assert cluster.live_local_cluster() is None
    # Its head was on this machine and nothing listens there: init_ray removes the file,
    # but choosing starts and changes nothing (a dry run chooses too).
    assert target.dead_bootstrap == address and "removing that file as `ray stop` would" in target.note
    assert (ray_tmpdir / "ray" / "ray_current_cluster").exists()


@pytest.mark.parametrize("answer", ["refused", "silent"])
def test_a_bootstrap_file_naming_an_unanswering_remote_head_is_ignored_but_kept(ray_tmpdir, monkeypatch, answer):
    # A head elsewhere that does not answer may only be out of reach: its file is not ours to
    # remove, even where the connection is refused (a restarting head, a firewall's reset).
    monkeypatch.setattr(cluster, "LOCAL_PROBE_TIMEOUT_S", 0.5)
    if answer == "refused":
        monkeypatch.setattr(cluster, "_tcp_problem", lambda address, timeout_s: cluster._REFUSED)
    (ray_tmpdir / "ray").mkdir()
    (ray_tmpdir / "ray" / "ray_current_cluster").write_text("198.51.100.7:6379")  # TEST-NET-2: no host answers
    target = cluster.choose_cluster(None)
    assert target.start_local and target.dead_bootstrap is None
    assert "ignoring" in target.note and "delete that file" in target.note
    assert (answer == "refused") == ("connection refused" in target.note)


def test_only_addresses_of_this_machine_count_as_local():
    import psutil

    assert cluster._on_this_machine(f"127.0.0.1:{free_port()}")
    assert cluster._on_this_machine(f"localhost:{free_port()}")
    assert cluster._on_this_machine(f"[::1]:{free_port()}")
    interface = next((entry.address for entries in psutil.net_if_addrs().values() for entry in entries
                      if entry.family == socket.AF_INET and not entry.address.startswith("127.")), None)
    if interface is not None:  # a machine with a network: the node IP Ray records for a head
        assert cluster._on_this_machine(f"{interface}:6379")
    assert not cluster._on_this_machine("198.51.100.7:6379")
    assert not cluster._on_this_machine("not an address")


def test_local_always_starts_a_fresh_ray(ray_tmpdir, monkeypatch):
    stale_bootstrap_file(ray_tmpdir)
    monkeypatch.setenv("RAY_ADDRESS", "10.9.9.9:6379")  # --address local wins over RAY_ADDRESS
    assert cluster.choose_cluster("local").start_local


@pytest.mark.parametrize("flag", ["--address", "RAY_ADDRESS"])
def test_an_address_where_nothing_listens_is_refused_at_once(ray_tmpdir, monkeypatch, flag):
    # Refused at once: no wait for the connect timeout, made longer than the slack to tell.
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 3 * SLACK_S)
    address = f"127.0.0.1:{free_port()}"
    if flag == "RAY_ADDRESS":
        monkeypatch.setenv("RAY_ADDRESS", address)
    start = time.monotonic()
    with pytest.raises(UsageError) as error:
        cluster.choose_cluster(address if flag == "--address" else None)
    assert time.monotonic() - start < SLACK_S
    message = str(error.value)
    assert f"cannot reach a Ray cluster at {flag}{' ' if flag == '--address' else '='}{address}" in message
    assert "connection refused" in message and f"waiting up to {3 * SLACK_S} s" in message
    assert "--address auto" in message and "head's own address" in message


def test_an_address_that_is_not_ray_is_refused_within_the_bound(ray_tmpdir, monkeypatch):
    import ray._raylet  # noqa: F401 - imported once, not timed

    monkeypatch.setattr(cluster, "GCS_TIMEOUT_S", 1.0)
    with socket.socket() as server:  # accepts TCP connections, never answers as Ray's GCS
        server.bind(("", 0))  # Ray dials 127.0.0.1 as the node's address
        server.listen(8)
        start = time.monotonic()
        with pytest.raises(UsageError, match="accepts connections, but no Ray GCS answered there within 1 s"):
            cluster.choose_cluster(f"127.0.0.1:{server.getsockname()[1]}")
        assert time.monotonic() - start < 1 + SLACK_S


@pytest.mark.parametrize("address, message", [
    ("nonsense", "--address nonsense: not a cluster address"),
    ("no-such-host.invalid:6379", "cannot resolve 'no-such-host.invalid'"),
    ("ray://127.0.0.1:{free_port}", "cannot reach the Ray Client server"),
])
def test_other_bad_addresses(ray_tmpdir, address, message):
    # The port is taken when the test runs: a test's id stays the same from one collection to the next.
    with pytest.raises(UsageError, match=message):
        cluster.choose_cluster(address.format(free_port=free_port()))


@pytest.mark.integration
def test_a_live_head_is_chosen_with_or_without_its_address(ray_head, monkeypatch):
    monkeypatch.setenv("RAY_TMPDIR", str(ray_head.temp_root))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    target = cluster.choose_cluster(None)
    assert (target.address, target.local, target.start_local) == (ray_head.address, True, False)
    assert cluster.live_local_cluster() == ray_head.address
    # Loopback reaches the head (Ray dials it as the node's address); the token goes with it.
    assert cluster.choose_cluster(f"127.0.0.1:{ray_head.port}").address == ray_head.address
    assert cluster.choose_cluster("auto").address == ray_head.address
