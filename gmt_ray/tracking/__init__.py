"""MLflow, in one place: a parent run per sweep, a nested child run per trial.

Every CLI and the report read and write MLflow through this package; it imports neither Ray
nor Tune. Its modules, each with one job:

    tags.py            every tag gmt-ray writes (``Tags``) and the values it gives them
    store.py           the tracking URI every process shares, clients, writes that race (``on_conflict``)
    outage.py          step metrics and evaluation rows retried through a server outage
    runs.py            ``SweepRuns``: the sweep's parent run and its trials' runs
    models.py          logged models, the registry, model URIs back to directories
    views.py           the MLflow UI's saved view of a sweep, and links to it
    lookups.py         sweeps by name or id, ``train.init_from`` references
    system_metrics.py  MLflow's system-metrics monitor in a run

Writes that two trials (or two sweeps on one store) can make at once, and why each is safe
(``tests/tracking/test_concurrency.py`` starts many at once on SQLite and PostgreSQL):

    experiment          get-or-create, retried when another sweep created it first (on_conflict)
    experiment tags     the kind and the saved views: MLflow's upsert checks, then inserts, so two
                        writers of one key race; the loser writes again, as an update (on_conflict)
    parent run          a new run of its own (a fresh id) per sweep
    trial run           a new run per trial; params, metrics and tags go to its own run only
    datasets            one row per (experiment, name, digest), created by the first run that logs
                        it; a run that loses the insert race links the winner's (on_conflict)
    logged models       a new model (a fresh id) per trial, linked to its own run
    registered models   get-or-create per (sweep, method), retried on a lost race (on_conflict);
                        versions are numbered by MLflow's store; the alias is an upsert (on_conflict)
    parent tags         written by the sweep's driver alone
"""

from gmt_ray.tracking.lookups import (
                                      delete_sweep_runs,
                                      find_parent_run,
                                      init_from_by_method,
                                      latest_sweep_run,
                                      resolve_init_from,
)
from gmt_ray.tracking.models import registered_model_name, resolve_model_uri
from gmt_ray.tracking.outage import DEFAULT_RETRY_WINDOW_S, TrackingUnavailable
from gmt_ray.tracking.runs import SweepRuns
from gmt_ray.tracking.store import (
    artifact_root,
    client,
    local_store_path,
    resolve_tracking_uri,
    store_problem,
)
from gmt_ray.tracking.system_metrics import SystemMetrics
from gmt_ray.tracking.tags import EXPERIMENT_KIND, Tags
from gmt_ray.tracking.views import experiment_url

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
    "local_store_path",
    "registered_model_name",
    "resolve_init_from",
    "resolve_model_uri",
    "resolve_tracking_uri",
    "store_problem",
]
