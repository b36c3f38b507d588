"""Step metrics through a tracking server that goes away: retried, never lost silently, never twice."""

import socket
import threading
import time

import pytest

from gmt_ray.tracking import SweepRuns, Tags, TrackingUnavailable
from tests.servers import MlflowServer, free_port


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One `mlflow server` (SQLite) for the module: its tests stop and start it."""
    workdir = tmp_path_factory.mktemp("mlflow-outage")
    server = MlflowServer(f"sqlite:///{workdir / 'mlflow.db'}", workdir).start()
    yield server
    server.stop()


@pytest.fixture
def runs(server):
    server.start()  # a test that failed half-way may have left it stopped
    runs = SweepRuns.start(server.url, "outage", "outage-sweep", {}, "")
    runs.events = []
    runs.notify = lambda event, **payload: runs.events.append((event, payload))
    return runs


def _steps(runs, run_id, key="loss"):
    return sorted(m.step for m in runs.client.get_metric_history(run_id, key))


@pytest.mark.integration
def test_a_restart_within_the_window_loses_nothing_and_logs_nothing_twice(server, runs):
    run_id = runs.open_trial("t", "trial_t", {})
    restarted = threading.Event()

    def restart():
        server.stop()
        time.sleep(1)
        server.start()
        restarted.set()

    step = 0
    while not restarted.is_set() or step < 12:
        step += 1
        runs.log_step(run_id, {"loss": 1 / step, "lr": 0.1}, step=step)
        if step == 3:
            threading.Thread(target=restart, daemon=True).start()
        time.sleep(0.05)
    assert _steps(runs, run_id) == _steps(runs, run_id, "lr") == list(range(1, step + 1))
    assert [event for event, _ in runs.events] == ["tracking_retrying", "tracking_recovered"]
    assert runs.events[0][1]["error"] == "connection refused" and runs.events[1][1]["lost"] == 0
    assert runs.lost() == 0 and Tags.TRACKING_LOST not in runs.client.get_run(run_id).data.tags


class _AnswerDroppingProxy:
    """127.0.0.1 proxy to ``target`` that lets requests through but, for the first ``drop``
    log-batch requests, closes the connection instead of passing the server's answer on:
    the server has written the batch, the client cannot know."""

    def __init__(self, target_port: int, drop: int):
        self.target_port, self.drop, self.dropped = target_port, drop, 0
        self.port = free_port()
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client):
        with client:
            request = _read_request(client)
            if request is None:
                return
            # One request per upstream connection, so the whole answer is read before closing.
            request = request.replace(b"Connection: keep-alive", b"Connection: close", 1)
            with socket.create_connection(("127.0.0.1", self.target_port)) as upstream:
                upstream.sendall(request)
                answer = b"".join(iter(lambda: upstream.recv(65536), b""))
            if b"/runs/log-batch" in request.split(b"\r\n", 1)[0] and self.dropped < self.drop:
                self.dropped += 1
                return  # the batch is in the store; the answer never arrives
            client.sendall(answer)

    def close(self):
        self.listener.close()


def _read_request(connection) -> bytes | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        body += connection.recv(65536)
    return head + b"\r\n\r\n" + body


@pytest.mark.integration
def test_a_batch_whose_answer_was_lost_is_resent_and_kept_once(server, runs):
    proxy = _AnswerDroppingProxy(server.port, drop=2)
    try:
        through_proxy = SweepRuns(f"http://127.0.0.1:{proxy.port}", runs.parent_run_id)
        run_id = through_proxy.open_trial("t", "trial_t", {})
        for step in (1, 2, 3):
            through_proxy.log_step(run_id, {"loss": 1.0 / step}, step=step)
    finally:
        proxy.close()
    assert proxy.dropped == 2  # step 1's batch reached the store three times
    assert _steps(runs, run_id) == [1, 2, 3]


@pytest.mark.integration
def test_a_server_gone_past_the_window_is_reported_never_dropped_silently(server, runs):
    run_id = runs.open_trial("t", "trial_t", {})
    runs.log_step(run_id, {"loss": 1.0}, step=1)
    runs.retry_window_s = 2.0
    server.stop()
    started = time.monotonic()
    with pytest.raises(TrackingUnavailable, match=r"step 2 \(2 points\) NOT logged.*connection refused"):
        runs.log_step(run_id, {"loss": 0.5, "lr": 0.1}, step=2)
    assert 1.9 < time.monotonic() - started < 10
    started = time.monotonic()  # the window is spent: the next write fails at once, not after a window
    with pytest.raises(TrackingUnavailable, match="step 3"):
        runs.log_step(run_id, {"loss": 0.25}, step=3)
    assert time.monotonic() - started < 2
    assert runs.lost(run_id) == 3
    server.start()
    runs.log_step(run_id, {"loss": 0.125}, step=4)
    assert _steps(runs, run_id) == [1, 4]
    tag = runs.client.get_run(run_id).data.tags[Tags.TRACKING_LOST]
    assert tag.startswith("3 points NOT logged (step 2, step 3)") and "2 s retry window" in tag
    assert [event for event, _ in runs.events] == ["tracking_retrying", "tracking_recovered"]
    assert runs.events[1][1]["lost"] == 3


def test_the_sweep_console_says_what_was_not_logged(capsys):
    from types import SimpleNamespace

    from gmt_ray.sweep.callbacks import MlflowTrialLogger
    from gmt_ray.sweep.console import SweepConsole

    class Unreachable:
        def log_step(self, run_id, metrics, step):
            raise TrackingUnavailable(run_id, f"step {step}", len(metrics), 120.0, "connection refused")

    logger = MlflowTrialLogger(Unreachable(), "/tmp", remote=False)
    logger.run_ids["t1"] = "r1"
    console = SweepConsole(interactive=False)
    console.start(1, "parent", "http://127.0.0.1:5000")
    try:
        logger.on_trial_result(0, [], SimpleNamespace(trial_id="t1"), {"step": 10, "loss": 1.0})
    finally:
        console.stop()
    out = capsys.readouterr().out
    assert "mlflow t1: MLflow run r1: step 10 (2 points) NOT logged" in out and "connection refused" in out
    assert "gmt_ray.tracking_lost" in out


@pytest.mark.integration
def test_a_write_the_server_refuses_is_raised_at_once_not_retried(runs):
    from mlflow.exceptions import RestException

    with pytest.raises(RestException, match="RESOURCE_DOES_NOT_EXIST"):
        runs.log_step("0" * 32, {"loss": 1.0}, step=1)
    assert runs.events == [] and runs.lost() == 0
