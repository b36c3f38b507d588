"""What every gmt-ray command shares: its config flags, and how a problem with the input ends
the command (one message, exit code 2). The checks before anything starts: ``preflight``.

    gmt-sweep / python -m gmt_ray.sweep        gmt-train / python -m gmt_ray.train
    gmt-evaluate / python -m gmt_ray.evaluate  gmt-report / python -m gmt_ray.report
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from gmt_ray.config import Experiment, load_experiment
from gmt_ray.errors import ConfigError, UsageError

__all__ = ["UsageError", "add_experiment_arguments", "experiment_from", "run_command"]


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


def run_command(command: Callable[[], int]) -> int:
    """Runs a command's body; bad input ends it with one message and exit code 2."""
    try:
        return command()
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
