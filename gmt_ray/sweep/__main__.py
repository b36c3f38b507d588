"""python -m gmt_ray.sweep EXPERIMENT.yaml [--set key=value ...] [--dry-run] [--resume] [--address ADDR] [--verbose]"""

from __future__ import annotations

import argparse
import json
import os
import sys

from gmt_ray.config import ConfigError, Experiment, load_experiment, to_yaml
from gmt_ray.data.sources import DataError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gmt_ray.sweep",
        description="Run a sweep: Ray Tune + Optuna over gmt-ray trials, every trial logged to MLflow.",
    )
    parser.add_argument("experiment", help="experiment YAML, e.g. experiments/quickstart.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one option, e.g. --set search.num_samples=2 (repeatable)")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate everything and print the plan; start nothing")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted sweep of the same name")
    parser.add_argument("--cluster", metavar="CLUSTER_YAML",
                        help="with --dry-run: plan for the most this Ray cluster launcher file can start")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--verbose", action="store_true", help="show Ray's own logs")
    return parser


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_experiment(args.experiment, args.overrides)
    except ConfigError as error:
        return _fail(f"invalid configuration\n{error}")
    assert isinstance(config, Experiment)

    from gmt_ray.sweep.driver import sweep_paths
    from gmt_ray.sweep.plan import cluster_capacity, concurrency, describe_plan

    paths = sweep_paths(config)
    if args.resume and not paths.state.exists():
        return _fail(f"--resume: no sweep named {config.name!r} at {paths.root}")
    if not args.resume and not args.dry_run and paths.root.exists():
        return _fail(
            f"a sweep named {config.name!r} already exists at {paths.root}: add --resume to continue it, "
            f"or give this one another name with --set name=..."
        )

    # Data problems are input problems too: find them before anything starts. A dry run
    # on a laptop cannot reach a hub or the cluster's files: it says what it left unchecked.
    from gmt_ray.train.recipe import check_eval_data, prepare

    unchecked: list[str] = []
    try:
        if not args.dry_run:
            from gmt_ray.sweep.tracking import with_resolved_init_from

            config = with_resolved_init_from(config)
        if args.dry_run and (config.data.source == "hub" or config.train.init_from or config.model.name not in
                             ("tiny", "smollm2")):
            unchecked.append("data, model and init_from are loaded at run time (hub or cluster storage)")
            unchecked += [f"missing here: {problem}" for problem in check_eval_data(config, raise_errors=False)]
            prepared = None
        else:
            prepared = prepare(config)
            check_eval_data(config)
    except (DataError, FileNotFoundError, ValueError) as error:
        return _fail(str(error))

    plan = describe_plan(config)
    if args.dry_run:
        address = args.address or os.environ.get("RAY_ADDRESS")
        if args.cluster:
            try:
                cluster, where = cluster_capacity(args.cluster), f"{args.cluster} at max_workers"
            except (OSError, ValueError) as error:
                return _fail(f"--cluster: {error}")
        elif address:
            from gmt_ray.train.launch import init_ray

            init_ray(address)
            import ray

            cluster, where = ray.cluster_resources(), f"cluster at {address}"
        else:
            from gmt_ray.train.launch import local_cpus

            cluster, where = {"CPU": float(local_cpus())}, "this machine (a local Ray)"
        at_once = concurrency(plan["per_trial"], cluster, config.search.max_concurrent_trials)
        print(to_yaml(config))
        print(json.dumps({**plan, "cluster": {where: cluster}, "concurrent_trials": at_once,
                          **({"not_checked": unchecked} if unchecked else {})}, indent=2))
        if at_once == 0:
            print(f"warning: one trial needs {plan['per_trial']}, more than {where} has", file=sys.stderr)
        return 0

    from gmt_ray.sweep.console import SweepConsole
    from gmt_ray.sweep.driver import run_sweep
    from gmt_ray.train.launch import init_ray

    init_ray(args.address, verbose=args.verbose)
    console = SweepConsole()
    try:
        summary = run_sweep(config, prepared, resume=args.resume, console=console, config_yaml=to_yaml(config))
    finally:
        console.stop()
    console.summary(summary, config.search.metric, config.search.mode)
    if summary["interrupted"]:
        return 130
    failed = [row["trial"] for row in summary["rows"] if row["status"] == "ERROR"]
    if failed:
        print(f"error: {len(failed)} trial(s) failed: {', '.join(failed)} (their errors are under {summary['root']})",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
