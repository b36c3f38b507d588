"""Writes that survive a tracking server going away for a while.

Step metrics and evaluation rows (every trial's reports) are retried with backoff for the
retry window (``mlflow.retry_window_s``, 2 minutes by default) from the start of the outage,
resending the very same batch, which the server keeps once (MLflow's metric key is key,
value, timestamp and step). A write the window does not save raises ``TrackingUnavailable``
(the sweep prints it) and is recorded in the run's ``gmt_ray.tracking_lost`` tag once the
server answers again: never dropped silently.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from gmt_ray.tracking.tags import Tags

__all__ = ["DEFAULT_RETRY_WINDOW_S", "REQUEST_TIMEOUT_S", "OutageWriter", "TrackingUnavailable", "is_transient",
           "log_batch_once", "retry_transient", "short_error"]

# How long a step metric or evaluation write is retried, from the start of an outage of the
# tracking server: long enough for `mlflow server` to be restarted (mlflow.retry_window_s).
DEFAULT_RETRY_WINDOW_S = 120.0
# One attempt at a step's metrics waits this long for the server's answer.
REQUEST_TIMEOUT_S = 30.0
# Answers that mean "try again" (MLflow's own list of transient HTTP failures).
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_TRANSIENT_ERROR_CODES = frozenset({"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED",
                                    "DEADLINE_EXCEEDED", "ABORTED"})


class TrackingUnavailable(RuntimeError):
    """The tracking server did not take a write within the retry window: what it carried
    (``points`` metric points or evaluation rows of ``what``) is not in the run.

    The run's ``gmt_ray.tracking_lost`` tag records it as soon as the server answers again.
    """

    def __init__(self, run_id: str, what: str, points: int, seconds: float, error: BaseException | str):
        self.run_id, self.what, self.points, self.seconds, self.error = run_id, what, points, seconds, str(error)
        super().__init__(f"MLflow run {run_id}: {what} ({points} points) NOT logged: the tracking server did not "
                         f"take it in {seconds:.0f} s of retries ({self.error})")


class _Transient(Exception):
    """A write failed in a way that a later attempt may not (server down, restarting, busy)."""


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` (from an MLflow client call) is worth retrying: no answer, or a 5xx-like one."""
    import requests
    from mlflow.exceptions import MlflowException, RestException

    if isinstance(error, _Transient | requests.exceptions.ConnectionError | requests.exceptions.Timeout):
        return True
    if isinstance(error, requests.exceptions.HTTPError):
        return error.response is None or error.response.status_code in _TRANSIENT_STATUS
    if isinstance(error, MlflowException):
        # The client wraps a transport failure (after its own retries) in an MlflowException;
        # the server answers a failure of its own (its database gone) with these codes. A
        # refused write (bad value, deleted run, no permission) is neither: retrying cannot help.
        if isinstance(error.__cause__ or error.__context__, requests.exceptions.RequestException):
            return True
        return isinstance(error, RestException) and error.error_code in _TRANSIENT_ERROR_CODES
    return isinstance(error, ConnectionError | TimeoutError)


def short_error(error: BaseException | str) -> str:
    """What went wrong in a few words: requests' messages run to several hundred characters."""
    text = str(error).strip()
    for needle, short in (("Connection refused", "connection refused"), ("timed out", "timed out"),
                          ("RemoteDisconnected", "connection closed without an answer"),
                          ("Connection aborted", "connection closed without an answer"),
                          ("Connection reset", "connection reset")):
        if needle in text:
            return short
    text = text.splitlines()[0] if text else type(error).__name__
    return text if len(text) <= 200 else text[:200] + "..."


def log_batch_once(mlflow_client, tracking_uri: str, run_id: str, metrics: list) -> None:
    """One attempt at a batch of metrics: at an HTTP server, one request with no retries of
    MLflow's own (the caller's window decides), else the store's own write."""
    if not tracking_uri.startswith(("http://", "https://")):
        mlflow_client.log_batch(run_id, metrics=metrics)
        return
    from mlflow.protos.service_pb2 import LogBatch
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.proto_json_utils import message_to_json
    from mlflow.utils.rest_utils import http_request, verify_rest_response

    endpoint = "/api/2.0/mlflow/runs/log-batch"  # as MLflow's RestStore.log_batch sends it
    body = json.loads(message_to_json(LogBatch(run_id=run_id, metrics=[m.to_proto() for m in metrics])))
    try:
        response = http_request(get_default_host_creds(tracking_uri), endpoint, "POST", json=body,
                                max_retries=0, backoff_factor=0, backoff_jitter=0, retry_codes=frozenset(),
                                timeout=REQUEST_TIMEOUT_S)
    except Exception as e:
        # http_request wraps a transport failure (refused, reset, timed out) in an MlflowException.
        import requests

        if isinstance(e.__cause__ or e.__context__, requests.exceptions.RequestException):
            raise _Transient(str(e)) from e
        raise
    if response.status_code in _TRANSIENT_STATUS:
        raise _Transient(f"HTTP {response.status_code} from {endpoint}: {response.text[:200]}")
    verify_rest_response(response, endpoint)


