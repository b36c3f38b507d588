"""Trained models in MLflow: each finished trial's exported model as an external logged model
of its run, each method's best in the model registry, and model URIs resolved back to the
directories that hold the weights."""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gmt_ray.names import label_of
from gmt_ray.tracking.store import client, on_conflict
from gmt_ray.tracking.tags import BEST_ALIAS, Tags

__all__ = ["log_model", "register_best", "registered_model_name", "resolve_model_uri"]


def registered_model_name(sweep: str, method: str) -> str:
    """The registry's name for a sweep's best model of one method: ``<sweep>-<method>``."""
    return f"{sweep}-{method}".replace("/", "_").replace(":", "_")


def log_model(mlflow_client, run_id: str, directory: str, *, method: str | None = None,
              objective: str | None = None, value: float | None = None) -> str:
    """The trial's exported model (a Hugging Face directory) as a logged model of its run,
    its weights left where they are: an external model (MLflow stores only a small MLmodel
    file pointing nowhere) whose ``gmt_ray.model`` tag names the directory. The run's
    Models column shows it; ``models:/<id>`` and registry versions resolve to the directory
    (``resolve_model_uri``). Returns the model id; a run that has one keeps it.

    Args:
        method: the trial's method label (``names.method_label``; default: from the run's params).
    """
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus

    run = mlflow_client.get_run(run_id)
    if Tags.MODEL_ID in run.data.tags:
        return run.data.tags[Tags.MODEL_ID]
    params, tags = run.data.params, run.data.tags
    method = method or label_of(params)
    name = _safe_model_name(f"{tags.get(Tags.SWEEP, 'sweep')}-{method}-{tags.get(Tags.TRIAL_ID, run_id[:8])}")
    model_tags = {Tags.MODEL_IS_EXTERNAL: "true", Tags.MODEL: str(directory), Tags.METHOD: method,
                  Tags.SWEEP: tags.get(Tags.SWEEP, ""), Tags.TRIAL_ID: tags.get(Tags.TRIAL_ID, "")}
    if objective is not None:
        model_tags[Tags.OBJECTIVE] = f"{objective}={value}"
    model = mlflow_client.create_logged_model(
        run.info.experiment_id, name=name, source_run_id=run_id, tags=model_tags,
        params={k: str(v)[:6000] for k, v in params.items()}, model_type="transformers-causal-lm",
    )
    _write_external_model_spec(mlflow_client, model)
    mlflow_client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    step = int(run.data.metrics.get("step", 0))
    mlflow_client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step)])
    mlflow_client.set_tag(run_id, Tags.MODEL_ID, model.model_id)
    return model.model_id


def register_best(mlflow_client, tracking_uri: str, sweep: str, finished: Iterable, metric: str, mode: str,
                  alias: str = BEST_ALIAS, base: dict[str, str] | None = None) -> dict[str, str]:
    """Registers the best of the ``finished`` search trials of each method (by ``metric``) in the
    model registry: one registered model per sweep and method label (``names.label_of``:
    ``gmt`` and ``gmt-update`` apart), ``<sweep>-<label>``, whose
    ``alias`` points to that trial's logged model. A method whose best is already the
    aliased version gets no new version. Returns ``{method: "models:/<name>@<alias>"}``.

    ``base``: the sweep's own params (its parent run's), under each trial's: a trial logs only
    what its group sets, and its label may rest on the sweep's (``mask.apply_to: update`` in
    the experiment file).

    Two sweeps of one name registering at once both find or create the registered model
    (``on_conflict``); MLflow's store numbers their versions itself.
    """
    from mlflow.exceptions import MlflowException

    best: dict[str, Any] = {}
    for run in finished:
        value = run.data.metrics.get(metric)
        # Confirmation runs repeat a chosen configuration on test problems: the choice is the search's.
        if run.data.tags.get(Tags.STAGE, "search") != "search":
            continue
        if Tags.MODEL_ID not in run.data.tags or value is None or not math.isfinite(value):
            continue
        method = label_of({**(base or {}), **run.data.params})
        if method in best:
            current = best[method].data.metrics[metric]
            if not (value < current if mode == "min" else value > current):
                continue
        best[method] = run
    registered = {}
    for method, run in sorted(best.items()):
        name = registered_model_name(sweep, method)
        model_id = run.data.tags[Tags.MODEL_ID]

        def find_or_create(name=name, method=method):
            try:
                return mlflow_client.get_registered_model(name)
            except MlflowException:
                return mlflow_client.create_registered_model(
                    name, tags={Tags.SWEEP: sweep, Tags.METHOD: method},
                    description=f"The best {method} trial of sweep {sweep!r} by {metric} ({mode}), alias @{alias}.",
                )

        on_conflict(find_or_create)
        try:
            current = mlflow_client.get_model_version_by_alias(name, alias)
        except MlflowException:
            current = None
        if current is None or _version_model_id(current) != model_id:
            with _global_tracking_uri(tracking_uri):
                version = mlflow_client.create_model_version(
                    name, source=f"models:/{model_id}", run_id=run.info.run_id, model_id=model_id,
                    tags={metric: str(run.data.metrics[metric]), Tags.MODEL: run.data.tags.get(Tags.MODEL, "")},
                    description=f"weights: {run.data.tags.get(Tags.MODEL, '?')}",
                )
            on_conflict(lambda name=name, version=version: mlflow_client.set_registered_model_alias(
                name, alias, version.version))
        registered[method] = f"models:/{name}@{alias}"
    return registered


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


def _safe_model_name(name: str) -> str:
    """A logged model's name: MLflow refuses / : . % and quotes in it."""
    for bad in "/:.%\"'":
        name = name.replace(bad, "_")
    return name


def _write_external_model_spec(mlflow_client, model) -> None:
    """The MLmodel file MLflow writes for an external model (as ``mlflow.create_external_model``
    does through the global client), so that the model can be registered."""
    from mlflow.models.model import MLMODEL_FILE_NAME
    from mlflow.models.utils import get_external_mlflow_model_spec

    with tempfile.TemporaryDirectory() as directory:
        get_external_mlflow_model_spec(model).save(str(Path(directory) / MLMODEL_FILE_NAME))
        mlflow_client.log_model_artifacts(model.model_id, directory)


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
