"""python -m gmt_ray.report EXPERIMENT_OR_PARENT_RUN [--tracking-uri URI] [--out DIR]

Reads a sweep's runs from MLflow and writes the paper's tables and figures as Markdown
and PNG, also logged under ``report/`` of the sweep's parent run (shown in the MLflow UI).
The sweep is named by its experiment file, its name, or its parent run id.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gmt_ray.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", help="experiment YAML, sweep name, or the sweep's MLflow parent run id")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: the experiment's, else ./mlflow.db)")
    parser.add_argument("--out", type=Path, help="output directory (default: reports/<sweep name>); or a .md file, "
                        "its figures then in the directory of its name (docs/results.md: docs/results/)")
    parser.add_argument("--no-log", action="store_true", help="do not log the report to the parent run")
    parser.add_argument("--half-width", type=float, default=0.03,
                        help="the verdicts say how many seeds would bring each interval to +-this (default 0.03: "
                        "+-3 points)")
    args = parser.parse_args(argv)
    if not 0 < args.half_width < 1:
        print(f"error: --half-width {args.half_width:g}: a fraction of the score, between 0 and 1", file=sys.stderr)
        return 2

    from gmt_ray import tracking
    from gmt_ray.config import ConfigError, load_experiment
    from gmt_ray.report import collect

    reference, configured_uri = args.sweep, None
    if args.sweep.endswith((".yaml", ".yml")):
        try:
            config = load_experiment(args.sweep)
        except ConfigError as error:
            print(f"error: invalid configuration\n{error}", file=sys.stderr)
            return 2
        reference, configured_uri = config.name, config.mlflow.tracking_uri
    uri = tracking.resolve_tracking_uri(args.tracking_uri or configured_uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        print(f"error: no MLflow store at {uri} (pass --tracking-uri)", file=sys.stderr)
        return 2
    if problem := tracking.store_problem(uri):
        print(f"error: {uri}: {problem} (pass --tracking-uri)", file=sys.stderr)
        return 2
    from mlflow.exceptions import MlflowException

    try:
        parent = tracking.find_parent_run(uri, reference)
        sweep = collect(uri, parent)
    except (ValueError, MlflowException) as error:
        print(f"error: {uri}: {error.message if isinstance(error, MlflowException) else error}", file=sys.stderr)
        return 2
    if not sweep.trials:
        print(f"error: sweep {sweep.name!r} (run {parent}) has no trial runs", file=sys.stderr)
        return 2

    from gmt_ray.report import write_report

    out = args.out or Path("reports") / sweep.name
    files = write_report(sweep, out, log=not args.no_log, target_half_width=args.half_width)
    confirmed = sweep.finished("confirm")
    print(f"report of sweep {sweep.name!r}: {len(sweep.finished())} search trials and {len(confirmed)} confirmation "
          f"runs finished, of {len(sweep.trials)}")
    print(f"  {files[0]}")
    for path in files[1:]:
        print(f"  {path}")
    if not args.no_log:
        print(f"  logged to MLflow run {parent} under report/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
