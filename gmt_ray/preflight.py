"""Everything a run needs, checked and loaded before Ray, MLflow or a directory starts:
storage, the MLflow store, the hub's models and data sets, ``init_from``, data and tokenizer, evaluation files.
Each problem is a ``UsageError`` naming what and where (the command exits with 2)."""

from __future__ import annotations

import importlib.util
import os
import tempfile
from dataclasses import dataclass
from typing import Any

from gmt_ray.config import Experiment, with_overrides
from gmt_ray.errors import UsageError

__all__ = ["Checked", "check_hub", "check_storage", "check_tracking", "check_wandb", "preflight"]


def check_storage(config: Experiment) -> None:
    """``storage_path`` can hold a run's directories (local storage only), checked without
    leaving anything behind.

    Raises:
        UsageError: naming the path and what is wrong with it.
    """
    local = config.local_storage()
    if local is None:
        return
    existing = next(p for p in (local, *local.parents) if p.exists())
    if not existing.is_dir():
        raise UsageError(f"storage_path={config.storage_path!r}: {existing} is not a directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".gmt-ray-probe-", dir=existing))
    except OSError as error:
        raise UsageError(f"storage_path={config.storage_path!r}: cannot create directories in {existing} "
                         f"({error.strerror})") from None


def check_tracking(config: Experiment) -> None:
    """The MLflow store takes runs: not a file store MLflow 3 refuses, a SQLite file in a
    directory, a tracking server that answers within a few seconds (MLflow's client would
    retry for minutes, after Ray had started).

    Raises:
        UsageError: naming ``mlflow.tracking_uri`` (or MLFLOW_TRACKING_URI) and what is wrong.
    """
    from gmt_ray.tracking import resolve_tracking_uri, store_problem

    uri = resolve_tracking_uri(config.mlflow.tracking_uri)
    problem = store_problem(uri)
    if problem:
        source = "mlflow.tracking_uri" if config.mlflow.tracking_uri else "MLFLOW_TRACKING_URI"
        raise UsageError(f"{source}={uri!r}: {problem}")


def check_wandb(config: Experiment) -> None:
    """Weights & Biases can take the runs when ``wandb.project`` names a project: wandb is
    installed, and it has an API key or logs offline. Ray's W&B logger looks for the key only
    once the sweep has started, and then fails with a traceback.

    Raises:
        UsageError: naming ``wandb.project`` and the ways to fix it.
    """
    project = config.wandb.project
    if project is None:
        return
    if importlib.util.find_spec("wandb") is None:
        raise UsageError(f"wandb.project={project!r} logs to Weights & Biases, which is not installed: "
                         "pip install wandb (or leave wandb.project out)")
    # What Ray's WandbLoggerCallback accepts (ray.air.integrations.wandb._set_api_key).
    if os.environ.get("WANDB_MODE") in {"offline", "disabled"} or os.environ.get("WANDB_API_KEY") \
            or os.environ.get("WANDB_SETUP_API_KEY_HOOK") or _wandb_logged_in():
        return
    raise UsageError(f"wandb.project={project!r} logs to Weights & Biases, but no W&B API key was found: run "
                     "`wandb login`, set WANDB_API_KEY, or set WANDB_MODE=offline to keep the W&B runs in local "
                     "files (or leave wandb.project out)")


def _wandb_logged_in() -> bool:
    """Whether ``wandb login`` stored a key (wandb reads it from ~/.netrc or its settings)."""
    import warnings

    import wandb

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # wandb.api is deprecated, and it is what Ray reads
        try:
            wandb.ensure_configured()
            return bool(wandb.api.api_key)
        except Exception:  # noqa: BLE001 - an unreadable settings file: no usable key either
            return False


def check_hub(config: Experiment) -> None:
    """The model and data set the run takes from the Hugging Face hub can be loaded here:
    in the local cache, or the hub answers (one bounded metadata request; nothing is
    downloaded). A run that substitutes offline stand-ins (a rehearsal) skips this.

    Raises:
        UsageError: naming each model or data set, that the hub could not be reached (or
            does not have it), and what to do instead.
    """
    from gmt_ray.hub import hub_problems

    problems = hub_problems(config)
    if problems:
        raise UsageError("\n".join(problems))


@dataclass
class Checked:
    """An experiment checked before anything starts, and what the checks loaded.

    Attributes:
        config: the experiment, ``train.init_from`` resolved for ``mask.method``.
        prepared: the tokenised data (``gmt_ray.data.prepare.Prepared``).
        init_from: where each method's trials start (empty: from ``model.name``).
    """

    config: Experiment
    prepared: Any
    init_from: dict[str, str]


def preflight(config: Experiment, *, hub: bool = True, sweep: bool = False) -> Checked:
    """Everything a run needs checked and loaded before Ray, MLflow or a directory starts:
    storage, the hub's models and data sets (``check_hub``; skipped with ``hub=False``),
    ``init_from`` (``mlflow:`` references resolved, per method), data and tokenizer, that the
    model keeps packed sequences apart (``data.packing``), and every evaluation file.

    With ``sweep``, also the MLflow store (``check_tracking``), and that every benchmark has
    validation problems and test problems both (a sweep's search chooses on the first, its
    confirmation reports the second).

    Raises:
        UsageError: the first problem found, naming what and where.
    """
    from gmt_ray.data.prepare import prepare
    from gmt_ray.data.sources import DataError
    from gmt_ray.eval.datasets import check_eval_data, evaluation_datasets
    from gmt_ray.tracking import init_from_by_method

    check_storage(config)
    if sweep:  # a sweep logs every trial to MLflow (python -m gmt_ray.train logs to files)
        check_tracking(config)
    check_wandb(config)
    if hub:
        check_hub(config)
    try:
        init_from = init_from_by_method(config)
        if init_from:  # the tokenizer (and a single run's weights) come from mask.method's
            config = with_overrides(config, {"train.init_from": init_from[config.mask.method]})
        prepared = prepare(config)
    except (DataError, OSError, ValueError) as error:  # OSError: transformers' "cannot load this model"
        raise UsageError(str(error)) from None
    if config.data.packing:
        from gmt_ray.train.isolation import packing_problem

        problem = packing_problem(config, prepared.tokenizer)
        if problem:
            raise UsageError(problem)
    problems = check_eval_data(config)
    if not problems:
        prepared.datasets += evaluation_datasets(config, prepared.test_records)
    if sweep and not problems:
        from gmt_ray.eval.splits import check_validation_split

        problems = check_validation_split(config.eval, config.chosen_on())
    if problems:
        raise UsageError("\n".join(problems))
    return Checked(config, prepared, init_from)
