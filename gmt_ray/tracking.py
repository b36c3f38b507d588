"""MLflow, in one place: a parent run per sweep, a nested child run per trial.

Every CLI and the report read and write MLflow through this module; it imports neither
Ray nor Tune. ``SweepRuns`` owns a sweep's runs (the parent and its trials) and ``Tags``
names every tag gmt-ray writes.

Every process gets the same absolute tracking URI: Tune changes each trial's working
directory, and a relative ``sqlite:///mlflow.db`` would scatter runs across trial dirs.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "SweepRuns",
    "Tags",
    "artifact_root",
    "client",
    "delete_sweep_runs",
    "find_parent_run",
    "init_from_by_method",
    "latest_sweep_run",
    "resolve_init_from",
    "resolve_tracking_uri",
]


class Tags:
    """Every MLflow tag gmt-ray writes or reads."""

    PARENT = "mlflow.parentRunId"  # MLflow's own: the UI nests a run under this parent
    GIT_COMMIT = "mlflow.source.git.commit"
    ROLE = "gmt_ray.role"  # "sweep" (a parent run) or "trial"
    SWEEP = "gmt_ray.sweep"  # the sweep's name, on the parent and every trial
    TRIAL_ID = "gmt_ray.trial_id"  # Tune's trial id
    CHECKPOINT = "gmt_ray.checkpoint"  # a finished trial's final checkpoint directory
    MODEL = "gmt_ray.model"  # a finished trial's exported model (Hugging Face directory)
    OBJECTIVE = "gmt_ray.objective"  # "<metric>=<value>": written by the trial's last report
    EARLY_STOPPED = "gmt_ray.early_stopped"  # "step N": stopped by the scheduler
    BEST_TRIAL = "gmt_ray.best_trial"
    BEST_RUN_ID = "gmt_ray.best_run_id"


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

    Cheap to pickle (a URI and a run id): Tune ships it to trial drivers and callbacks,
    each of which opens its own client.
    """

    def __init__(self, tracking_uri: str, parent_run_id: str):
        self.tracking_uri, self.parent_run_id = tracking_uri, parent_run_id
        self._client = None

    def __getstate__(self):
        return {"tracking_uri": self.tracking_uri, "parent_run_id": self.parent_run_id}

    def __setstate__(self, state):
        self.__init__(state["tracking_uri"], state["parent_run_id"])

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
        run = mlflow_client.create_run(
            experiment_id, run_name=sweep_name,
            tags={Tags.SWEEP: sweep_name, Tags.ROLE: "sweep", Tags.GIT_COMMIT: _git_commit(), **_versions()},
        )
        runs = cls(tracking_uri, run.info.run_id)
        _log_params(mlflow_client, runs.parent_run_id, _flatten(config))
        mlflow_client.log_text(runs.parent_run_id, config_yaml, "config.yaml")
        return runs

    @classmethod
    def reopen(cls, tracking_uri: str, parent_run_id: str) -> SweepRuns:
        """The parent run of an interrupted sweep, RUNNING again."""
        runs = cls(tracking_uri, parent_run_id)
        runs.client.update_run(parent_run_id, status="RUNNING")
        return runs

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

    def open_trial(self, trial_id: str, name: str, params: Mapping[str, Any]) -> str:
        """The run of a trial, RUNNING: reused if this trial already has one (a restarted trial)."""
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
        return run.info.run_id

    def log_step(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def last_logged_step(self, run_id: str, metric: str = "loss") -> int:
        """The highest step of ``metric`` already in the run (0: none)."""
        return max((m.step for m in self.client.get_metric_history(run_id, metric)), default=0)

    def log_eval_rows(self, run_id: str, directory: str | Path) -> list[str]:
        """The per-sample evaluation rows in ``directory/eval/*.jsonl`` as artifacts of the
        run: the JSONL itself and an MLflow table of it for the UI's artifact view."""
        logged = []
        for path in sorted((Path(directory) / "eval").glob("*.jsonl")):
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            self.client.log_artifact(run_id, str(path), artifact_path="eval")
            if rows:
                columns = {key: [row.get(key) for row in rows] for key in rows[0]}
                self.client.log_table(run_id, data=columns, artifact_file=f"eval/{path.stem}.table.json")
            logged.append(f"eval/{path.name}")
        return logged

    def finish_trial(self, run_id: str, *, objective: str, value: float | None, checkpoint: str | None,
                     model: str | None = None) -> None:
        """Records the trial's objective, its final checkpoint and exported model; FINISHED."""
        self.client.set_tag(run_id, Tags.OBJECTIVE, f"{objective}={value}")
        if checkpoint is not None:
            self.client.set_tag(run_id, Tags.CHECKPOINT, checkpoint)
        if model is not None:
            self.client.set_tag(run_id, Tags.MODEL, model)
        self.client.set_terminated(run_id, status="FINISHED")

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


def resolve_init_from(tracking_uri: str, spec: str) -> str:
    """``train.init_from`` as a directory.

    ``mlflow:<run_id>`` is that trial's exported model (its final checkpoint where it has
    none: a sweep before models were exported); ``mlflow:best:<sweep>[:<method>]``
    the best finished trial (by that sweep's own objective) of the latest sweep of that
    name, optionally of one method. Anything else is taken as a directory.

    Raises:
        ValueError: no such run or sweep, or it has no checkpoint to start from.
    """
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
            raise ValueError(f"train.init_from={spec!r}: no sweep named {sweep!r} in {tracking_uri} (run it first)")
        metric, mode = parent.data.params.get("search.metric", "val_loss"), parent.data.params.get("search.mode", "min")
        trials = [
            run for run in SweepRuns(tracking_uri, parent.info.run_id).trials("attributes.status = 'FINISHED'")
            if (Tags.MODEL in run.data.tags or Tags.CHECKPOINT in run.data.tags) and metric in run.data.metrics
            and (not method or run.data.params.get("mask.method") == method)
        ]
        if not trials:
            raise ValueError(f"train.init_from={spec!r}: sweep {sweep!r} has no finished trial"
                             f"{f' of method {method!r}' if method else ''} with a model and {metric!r}")
        run = (min if mode == "min" else max)(trials, key=lambda r: r.data.metrics[metric])
    else:
        try:
            run = mlflow_client.get_run(reference)
        except Exception:  # MlflowException for an unknown id
            raise ValueError(f"train.init_from={spec!r}: no MLflow run {reference!r} in {tracking_uri}") from None
    weights = run.data.tags.get(Tags.MODEL) or run.data.tags.get(Tags.CHECKPOINT)
    if not weights:
        raise ValueError(f"train.init_from={spec!r}: run {run.info.run_id} has no exported model or final checkpoint "
                         f"({Tags.MODEL} / {Tags.CHECKPOINT} tags)")
    return weights
