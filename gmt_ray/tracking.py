"""MLflow, in one place: a parent run per sweep, a nested child run per trial.

Every CLI and the report read and write MLflow through this module; it imports neither
Ray nor Tune. ``SweepRuns`` owns a sweep's runs (the parent and its trials) and ``Tags``
names every tag gmt-ray writes.

Every process gets the same absolute tracking URI: Tune changes each trial's working
directory, and a relative ``sqlite:///mlflow.db`` would scatter runs across trial dirs.

Step metrics and evaluation rows (``SweepRuns.log_step`` / ``log_eval_rows``, every
trial's reports) survive a tracking server that goes away for a while: each write is
retried with backoff for ``SweepRuns.retry_window_s`` (``mlflow.retry_window_s``, 2
minutes by default) from the start of the outage, resending the very same batch, which
the server keeps once (MLflow's metric key is key, value, timestamp and step). A write
the window does not save raises ``TrackingUnavailable`` (the sweep prints it) and is
recorded in the run's ``gmt_ray.tracking_lost`` tag once the server answers again:
never dropped silently.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_RETRY_WINDOW_S",
    "EXPERIMENT_KIND",
    "SweepRuns",
    "SystemMetrics",
    "Tags",
    "TrackingUnavailable",
    "artifact_root",
    "client",
    "delete_sweep_runs",
    "experiment_url",
    "find_parent_run",
    "init_from_by_method",
    "latest_sweep_run",
    "registered_model_name",
    "resolve_init_from",
    "resolve_model_uri",
    "resolve_tracking_uri",
]

# The experiment kind MLflow's UI offers for model training ("Machine learning"; the other is
# "GenAI apps & agents"), and maps to its "Model training" workflow. See experiment_url.
EXPERIMENT_KIND = "custom_model_development"
SAVED_VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # MLflow UI's saved views: experiment tags (see save_comparison_view)
BEST_ALIAS = "best"  # the registry alias of each method's best trial: models:/<sweep>-<method>@best


class Tags:
    """Every MLflow tag gmt-ray writes or reads."""

    PARENT = "mlflow.parentRunId"  # MLflow's own: the UI nests a run under this parent
    EXPERIMENT_KIND = "mlflow.experimentKind"  # MLflow's own, on the experiment: what it is for
    DATASET_CONTEXT = "mlflow.data.context"  # MLflow's own, on a dataset input: train, validation, eval
    MODEL_IS_EXTERNAL = "mlflow.model.isExternal"  # MLflow's own: a logged model whose files live elsewhere
    GIT_COMMIT = "mlflow.source.git.commit"
    ROLE = "gmt_ray.role"  # "sweep" (a parent run) or "trial"
    SWEEP = "gmt_ray.sweep"  # the sweep's name, on the parent and every trial
    TRIAL_ID = "gmt_ray.trial_id"  # Tune's trial id
    CHECKPOINT = "gmt_ray.checkpoint"  # a finished trial's final checkpoint directory
    MODEL = "gmt_ray.model"  # a finished trial's exported model (Hugging Face directory)
    MODEL_ID = "gmt_ray.model_id"  # on a trial run: the id of its logged model (models:/<id>)
    METHOD = "gmt_ray.method"  # on logged and registered models: the trial's method
    OBJECTIVE = "gmt_ray.objective"  # "<metric>=<value>": written by the trial's last report
    EARLY_STOPPED = "gmt_ray.early_stopped"  # "step N": stopped by the scheduler
    BEST_TRIAL = "gmt_ray.best_trial"
    BEST_RUN_ID = "gmt_ray.best_run_id"
    TRACKING_LOST = "gmt_ray.tracking_lost"  # what the tracking server never took (see TrackingUnavailable)


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


def _is_transient(error: BaseException) -> bool:
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


def resolve_tracking_uri(uri: str | None, base: Path | None = None) -> str:
    """An absolute tracking URI: ``uri``, else ``MLFLOW_TRACKING_URI``, else a SQLite store
    in the working directory."""
    base = (base or Path.cwd()).resolve()
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or None
    if uri is None:
        return f"sqlite:///{base / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{(base / uri[len('sqlite:///'):]).resolve()}"
    if "://" not in uri:  # a plain directory or file path
        return str((base / uri).resolve())
    return uri


def local_store_path(tracking_uri: str) -> Path | None:
    """The database file of a local SQLite store (None: any other store)."""
    return Path(tracking_uri[len("sqlite:///"):]) if tracking_uri.startswith("sqlite:///") else None


def artifact_root(tracking_uri: str) -> str | None:
    """Artifacts beside a local SQLite store, as an absolute file URI (None: server's default)."""
    store = local_store_path(tracking_uri)
    return store.with_name("mlartifacts").as_uri() if store is not None else None


def client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _versions() -> dict[str, str]:
    import importlib.metadata as metadata

    versions = {}
    for package in ("ray", "torch", "transformers", "optuna", "mlflow", "gmt-ray"):
        try:
            versions[f"version.{package}"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[f"version.{package}"] = "not installed"
    return versions


def _log_params(mlflow_client, run_id: str, params: Mapping[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for start in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
        mlflow_client.log_batch(run_id, params=items[start : start + 100])


class SweepRuns:
    """A sweep's MLflow runs: the parent, and one nested child run per trial.

    Cheap to pickle (a URI, a run id, the retry window): Tune ships it to trial drivers and
    callbacks, each of which opens its own client.

    ``notify(event, **payload)``, when set (the sweep sets the console's ``publish``), hears
    of an outage (``tracking_retrying``) and of its end (``tracking_recovered``). Safe to
    use from several threads.
    """

    def __init__(self, tracking_uri: str, parent_run_id: str, retry_window_s: float = DEFAULT_RETRY_WINDOW_S):
        self.tracking_uri, self.parent_run_id = tracking_uri, parent_run_id
        self.retry_window_s = retry_window_s
        self.notify: Callable[..., None] | None = None
        self._client = None
        self._lock = threading.Lock()
        self._outage_since: float | None = None  # time.monotonic() of the first failure of an outage
        self._outage_lost = 0  # points this outage's spent window cost
        self._lost: dict[str, dict[str, Any]] = {}  # run id -> what the server never took
        self._unrecorded: set[str] = set()  # runs whose tracking-lost tag is not written yet

    def __getstate__(self):
        return {"tracking_uri": self.tracking_uri, "parent_run_id": self.parent_run_id,
                "retry_window_s": self.retry_window_s}

    def __setstate__(self, state):
        self.__init__(state["tracking_uri"], state["parent_run_id"],
                      state.get("retry_window_s", DEFAULT_RETRY_WINDOW_S))

    @property
    def client(self):
        if self._client is None:
            self._client = client(self.tracking_uri)
        return self._client

    # ------------------------------------------------------------------ the parent run

    @classmethod
    def start(cls, tracking_uri: str, experiment_name: str, sweep_name: str, config: Mapping[str, Any],
              config_yaml: str) -> SweepRuns:
        """Creates the sweep's parent run with the resolved config as params and artifact."""
        mlflow_client = client(tracking_uri)
        experiment = mlflow_client.get_experiment_by_name(experiment_name)
        experiment_id = experiment.experiment_id if experiment is not None else mlflow_client.create_experiment(
            experiment_name, artifact_location=artifact_root(tracking_uri))
        # A training experiment, not a GenAI app's: MLflow 3 labels and files it by this tag.
        mlflow_client.set_experiment_tag(experiment_id, Tags.EXPERIMENT_KIND, EXPERIMENT_KIND)
        run = mlflow_client.create_run(
            experiment_id, run_name=sweep_name,
            tags={Tags.SWEEP: sweep_name, Tags.ROLE: "sweep", Tags.GIT_COMMIT: _git_commit(), **_versions()},
        )
        runs = cls(tracking_uri, run.info.run_id)
        _log_params(mlflow_client, runs.parent_run_id, _flatten(config))
        mlflow_client.log_text(runs.parent_run_id, config_yaml, "config.yaml")
        return runs

    @property
    def experiment_id(self) -> str:
        return self.client.get_run(self.parent_run_id).info.experiment_id

    @classmethod
    def reopen(cls, tracking_uri: str, parent_run_id: str) -> SweepRuns:
        """The parent run of an interrupted sweep, RUNNING again."""
        runs = cls(tracking_uri, parent_run_id)
        runs.client.update_run(parent_run_id, status="RUNNING")
        return runs

    def save_comparison_view(self, metric: str, mode: str, params: Iterable[str]) -> str:
        """A saved view of the sweep's experiment (the UI's Views menu, or the link
        ``experiment_url(..., view=...)``): this sweep's trials, best first, with ``params``
        and ``metric`` as columns, and in the chart view a parallel-coordinates chart of
        ``metric`` against ``params`` and a scatter of ``metric`` against the learning rate
        (else the first numeric one).
        Returns the view's id (the same for the same sweep: a resumed sweep rewrites it).

        MLflow's UI keeps saved views as experiment tags ``mlflow.sharedViewState.<id>``
        holding its own page state as JSON; this writes that state for the UI of MLflow 3.17
        (tests/test_mlflow_ui.py opens it in a browser).
        """
        import hashlib
        import uuid

        sweep = self.client.get_run(self.parent_run_id).data.tags.get(Tags.SWEEP, "sweep")
        params = list(dict.fromkeys(params))
        view_id = hashlib.sha256(f"gmt-ray:{sweep}".encode()).hexdigest()[:32]
        searched, model, system = (str(uuid.uuid5(uuid.NAMESPACE_URL, f"{view_id}/{n}")) for n in ("s", "m", "y"))
        charts = [
            {"uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{view_id}/parallel")), "type": "PARALLEL",
             "runsCountToCompare": 1000, "metricSectionId": searched, "deleted": False, "isGenerated": False,
             "selectedParams": params, "selectedMetrics": [metric], "showAllRuns": True},
        ]
        numeric = [p for p in params if p != "mask.method"]
        if numeric:
            x = "train.lr" if "train.lr" in numeric else numeric[0]
            charts.append({"uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{view_id}/scatter")), "type": "SCATTER",
                           "runsCountToCompare": 1000, "metricSectionId": searched, "deleted": False,
                           "isGenerated": False, "xaxis": {"key": x, "type": "PARAM"},
                           "yaxis": {"key": metric, "type": "METRIC"}})
        sections = [
            {"uuid": searched, "name": f"{metric} by {', '.join(params)}", "display": True, "isReordered": True,
             "deleted": False, "isGenerated": False},
            {"uuid": model, "name": "Model metrics", "display": True, "isReordered": False, "deleted": False,
             "isGenerated": True},
            {"uuid": system, "name": "System metrics", "display": True, "isReordered": False, "deleted": False,
             "isGenerated": True},
        ]
        state = {
            "searchFilter": f"tags.`{Tags.SWEEP}` = '{sweep}' AND tags.`{Tags.ROLE}` = 'trial'",
            "orderByKey": f"metrics.`{metric}`", "orderByAsc": mode == "min", "startTime": "ALL",
            "lifecycleFilter": "Active", "datasetsFilter": [], "modelVersionFilter": "All Runs",
            "selectedColumns": ["attributes.`Dataset`", "attributes.`Models`",
                                *(f"params.`{p}`" for p in params), f"metrics.`{metric}`"],
            "runsHiddenMode": "SHOW_ALL", "compareRunCharts": charts, "compareRunSections": sections,
            "isAccordionReordered": True, "viewMaximized": False, "runListHidden": False,
            "useGroupedValuesInCharts": True, "hideEmptyCharts": True, "groupBy": None, "groupsExpanded": {},
        }
        now = int(time.time() * 1000)
        envelope = {"name": f"{sweep}: trials by {metric}", "createdAt": now, "updatedAt": now,
                    "state": json.dumps(state)}
        self.client.set_experiment_tag(self.experiment_id, f"{SAVED_VIEW_TAG_PREFIX}{view_id}", json.dumps(envelope))
        return view_id

    def finish(self, *, interrupted: bool, metric: str, best: Mapping[str, Any] | None) -> None:
        """Closes every trial still running and the parent, recording the best trial."""
        self.close_running(status="KILLED")
        if best is not None:
            self.client.log_metric(self.parent_run_id, f"best_{metric}", best["objective"])
            self.client.set_tag(self.parent_run_id, Tags.BEST_TRIAL, best["trial"])
            self.client.set_tag(self.parent_run_id, Tags.BEST_RUN_ID, best.get("run_id") or "")
        self.client.set_terminated(self.parent_run_id, status="KILLED" if interrupted else "FINISHED")

    # ------------------------------------------------------------------ trial runs

    def trials(self, where: str = "") -> list:
        """The sweep's trial runs (active ones), optionally filtered further."""
        parent = self.client.get_run(self.parent_run_id)
        condition = f"tags.`{Tags.PARENT}` = '{self.parent_run_id}'" + (f" and {where}" if where else "")
        return self.client.search_runs([parent.info.experiment_id], filter_string=condition, max_results=5000)

    def find_trial(self, trial_id: str):
        """The run already logged for this trial, or None."""
        found = self.trials(f"tags.`{Tags.TRIAL_ID}` = '{trial_id}'")
        return found[0] if found else None

    def open_trial(self, trial_id: str, name: str, params: Mapping[str, Any], datasets: Iterable = ()) -> str:
        """The run of a trial, RUNNING: reused if this trial already has one (a restarted trial).

        Args:
            datasets: what it trains, validates and is evaluated on (``gmt_ray.data.catalog.DatasetRef``),
                logged as the new run's dataset inputs.
        """
        existing = self.find_trial(trial_id)
        if existing is not None:
            self.client.update_run(existing.info.run_id, status="RUNNING")
            return existing.info.run_id
        parent = self.client.get_run(self.parent_run_id)
        run = self.client.create_run(
            parent.info.experiment_id, run_name=name,
            tags={Tags.PARENT: self.parent_run_id, Tags.TRIAL_ID: trial_id, Tags.ROLE: "trial",
                  Tags.SWEEP: parent.data.tags.get(Tags.SWEEP, "")},
        )
        _log_params(self.client, run.info.run_id, params)
        self.log_datasets(run.info.run_id, datasets)
        return run.info.run_id

    def log_datasets(self, run_id: str, datasets: Iterable) -> None:
        """Dataset inputs of a run (the runs table's Dataset column): name, digest, source and
        size of each ``DatasetRef``, with its context (train, validation, eval) as MLflow's tag."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        inputs = []
        for ref in datasets:
            schema = {"mlflow_colspec": [{"type": "string", "name": column} for column in ref.columns]}
            dataset = Dataset(name=ref.name, digest=ref.digest, source_type=ref.source_type,
                              source=json.dumps(ref.source), schema=json.dumps(schema) if ref.columns else None,
                              profile=json.dumps({"num_rows": ref.rows, "split": ref.split}))
            inputs.append(DatasetInput(dataset, tags=[InputTag(Tags.DATASET_CONTEXT, ref.context)]))
        if inputs:
            self.client.log_inputs(run_id, datasets=inputs)

    def log_step(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        """One report's metrics at ``step``, retried through an outage (see the module's docstring).

        Raises:
            TrackingUnavailable: the server did not take them within the retry window.
        """
        from mlflow.entities import Metric

        now = int(time.time() * 1000)  # once: every retry resends the same points, which the server keeps once
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        for start in range(0, len(batch), 1000):  # MLflow takes at most 1000 metrics a batch
            chunk = batch[start : start + 1000]
            self._retrying(run_id, f"step {step}", len(chunk), lambda chunk=chunk: self._log_batch(run_id, chunk))

    def last_logged_step(self, run_id: str, metric: str = "loss") -> int:
        """The highest step of ``metric`` already in the run (0: none)."""
        return max((m.step for m in self.client.get_metric_history(run_id, metric)), default=0)

    def log_eval_rows(self, run_id: str, directory: str | Path) -> list[str]:
        """The per-sample evaluation rows in ``directory/eval/*.jsonl`` as artifacts of the
        run: the JSONL itself and an MLflow table of it for the UI's artifact view.

        Each upload is retried through an outage and replaces what an earlier attempt left
        (a retried table is not appended twice). Inside one attempt MLflow's own HTTP retries
        apply (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``).

        Raises:
            TrackingUnavailable: some file did not reach the server within the retry window
                (every file is still tried; the error counts the rows of those that did not).
        """
        logged, failures = [], []
        for path in sorted((Path(directory) / "eval").glob("*.jsonl")):
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            try:
                self._retrying(run_id, f"eval/{path.name}", len(rows),
                               lambda path=path: self.client.log_artifact(run_id, str(path), artifact_path="eval"))
                if rows:
                    columns = {key: [row.get(key) for row in rows] for key in rows[0]}
                    self._retrying(run_id, f"eval/{path.stem}.table.json", len(rows), lambda columns=columns, path=path:
                                   self._log_table(run_id, columns, f"eval/{path.stem}.table.json"))
            except TrackingUnavailable as e:
                failures.append(e)
                continue
            logged.append(f"eval/{path.name}")
        if failures:
            raise TrackingUnavailable(run_id, ", ".join(e.what for e in failures), sum(e.points for e in failures),
                                      max(e.seconds for e in failures), failures[-1].error)
        return logged

    # ------------------------------------------------------------------ writes through an outage

    def _log_batch(self, run_id: str, metrics: list) -> None:
        """One attempt at a batch of metrics: at an HTTP server, one request with no retries of
        MLflow's own (the caller's window decides), else the store's own write."""
        if not self.tracking_uri.startswith(("http://", "https://")):
            self.client.log_batch(run_id, metrics=metrics)
            return
        from mlflow.protos.service_pb2 import LogBatch
        from mlflow.utils.credentials import get_default_host_creds
        from mlflow.utils.proto_json_utils import message_to_json
        from mlflow.utils.rest_utils import http_request, verify_rest_response

        endpoint = "/api/2.0/mlflow/runs/log-batch"  # as MLflow's RestStore.log_batch sends it
        body = json.loads(message_to_json(LogBatch(run_id=run_id, metrics=[m.to_proto() for m in metrics])))
        try:
            response = http_request(get_default_host_creds(self.tracking_uri), endpoint, "POST", json=body,
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

    def _log_table(self, run_id: str, columns: dict[str, list], artifact_file: str) -> None:
        """``MlflowClient.log_table`` that replaces the table rather than appending to one
        already there (a retried or repeated upload stays one copy)."""
        import pandas as pd
        from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS

        directory, _, name = artifact_file.rpartition("/")
        with tempfile.TemporaryDirectory() as tmp:
            # The format log_table writes and the UI's table view reads.
            pd.DataFrame(columns).to_json(Path(tmp) / name, orient="split", index=False, date_format="iso")
            self.client.log_artifact(run_id, str(Path(tmp) / name), artifact_path=directory or None)
        listed = json.loads(self.client.get_run(run_id).data.tags.get(MLFLOW_LOGGED_ARTIFACTS, "[]"))
        if {"path": artifact_file, "type": "table"} not in listed:
            listed.append({"path": artifact_file, "type": "table"})
            self.client.set_tag(run_id, MLFLOW_LOGGED_ARTIFACTS, json.dumps(listed))

    def _retrying(self, run_id: str, what: str, points: int, attempt: Callable[[], Any]) -> Any:
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
                if not _is_transient(e):
                    raise
                now = time.monotonic()
                with self._lock:
                    first = self._outage_since is None
                    if first:
                        self._outage_since = now
                    since = self._outage_since
                if first:
                    self._notify("tracking_retrying", uri=self.tracking_uri, window_s=self.retry_window_s,
                                 error=_short(e))
                deadline = since + self.retry_window_s
                if now >= deadline:
                    self._record_lost(run_id, what, points, now - since, e)
                    raise TrackingUnavailable(run_id, what, points, now - since, _short(e)) from e
                time.sleep(min(delay * random.uniform(0.8, 1.2), deadline - now))
                delay = min(delay * 2, 8.0)
                continue
            self._answered(started)
            return result

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
                lost = dict(self._lost[run_id])
            text = (f"{lost['points']} points NOT logged ({', '.join(lost['what'][:20])}"
                    f"{', ...' if len(lost['what']) > 20 else ''}): the tracking server did not take them "
                    f"in the {self.retry_window_s:.0f} s retry window ({lost['error']})")
            try:
                self.client.set_tag(run_id, Tags.TRACKING_LOST, text[:5000])
            except Exception:  # not back after all: the next write that gets through tries again
                with self._lock:
                    self._unrecorded.add(run_id)

    def _record_lost(self, run_id: str, what: str, points: int, seconds: float, error: BaseException) -> None:
        with self._lock:
            lost = self._lost.setdefault(run_id, {"points": 0, "what": [], "error": ""})
            lost["points"] += points
            lost["what"].append(what)
            lost["error"] = _short(error)
            self._unrecorded.add(run_id)
            self._outage_lost += points

    def lost(self, run_id: str | None = None) -> int:
        """How many points the server never took (of one run, or of all), in this process."""
        with self._lock:
            return sum(v["points"] for k, v in self._lost.items() if run_id is None or k == run_id)

    def _notify(self, event: str, **payload: Any) -> None:
        if self.notify is not None:
            self.notify(event, **payload)

    def finish_trial(self, run_id: str, *, objective: str, value: float | None, checkpoint: str | None,
                     model: str | None = None) -> None:
        """Records the trial's objective, its final checkpoint and exported model (as a logged
        model of the run, see ``log_model``); FINISHED."""
        self.client.set_tag(run_id, Tags.OBJECTIVE, f"{objective}={value}")
        if checkpoint is not None:
            self.client.set_tag(run_id, Tags.CHECKPOINT, checkpoint)
        if model is not None:
            self.client.set_tag(run_id, Tags.MODEL, model)
            self.log_model(run_id, model, objective=objective, value=value)
        self.client.set_terminated(run_id, status="FINISHED")

    def log_model(self, run_id: str, directory: str, *, objective: str | None = None,
                  value: float | None = None) -> str:
        """The trial's exported model (a Hugging Face directory) as a logged model of its run,
        its weights left where they are: an external model (MLflow stores only a small MLmodel
        file pointing nowhere) whose ``gmt_ray.model`` tag names the directory. The run's
        Models column shows it; ``models:/<id>`` and registry versions resolve to the directory
        (``resolve_model_uri``). Returns the model id; a run that has one keeps it.
        """
        from mlflow.entities import LoggedModelOutput, LoggedModelStatus

        run = self.client.get_run(run_id)
        if Tags.MODEL_ID in run.data.tags:
            return run.data.tags[Tags.MODEL_ID]
        params, tags = run.data.params, run.data.tags
        method = _method_label(params)
        name = _safe_model_name(f"{tags.get(Tags.SWEEP, 'sweep')}-{method}-{tags.get(Tags.TRIAL_ID, run_id[:8])}")
        model_tags = {Tags.MODEL_IS_EXTERNAL: "true", Tags.MODEL: str(directory), Tags.METHOD: method,
                      Tags.SWEEP: tags.get(Tags.SWEEP, ""), Tags.TRIAL_ID: tags.get(Tags.TRIAL_ID, "")}
        if objective is not None:
            model_tags[Tags.OBJECTIVE] = f"{objective}={value}"
        model = self.client.create_logged_model(
            run.info.experiment_id, name=name, source_run_id=run_id, tags=model_tags,
            params={k: str(v)[:6000] for k, v in params.items()}, model_type="transformers-causal-lm",
        )
        _write_external_model_spec(self.client, model)
        self.client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
        step = int(run.data.metrics.get("step", 0))
        self.client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step)])
        self.client.set_tag(run_id, Tags.MODEL_ID, model.model_id)
        return model.model_id

    def register_best(self, metric: str, mode: str, alias: str = BEST_ALIAS) -> dict[str, str]:
        """Registers the best finished trial of each method (by ``metric``) in the model
        registry: one registered model per sweep and method, ``<sweep>-<method>``, whose
        ``alias`` points to that trial's logged model. A method whose best is already the
        aliased version gets no new version. Returns ``{method: "models:/<name>@<alias>"}``.
        """
        import math

        from mlflow.exceptions import MlflowException

        sweep = self.client.get_run(self.parent_run_id).data.tags.get(Tags.SWEEP, "sweep")
        best: dict[str, Any] = {}
        for run in self.trials("attributes.status = 'FINISHED'"):
            value = run.data.metrics.get(metric)
            if Tags.MODEL_ID not in run.data.tags or value is None or not math.isfinite(value):
                continue
            method = run.data.params.get("mask.method", "?")
            if method in best:
                current = best[method].data.metrics[metric]
                if not (value < current if mode == "min" else value > current):
                    continue
            best[method] = run
        registered = {}
        for method, run in sorted(best.items()):
            name = registered_model_name(sweep, method)
            model_id = run.data.tags[Tags.MODEL_ID]
            try:
                self.client.get_registered_model(name)
            except MlflowException:
                self.client.create_registered_model(
                    name, tags={Tags.SWEEP: sweep, Tags.METHOD: method},
                    description=f"The best {method} trial of sweep {sweep!r} by {metric} ({mode}), alias @{alias}.",
                )
            try:
                current = self.client.get_model_version_by_alias(name, alias)
            except MlflowException:
                current = None
            if current is None or _version_model_id(current) != model_id:
                with _global_tracking_uri(self.tracking_uri):
                    version = self.client.create_model_version(
                        name, source=f"models:/{model_id}", run_id=run.info.run_id, model_id=model_id,
                        tags={metric: str(run.data.metrics[metric]), Tags.MODEL: run.data.tags.get(Tags.MODEL, "")},
                        description=f"weights: {run.data.tags.get(Tags.MODEL, '?')}",
                    )
                self.client.set_registered_model_alias(name, alias, version.version)
            registered[method] = f"models:/{name}@{alias}"
        return registered

    def fail_trial(self, run_id: str) -> None:
        """FAILED, unless the scheduler stopped it (the early-stop record came first)."""
        if Tags.EARLY_STOPPED not in self.client.get_run(run_id).data.tags:
            self.client.set_terminated(run_id, status="FAILED")

    def mark_early_stopped(self, trial_id: str, step: int | None) -> bool:
        """Closes the run of a trial the scheduler stopped before its final report.

        Whatever the dying trial managed to write (RUNNING, or FAILED as its fit() was cut
        short), a trial that ended without its objective tag was stopped early.
        """
        run = self.find_trial(trial_id)
        if run is None or Tags.OBJECTIVE in run.data.tags:
            return False
        self.client.set_tag(run.info.run_id, Tags.EARLY_STOPPED, f"step {step}")
        self.client.set_terminated(run.info.run_id, status="FINISHED")
        return True

    def close_running(self, status: str = "KILLED") -> int:
        """Marks every trial run still RUNNING with ``status``; returns how many."""
        running = self.trials("attributes.status = 'RUNNING'")
        for run in running:
            self.client.set_terminated(run.info.run_id, status=status)
        return len(running)

    def delete_unknown(self, known_trial_ids: Iterable[str]) -> int:
        """Soft-deletes the runs of trials outside ``known_trial_ids``; returns how many.

        A trial that started after Tune last saved the sweep's state (it saves once a second)
        and then lost its driver is unknown to the resumed sweep, which never continues it: its
        run would stay as a stray KILLED run beside the real ones. Deleted runs can be restored
        from the MLflow UI until ``mlflow gc`` purges them.
        """
        known = set(known_trial_ids)
        stray = [r for r in self.trials() if r.data.tags.get(Tags.TRIAL_ID) not in known]
        for run in stray:
            self.client.delete_run(run.info.run_id)
        return len(stray)


def _short(error: BaseException | str) -> str:
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


@contextlib.contextmanager
def _global_tracking_uri(tracking_uri: str):
    """MLflow's process-wide tracking URI set to ``tracking_uri`` for the block, then restored
    exactly (environment included).

    A registry used directly (SQLite, PostgreSQL; not through a server) looks up the logged
    model of a ``models:/<model_id>`` version source with a fresh ``MlflowClient()``, i.e.
    in the process-wide store, not in the store of the client that asked (a TODO in MLflow
    3.17's SqlAlchemyStore.create_model_version).
    """
    if tracking_uri.startswith(("http://", "https://")):
        yield  # the server resolves it in its own store
        return
    from mlflow.tracking._tracking_service import utils

    saved_uri, saved_env = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    utils._tracking_uri = tracking_uri
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    try:
        yield
    finally:
        utils._tracking_uri = saved_uri
        if saved_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved_env


def _method_label(params: Mapping[str, str]) -> str:
    method = params.get("mask.method", "model")
    return f"{method}-{params['mask.drop_strategy']}" if method == "drop" and "mask.drop_strategy" in params else method


def _safe_model_name(name: str) -> str:
    """A logged model's name: MLflow refuses / : . % and quotes in it."""
    for bad in "/:.%\"'":
        name = name.replace(bad, "_")
    return name


def registered_model_name(sweep: str, method: str) -> str:
    """The registry's name for a sweep's best model of one method: ``<sweep>-<method>``."""
    return f"{sweep}-{method}".replace("/", "_").replace(":", "_")


def _write_external_model_spec(mlflow_client, model) -> None:
    """The MLmodel file MLflow writes for an external model (as ``mlflow.create_external_model``
    does through the global client), so that the model can be registered."""
    import tempfile

    from mlflow.models.model import MLMODEL_FILE_NAME
    from mlflow.models.utils import get_external_mlflow_model_spec

    with tempfile.TemporaryDirectory() as directory:
        get_external_mlflow_model_spec(model).save(str(Path(directory) / MLMODEL_FILE_NAME))
        mlflow_client.log_model_artifacts(model.model_id, directory)


def experiment_url(tracking_uri: str, experiment_id: str, ui: str = "http://127.0.0.1:5000",
                   view: str | None = None) -> str:
    """The page of an experiment's training runs in MLflow's UI (``ui``: where ``mlflow ui``
    serves a local store; a tracking server's own address otherwise); with ``view`` (from
    ``SweepRuns.save_comparison_view``) that saved view, in the chart view.

    MLflow 3.17's UI opens an experiment in the view of its sidebar's workflow switch
    ("GenAI" by default, remembered per browser), whatever the experiment's kind tag says;
    ``workflowType=machine_learning`` in the address selects "Model training", whose
    experiment page is the runs table.
    """
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else ui.rstrip("/")
    shown = f"viewStateShareKey={view}&compareRunsMode=CHART&" if view else ""
    return f"{base}/#/experiments/{experiment_id}/runs?{shown}workflowType=machine_learning"


class SystemMetrics:
    """MLflow's own system-metrics monitor (CPU, memory, disk, network; GPUs where
    nvidia-ml-py finds them) logging this machine's figures to a run as ``system/...``
    metrics (``system/<node_id>/...`` with a node id) every ``interval_s`` seconds, from a
    thread of this process.

    A run shorter than one interval still gets one sample: ``stop()`` logs what was sampled.
    """

    def __init__(self, tracking_uri: str, run_id: str, *, node_id: str | None = None, interval_s: float = 10.0):
        self.tracking_uri, self.run_id, self.node_id, self.interval_s = tracking_uri, run_id, node_id, interval_s
        self._monitor = None
        self._first_step = 0

    def start(self) -> SystemMetrics:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        # resume_logging: steps continue after those already in the run (a retried trial, other nodes).
        self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=self.interval_s, samples_before_logging=1,
                                             resume_logging=True, node_id=self.node_id, tracking_uri=self.tracking_uri)
        self._first_step = getattr(self._monitor, "_logging_step", 0)
        self._monitor.start()
        return self

    def stop(self) -> None:
        monitor, self._monitor = self._monitor, None
        if monitor is None:
            return
        monitor.finish()
        # MLflow's monitor logs at the end of each interval only and drops the interval in
        # progress when it stops: a run shorter than one interval would have no system metrics.
        if getattr(monitor, "_logging_step", None) == self._first_step:
            try:
                if not monitor.aggregate_metrics():
                    monitor.collect_metrics()
                monitor.publish_metrics(monitor.aggregate_metrics())
                monitor.mlflow_logger.flush()
            except Exception:  # noqa: BLE001 - a last sample is a courtesy, never a failure
                pass


# ----------------------------------------------------------------------------- finding sweeps


def latest_sweep_run(tracking_uri: str, sweep: str):
    """The parent run of the latest sweep named ``sweep`` in any experiment (None: none)."""
    mlflow_client = client(tracking_uri)
    experiments = [e.experiment_id for e in mlflow_client.search_experiments()]
    found = mlflow_client.search_runs(
        experiments, filter_string=f"tags.`{Tags.SWEEP}` = '{sweep}' and tags.`{Tags.ROLE}` = 'sweep'",
        order_by=["attributes.start_time DESC"], max_results=1,
    ) if experiments else []
    return found[0] if found else None


def delete_sweep_runs(tracking_uri: str, sweep: str) -> int:
    """Soft-deletes every run (parents and trials) of the sweeps named ``sweep``; returns how many."""
    mlflow_client = client(tracking_uri)
    experiments = [e.experiment_id for e in mlflow_client.search_experiments()]
    found = mlflow_client.search_runs(experiments, filter_string=f"tags.`{Tags.SWEEP}` = '{sweep}'",
                                      max_results=5000) if experiments else []
    for run in found:
        mlflow_client.delete_run(run.info.run_id)
    return len(found)


def find_parent_run(tracking_uri: str, reference: str) -> str:
    """A sweep's parent run id from a run id or a sweep name (the latest sweep of that name).

    Raises:
        ValueError: no such run or sweep.
    """
    if len(reference) == 32 and all(c in "0123456789abcdef" for c in reference):
        try:
            run = client(tracking_uri).get_run(reference)
        except Exception:  # MlflowException: unknown id
            raise ValueError(f"no MLflow run {reference!r} in {tracking_uri}") from None
        if run.data.tags.get(Tags.ROLE) != "sweep":
            raise ValueError(f"run {reference} is not a sweep's parent run (it is a {run.data.tags.get(Tags.ROLE)!r})")
        return reference
    parent = latest_sweep_run(tracking_uri, reference)
    if parent is None:
        raise ValueError(f"no sweep named {reference!r} in {tracking_uri}")
    return parent.info.run_id


def init_from_by_method(config) -> dict[str, str]:
    """Where each method's trials start: ``train.init_from`` resolved (``mlflow:`` references
    looked up in the experiment's store), per method of the sweep (and ``mask.method``).

    A ``{method}`` in ``init_from`` stands for each trial's method, so that each method
    starts from its own earlier model, as the paper's DPO starts GMT-DPO from GMT-SFT:
    ``mlflow:best:<sft sweep>:{method}``. Empty when there is no ``init_from``.

    Raises:
        ValueError: as ``resolve_init_from``, for the first method that cannot be resolved.
    """
    spec = config.train.init_from
    if not spec:
        return {}
    uri = resolve_tracking_uri(config.mlflow.tracking_uri)
    methods = dict.fromkeys([config.mask.method, *config.search.methods])
    return {method: resolve_init_from(uri, spec.replace("{method}", method)) for method in methods}


def resolve_init_from(tracking_uri: str, spec: str, what: str = "train.init_from") -> str:
    """``train.init_from`` as a directory.

    ``mlflow:<run_id>`` is that trial's exported model (its final checkpoint where it has
    none: a sweep before models were exported); ``mlflow:best:<sweep>[:<method>]``
    the best finished trial (by that sweep's own objective) of the latest sweep of that
    name, optionally of one method; ``models:/NAME@ALIAS`` (``models:/NAME/VERSION``,
    ``models:/<model_id>``) a registered or logged model (``resolve_model_uri``). Anything
    else is taken as a directory.

    Raises:
        ValueError: no such run, sweep or model, or it has no checkpoint to start from.
    """
    if spec.startswith("models:/"):
        return resolve_model_uri(tracking_uri, spec, what=what)
    if not spec.startswith("mlflow:"):
        return spec
    store = local_store_path(tracking_uri)
    if store is not None and not store.exists():  # opening it would create an empty store
        raise ValueError(f"train.init_from={spec!r}: there is no MLflow store at {store} (run the sweep it names first, "
                         "or set mlflow.tracking_uri)")
    mlflow_client = client(tracking_uri)
    reference = spec[len("mlflow:"):]
    if reference.startswith("best:"):
        sweep, _, method = reference[len("best:"):].partition(":")
        parent = latest_sweep_run(tracking_uri, sweep)
        if parent is None:
            raise ValueError(f"{what}={spec!r}: no sweep named {sweep!r} in {tracking_uri} (run it first)")
        metric, mode = parent.data.params.get("search.metric", "val_loss"), parent.data.params.get("search.mode", "min")
        trials = [
            run for run in SweepRuns(tracking_uri, parent.info.run_id).trials("attributes.status = 'FINISHED'")
            if (Tags.MODEL in run.data.tags or Tags.CHECKPOINT in run.data.tags) and metric in run.data.metrics
            and (not method or run.data.params.get("mask.method") == method)
        ]
        if not trials:
            raise ValueError(f"{what}={spec!r}: sweep {sweep!r} has no finished trial"
                             f"{f' of method {method!r}' if method else ''} with a model and {metric!r}")
        run = (min if mode == "min" else max)(trials, key=lambda r: r.data.metrics[metric])
    else:
        try:
            run = mlflow_client.get_run(reference)
        except Exception:  # MlflowException for an unknown id
            raise ValueError(f"{what}={spec!r}: no MLflow run {reference!r} in {tracking_uri}") from None
    weights = run.data.tags.get(Tags.MODEL) or run.data.tags.get(Tags.CHECKPOINT)
    if not weights:
        raise ValueError(f"{what}={spec!r}: run {run.info.run_id} has no exported model or final checkpoint "
                         f"({Tags.MODEL} / {Tags.CHECKPOINT} tags)")
    return weights


def resolve_model_uri(tracking_uri: str, uri: str, what: str = "model") -> str:
    """The directory of a gmt-ray model named by an MLflow model URI: ``models:/NAME@ALIAS``
    or ``models:/NAME/VERSION`` (a registry version, e.g. ``models:/quickstart-gmt@best``) or
    ``models:/<model_id>`` (a logged model). gmt-ray's logged models are external: their
    ``gmt_ray.model`` tag names the exported Hugging Face directory.

    Raises:
        ValueError: no such model, alias or version, or it names no directory.
    """
    from mlflow.exceptions import MlflowException

    mlflow_client = client(tracking_uri)
    reference = uri[len("models:/"):].strip("/")
    try:
        if "@" in reference:
            name, _, alias = reference.partition("@")
            version = mlflow_client.get_model_version_by_alias(name, alias)
        elif "/" in reference:
            name, _, number = reference.partition("/")
            version = mlflow_client.get_model_version(name, number)
        else:
            version = None
            model_id = reference
    except MlflowException as error:
        raise ValueError(f"{what}={uri!r}: no such registered model version in {tracking_uri} "
                         f"({error.message.splitlines()[0]})") from None
    if version is not None:
        model_id = _version_model_id(version)
        if not model_id:
            source = version.source or ""
            if source.startswith("file://"):
                source = source[len("file://"):]
            if Path(source).is_dir():
                return source
            raise ValueError(f"{what}={uri!r}: version {version.version} of {version.name!r} has no logged model "
                             f"and its source {version.source!r} is not a directory")
    try:
        model = mlflow_client.get_logged_model(model_id)
    except MlflowException:
        raise ValueError(f"{what}={uri!r}: no logged model {model_id!r} in {tracking_uri}") from None
    directory = model.tags.get(Tags.MODEL)
    if not directory:
        raise ValueError(f"{what}={uri!r}: logged model {model_id} is not a gmt-ray model "
                         f"(no {Tags.MODEL} tag naming its directory)")
    return directory


def _version_model_id(version) -> str | None:
    """The logged model of a registry version: its ``model_id``, which a SQL registry does
    not return, else the ``models:/<model_id>`` it was created from."""
    if getattr(version, "model_id", None):
        return version.model_id
    source = version.source or ""
    if source.startswith("models:/") and not any(c in source[len("models:/"):] for c in "/@"):
        return source[len("models:/"):]
    return None
