"""MLflow at the edge: a parent run per sweep, a nested child run per trial.

Every process gets the same absolute tracking URI: Tune changes each trial's working
directory, and a relative ``sqlite:///mlflow.db`` would scatter runs across trial dirs.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY
from ray.tune.result import AUTO_RESULT_KEYS

__all__ = [
    "TrialStepLogger",
    "child_runs",
    "close_children",
    "delete_unknown_children",
    "resolve_init_from",
    "with_resolved_init_from",
    "log_eval_results",
    "resolve_tracking_uri",
    "start_parent_run",
    "trial_run",
]

CHECKPOINT_TAG = "gmt_ray.checkpoint"  # a finished trial's final checkpoint directory
PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "gmt_ray.trial_id"
SWEEP_TAG = "gmt_ray.sweep"


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


def artifact_root(tracking_uri: str) -> str | None:
    """Artifacts beside a local SQLite store, as an absolute file URI (None: server's default)."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri[len("sqlite:///"):]).with_name("mlartifacts").as_uri()
    return None


def client(tracking_uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def experiment_id(tracking_uri: str, name: str) -> str:
    mlflow_client = client(tracking_uri)
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return mlflow_client.create_experiment(name, artifact_location=artifact_root(tracking_uri))


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
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


def start_parent_run(tracking_uri: str, experiment_name: str, sweep_name: str, config_dict: dict,
                     config_yaml: str, run_id: str | None = None) -> str:
    """Creates (or, on resume, reopens) the sweep's parent run; returns its id."""
    mlflow_client = client(tracking_uri)
    if run_id is not None:
        mlflow_client.update_run(run_id, status="RUNNING")
        return run_id
    run = mlflow_client.create_run(
        experiment_id(tracking_uri, experiment_name), run_name=sweep_name,
        tags={SWEEP_TAG: sweep_name, "gmt_ray.role": "sweep", "mlflow.source.git.commit": _git_commit(),
              **_versions()},
    )
    run_id = run.info.run_id
    params = {k: str(v)[:6000] for k, v in _flatten(config_dict).items()}
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    for start in range(0, len(items), 100):
        mlflow_client.log_batch(run_id, params=items[start : start + 100])
    mlflow_client.log_text(run_id, config_yaml, "config.yaml")
    return run_id


def child_runs(tracking_uri: str, parent_run_id: str, where: str = "") -> list:
    """The trial runs of a sweep's parent run (active ones), optionally filtered further."""
    mlflow_client = client(tracking_uri)
    parent = mlflow_client.get_run(parent_run_id)
    condition = f"tags.`{PARENT_TAG}` = '{parent_run_id}'" + (f" and {where}" if where else "")
    return mlflow_client.search_runs([parent.info.experiment_id], filter_string=condition, max_results=5000)


def find_trial_run(tracking_uri: str, parent_run_id: str, trial_id: str):
    """The child run already logged for this trial, or None."""
    existing = child_runs(tracking_uri, parent_run_id, f"tags.`{TRIAL_TAG}` = '{trial_id}'")
    return existing[0] if existing else None


def trial_run(tracking_uri: str, parent_run_id: str, trial_id: str, trial_name: str, params: dict) -> str:
    """The child run of a trial: reused if this trial already has one (a restarted trial)."""
    mlflow_client = client(tracking_uri)
    parent = mlflow_client.get_run(parent_run_id)
    existing = find_trial_run(tracking_uri, parent_run_id, trial_id)
    if existing is not None:
        run_id = existing.info.run_id
        mlflow_client.update_run(run_id, status="RUNNING")
        return run_id
    run = mlflow_client.create_run(
        parent.info.experiment_id, run_name=trial_name,
        tags={PARENT_TAG: parent_run_id, TRIAL_TAG: trial_id, "gmt_ray.role": "trial",
              SWEEP_TAG: parent.data.tags.get(SWEEP_TAG, "")},
    )
    from mlflow.entities import Param

    mlflow_client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    return run.info.run_id


def delete_unknown_children(tracking_uri: str, parent_run_id: str, known_trial_ids: set[str]) -> int:
    """Soft-deletes the child runs of trials outside ``known_trial_ids``; returns how many.

    A trial that started after Tune last saved the sweep's state (it saves once a second)
    and then lost its driver is unknown to the resumed sweep, which never continues it: its
    run would stay as a stray KILLED run beside the real ones. Deleted runs can be restored
    from the MLflow UI until ``mlflow gc`` purges them.
    """
    mlflow_client = client(tracking_uri)
    stray = [r for r in child_runs(tracking_uri, parent_run_id) if r.data.tags.get(TRIAL_TAG) not in known_trial_ids]
    for run in stray:
        mlflow_client.delete_run(run.info.run_id)
    return len(stray)


def close_children(tracking_uri: str, parent_run_id: str, status: str = "KILLED") -> int:
    """Marks every child run still RUNNING with ``status``; returns how many."""
    mlflow_client = client(tracking_uri)
    runs = child_runs(tracking_uri, parent_run_id, "attributes.status = 'RUNNING'")
    for run in runs:
        mlflow_client.set_terminated(run.info.run_id, status=status)
    return len(runs)


class TrialStepLogger(Callback):
    """A Tune callback (runs in the sweep driver) logging every Train report of every trial
    to the trial's child run, and the evaluation rows of every reported checkpoint.

    Logging here rather than in a Ray Train callback keeps MLflow out of each trial's Train
    controller, a fresh process per trial that would otherwise import it (~2 CPU-s).
    """

    def __init__(self, tracking_uri: str, parent_run_id: str, storage_path: str):
        self.tracking_uri, self.parent_run_id, self.storage_path = tracking_uri, parent_run_id, storage_path
        self.run_ids: dict[str, str] = {}

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if "mlflow_run_id" in result:  # the trial's own closing report repeats its last metrics
            return
        run_id = self._run_id(trial.trial_id)
        if run_id is None:
            return
        from mlflow.entities import Metric

        step = int(result.get("step", 0))
        now = int(time.time() * 1000)
        values = [Metric(k, float(v), now, step) for k, v in result.items()
                  if k not in _TUNE_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)]
        client(self.tracking_uri).log_batch(run_id, metrics=values)
        if result.get(CHECKPOINT_PATH_KEY):
            import pyarrow.fs
            import ray.train

            filesystem = pyarrow.fs.FileSystem.from_uri(self.storage_path)[0] if "://" in self.storage_path else None
            log_eval_results(self.tracking_uri, run_id, ray.train.Checkpoint(result[CHECKPOINT_PATH_KEY], filesystem))

    def _run_id(self, trial_id: str) -> str | None:
        if trial_id not in self.run_ids:
            run = find_trial_run(self.tracking_uri, self.parent_run_id, trial_id)
            if run is None:
                return None
            self.run_ids[trial_id] = run.info.run_id
        return self.run_ids[trial_id]


_TUNE_KEYS = {*AUTO_RESULT_KEYS, "done", "trial_id", "experiment_tag"}


def log_eval_results(tracking_uri: str, run_id: str, checkpoint) -> list[str]:
    """The per-sample evaluation rows a checkpoint carries (``eval/*.jsonl``), as artifacts
    of the run: the JSONL itself and an MLflow table of it for the UI's artifact view."""
    logged = []
    mlflow_client = client(tracking_uri)
    with checkpoint.as_directory() as directory:
        for path in sorted((Path(directory) / "eval").glob("*.jsonl")):
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            mlflow_client.log_artifact(run_id, str(path), artifact_path="eval")
            if rows:
                columns = {key: [row.get(key) for row in rows] for key in rows[0]}
                mlflow_client.log_table(run_id, data=columns, artifact_file=f"eval/{path.stem}.table.json")
            logged.append(f"eval/{path.name}")
    return logged


def latest_sweep_run(tracking_uri: str, sweep: str):
    """The parent run of the latest sweep named ``sweep`` in any experiment (None: none)."""
    mlflow_client = client(tracking_uri)
    experiments = [e.experiment_id for e in mlflow_client.search_experiments()]
    runs = mlflow_client.search_runs(
        experiments, filter_string=f"tags.`{SWEEP_TAG}` = '{sweep}' and tags.`gmt_ray.role` = 'sweep'",
        order_by=["attributes.start_time DESC"], max_results=1,
    ) if experiments else []
    return runs[0] if runs else None


def with_resolved_init_from(config):
    """The experiment with ``train.init_from: mlflow:...`` replaced by the checkpoint
    directory it names (unchanged otherwise), looked up in the experiment's store.

    Raises:
        ValueError: as ``resolve_init_from``.
    """
    spec = config.train.init_from
    if not spec or not spec.startswith("mlflow:"):
        return config
    uri = resolve_tracking_uri(config.mlflow.tracking_uri)
    train = config.train.model_copy(update={"init_from": resolve_init_from(uri, spec)})
    return config.model_copy(update={"train": train})


def resolve_init_from(tracking_uri: str, spec: str) -> str:
    """``train.init_from`` as a directory.

    ``mlflow:<run_id>`` is that trial's final checkpoint; ``mlflow:best:<sweep>[:<method>]``
    the best finished trial (by that sweep's own objective) of the latest sweep of that
    name, optionally of one method. Anything else is taken as a directory.

    Raises:
        ValueError: no such run or sweep, or it has no checkpoint to start from.
    """
    if not spec.startswith("mlflow:"):
        return spec
    mlflow_client = client(tracking_uri)
    reference = spec[len("mlflow:"):]
    if reference.startswith("best:"):
        sweep, _, method = reference[len("best:"):].partition(":")
        parent = latest_sweep_run(tracking_uri, sweep)
        if parent is None:
            raise ValueError(f"train.init_from={spec!r}: no sweep named {sweep!r} in {tracking_uri} (run it first)")
        metric, mode = parent.data.params.get("search.metric", "val_loss"), parent.data.params.get("search.mode", "min")
        trials = [
            run for run in mlflow_client.search_runs(
                [parent.info.experiment_id],
                filter_string=f"tags.`{PARENT_TAG}` = '{parent.info.run_id}' and attributes.status = 'FINISHED'",
            )
            if CHECKPOINT_TAG in run.data.tags and metric in run.data.metrics
            and (not method or run.data.params.get("mask.method") == method)
        ]
        if not trials:
            raise ValueError(f"train.init_from={spec!r}: sweep {sweep!r} has no finished trial"
                             f"{f' of method {method!r}' if method else ''} with a checkpoint and {metric!r}")
        run = (min if mode == "min" else max)(trials, key=lambda r: r.data.metrics[metric])
    else:
        try:
            run = mlflow_client.get_run(reference)
        except Exception:  # MlflowException for an unknown id
            raise ValueError(f"train.init_from={spec!r}: no MLflow run {reference!r} in {tracking_uri}") from None
    checkpoint = run.data.tags.get(CHECKPOINT_TAG)
    if not checkpoint:
        raise ValueError(f"train.init_from={spec!r}: run {run.info.run_id} has no final checkpoint ({CHECKPOINT_TAG} tag)")
    return checkpoint