class OutageWriter:
    """Retries writes through an outage of the tracking server and keeps account of what it lost.

    ``notify(event, **payload)``, when set, hears of an outage (``tracking_retrying``) and of
    its end (``tracking_recovered``). Safe to use from several threads.

    Args:
        get_client: the MLflow client to tag runs with what they lost (called when needed).
    """

    def __init__(self, get_client: Callable[[], Any], tracking_uri: str, retry_window_s: float = DEFAULT_RETRY_WINDOW_S):
        self.get_client, self.tracking_uri, self.retry_window_s = get_client, tracking_uri, retry_window_s
        self.notify: Callable[..., None] | None = None
        self._lock = threading.Lock()
        self._outage_since: float | None = None  # time.monotonic() of the first failure of an outage
        self._outage_lost = 0  # points this outage's spent window cost
        self._lost: dict[str, dict[str, Any]] = {}  # run id -> what the server never took
        self._unrecorded: set[str] = set()  # runs whose tracking-lost tag is not written yet

    def write(self, run_id: str, what: str, points: int, attempt: Callable[[], Any]) -> Any:
        """``attempt()`` until it succeeds, with backoff while the server is unreachable, for up
        to ``retry_window_s`` from the start of the outage; then TrackingUnavailable.

        The window runs from the outage's first failure, whichever write met it: once it is
        spent, later writes make one attempt each rather than waiting a window each.
        """
        delay = 0.5
        while True:
            started = time.monotonic()
            try:
                result = attempt()
            except Exception as e:
                if not is_transient(e):
                    raise
                now = time.monotonic()
                with self._lock:
                    first = self._outage_since is None
                    if first:
                        self._outage_since = now
                    since = self._outage_since
                if first:
                    self._notify("tracking_retrying", uri=self.tracking_uri, window_s=self.retry_window_s,
                                 error=short_error(e))
                deadline = since + self.retry_window_s
                if now >= deadline:
                    self._record_lost(run_id, what, points, e)
                    raise TrackingUnavailable(run_id, what, points, now - since, short_error(e)) from e
                time.sleep(min(delay * random.uniform(0.8, 1.2), deadline - now))
                delay = min(delay * 2, 8.0)
                continue
            self._answered(started)
            return result

    def lost(self, run_id: str | None = None) -> int:
        """How many points the server never took (of one run, or of all), in this process."""
        with self._lock:
            return sum(v["points"] for k, v in self._lost.items() if run_id is None or k == run_id)

    def _answered(self, started: float) -> None:
        """The server took a write sent at ``started``: an outage that began before it is over
        (a write sent before, answered as the server stopped, says nothing); record what it lost."""
        with self._lock:
            if self._outage_since is not None and started < self._outage_since:
                return
            since, self._outage_since = self._outage_since, None
            lost, self._outage_lost = self._outage_lost, 0
            pending, self._unrecorded = self._unrecorded, set()
        if since is not None:
            self._notify("tracking_recovered", uri=self.tracking_uri, seconds=time.monotonic() - since, lost=lost)
        for run_id in pending:
            with self._lock:
                lost_here = dict(self._lost[run_id])
            text = (f"{lost_here['points']} points NOT logged ({', '.join(lost_here['what'][:20])}"
                    f"{', ...' if len(lost_here['what']) > 20 else ''}): the tracking server did not take them "
                    f"in the {self.retry_window_s:.0f} s retry window ({lost_here['error']})")
            try:
                self.get_client().set_tag(run_id, Tags.TRACKING_LOST, text[:5000])
            except Exception:  # not back after all: the next write that gets through tries again
                with self._lock:
                    self._unrecorded.add(run_id)

    def _record_lost(self, run_id: str, what: str, points: int, error: BaseException) -> None:
        with self._lock:
            lost = self._lost.setdefault(run_id, {"points": 0, "what": [], "error": ""})
            lost["points"] += points
            lost["what"].append(what)
            lost["error"] = short_error(error)
            self._unrecorded.add(run_id)
            self._outage_lost += points

    def _notify(self, event: str, **payload: Any) -> None:
        if self.notify is not None:
            self.notify(event, **payload)


def retry_transient(attempt: Callable[[], Any], window_s: float = DEFAULT_RETRY_WINDOW_S) -> Any:
    """``attempt()``, again with backoff while it fails for a reason a later attempt may not
    have (the server unreachable or busy, SQLite locked by another writer, a lost insert race),
    for up to ``window_s`` seconds; then its last error. For a trial's own run (opening and
    closing it), where nothing is lost but the trial, and an error would fail it."""
    from gmt_ray.tracking.store import is_conflict

    deadline = time.monotonic() + window_s
    delay = 0.2
    while True:
        try:
            return attempt()
        except Exception as e:
            locked = "database is locked" in str(e)
            if not (is_transient(e) or is_conflict(e) or locked) or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, 8.0)
