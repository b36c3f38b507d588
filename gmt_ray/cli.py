"""What every gmt-ray command shares: its config flags, the checks that run before anything
starts, and how a problem with the input ends the command (one message, exit code 2).

    gmt-sweep / python -m gmt_ray.sweep        gmt-train / python -m gmt_ray.train
    gmt-evaluate / python -m gmt_ray.evaluate  gmt-report / python -m gmt_ray.report
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gmt_ray.config import ConfigError, Experiment, load_experiment, with_overrides

__all__ = ["Checked", "UsageError", "add_experiment_arguments", "check_hub", "check_storage", "experiment_from",
           "preflight", "run_command"]


class UsageError(ValueError):
    """Bad input: a config, a data file, a flag. The command prints it and exits with 2."""


def add_experiment_arguments(parser: argparse.ArgumentParser, *, file_required: bool) -> None:
    """The experiment file and ``--set`` overrides, as every command that trains takes them."""
    if file_required:
        parser.add_argument("experiment", help="experiment YAML, e.g. experiments/quickstart.yaml")
    else:
        parser.add_argument("experiment", nargs="?", help="experiment YAML (default: the built-in defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one option, e.g. --set train.lr=3e-4 or --set search.space[train.lr].high=1e-3 "
                             "(repeatable; values are YAML)")
    parser.add_argument("--address", help="Ray cluster: a head's GCS address host:port, auto (the cluster on this "
                        "machine), local (a fresh local Ray) or ray://host:port (default: RAY_ADDRESS, else the "
                        "running local cluster, else a fresh local Ray)")
    parser.add_argument("--verbose", action="store_true", help="show Ray's own logs")


def experiment_from(args: argparse.Namespace) -> Experiment:
    try:
        return load_experiment(args.experiment, args.overrides)
    except ConfigError as error:
        raise UsageError(f"invalid configuration\n{error}") from None


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


def preflight(config: Experiment, *, hub: bool = True) -> Checked:
    """Everything a run needs checked and loaded before Ray, MLflow or a directory starts:
    storage, the hub's models and data sets (``check_hub``; skipped with ``hub=False``),
    ``init_from`` (``mlflow:`` references resolved, per method), data and tokenizer, that the
    model keeps packed sequences apart (``data.packing``), and every evaluation file.

    Raises:
        UsageError: the first problem found, naming what and where.
    """
    from gmt_ray.data.prepare import check_eval_data, prepare
    from gmt_ray.data.sources import DataError
    from gmt_ray.tracking import init_from_by_method

    check_storage(config)
    if config.wandb.project is not None and importlib.util.find_spec("wandb") is None:
        raise UsageError(f"wandb.project={config.wandb.project!r} logs to Weights & Biases, which is not installed: "
                         "pip install wandb (or leave wandb.project out)")
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
    if problems:
        raise UsageError("\n".join(problems))
    return Checked(config, prepared, init_from)


def run_command(command: Callable[[], int]) -> int:
    """Runs a command's body; bad input ends it with one message and exit code 2."""
    try:
        return command()
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
