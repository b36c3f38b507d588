"""Finding what earlier sweeps left: a sweep's parent run by name or id, and the weights a run
starts from (``train.init_from``: a directory, ``mlflow:`` references, model URIs)."""

from __future__ import annotations

from gmt_ray.names import label_of
from gmt_ray.tracking.models import resolve_model_uri
from gmt_ray.tracking.runs import SweepRuns
from gmt_ray.tracking.store import client, local_store_path, resolve_tracking_uri
from gmt_ray.tracking.tags import Tags

__all__ = ["delete_sweep_runs", "find_parent_run", "init_from_by_method", "latest_sweep_run", "resolve_init_from"]


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
        where = "--tracking-uri" if what.startswith("--") else "mlflow.tracking_uri"
        raise ValueError(f"{what}={spec!r}: there is no MLflow store at {store} (run the sweep it names first, "
                         f"or set {where})")
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
            and run.data.tags.get(Tags.STAGE, "search") == "search"
        ]
        if method:
            # A method label as reports show it (gmt-update apart from gmt; a trial's params
            # over the sweep's); a bare method where no trial has that label (drop, with
            # several drop strategies: the best of them).
            trials = [run for run in trials if label_of({**parent.data.params, **run.data.params}) == method] or \
                [run for run in trials if run.data.params.get("mask.method") == method]
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
