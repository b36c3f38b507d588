"""python -m gmt_ray.sweep EXPERIMENT.yaml [--set key=value ...] [--dry-run [--cluster FILE]] [--resume] [--address ADDR]"""

from __future__ import annotations

import argparse
import sys

from gmt_ray import cli


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gmt_ray.sweep",
        description="Run a sweep: Ray Tune + Optuna over gmt-ray trials, every trial logged to MLflow.",
    )
    cli.add_experiment_arguments(parser, file_required=True)
    parser.add_argument("--dry-run", action="store_true", help="validate everything and print the plan; start nothing")
    parser.add_argument("--cluster", metavar="CLUSTER_YAML",
                        help="with --dry-run: plan for the most this cluster file can start (a Ray cluster "
                             "launcher file, or a KubeRay RayJob or RayCluster)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted sweep of the same name")
    parser.add_argument("--rehearse", action="store_true",
                        help="run the experiment's whole pipeline at toy scale first (offline stand-ins where the hub "
                             "cannot be reached); see docs/rehearsals.md")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return cli.run_command(lambda: _sweep(args))


def _sweep(args: argparse.Namespace) -> int:
    from gmt_ray.sweep import run
    from gmt_ray.sweep.console import SweepConsole

    if sum((args.dry_run, args.resume, args.rehearse)) > 1:
        raise cli.UsageError("--dry-run, --resume and --rehearse are three different runs: give one")
    if args.rehearse:
        from gmt_ray.sweep.rehearse import print_rehearsal, rehearse

        console = SweepConsole()
        rehearsal = rehearse(args.experiment, args.overrides, address=args.address, console=console,
                             verbose=args.verbose)
        print_rehearsal(rehearsal, console.console)
        return 0 if rehearsal.ok else 1
    config = cli.experiment_from(args)
    if args.dry_run:
        from gmt_ray.sweep.plan import dry_run

        text, warnings = dry_run(config, cluster_file=args.cluster, address=args.address)
        print(text)
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
        return 0
    if args.cluster:
        raise cli.UsageError("--cluster plans a sweep: it goes with --dry-run")
    console = SweepConsole()
    result = run(config, resume=args.resume, address=args.address, console=console, verbose=args.verbose)
    console.summary(result, config.search.metric, config.search.mode)
    if result.interrupted:
        return 130
    if result.failed:
        print(f"error: {len(result.failed)} trial(s) failed: {', '.join(result.failed)} "
              f"(their errors are under {result.root})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
