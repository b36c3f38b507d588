"""python -m gmt_ray.train CONFIG.yaml [--set key=value ...]: one configuration on Ray Train."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from gmt_ray.config import ConfigError, Experiment, load_experiment, to_yaml
from gmt_ray.data.sources import DataError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gmt_ray.train", description=__doc__)
    parser.add_argument("config", nargs="?", help="experiment YAML (default: the built-in defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one option, e.g. --set train.lr=3e-4 (repeatable)")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--run-name", help="name of the run directory under storage_path")
    parser.add_argument("--dry-run", action="store_true", help="validate and print the resolved config; start nothing")
    parser.add_argument("--verbose", action="store_true", help="show Ray's own logs")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_experiment(args.config, args.overrides)
    except ConfigError as error:
        print(f"error: invalid configuration\n{error}", file=sys.stderr)
        return 2
    assert isinstance(config, Experiment)
    if args.dry_run:
        print(to_yaml(config))
        return 0

    from gmt_ray.train.recipe import prepare

    try:
        from gmt_ray.sweep.tracking import with_resolved_init_from

        config = with_resolved_init_from(config)
        prepared = prepare(config)
    except (DataError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    import ray

    from gmt_ray.train.launch import init_ray, make_trainer

    init_ray(args.address, verbose=args.verbose)
    run_name = args.run_name or f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(config.storage_path).resolve() / run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = run_dir / "metrics.jsonl"
    (run_dir / "config.yaml").write_text(to_yaml(config))
    trainer = make_trainer(
        config, run_name=run_name, prepared=ray.put(prepared), metrics_path=str(metrics_path),
        export_dir=str(run_dir / "model"),
    )
    start = time.time()
    result = trainer.fit()
    if result.error is not None:
        print(f"error: training failed: {result.error}", file=sys.stderr)
        return 1
    reports = [json.loads(line) for line in metrics_path.read_text().splitlines()] if metrics_path.exists() else []
    final = reports[-1] if reports else result.metrics or {}
    val = [r["val_loss"] for r in reports if "val_loss" in r]
    print(
        f"done in {time.time() - start:.0f} s: step {final.get('step')}, loss {final.get('loss', float('nan')):.4f}, "
        f"val_loss {val[-1] if val else float('nan'):.4f}, {final.get('tokens_per_s', 0):.0f} tokens/s, "
        f"kept {final.get('kept_fraction', float('nan')):.3f}"
        + "".join(f"\n{name} {value:.4f}" for name, value in final.items() if name.split("_")[0] in
                  ("arithmetic", "gsm8k", "math", "humaneval", "mbpp", "lm") and not name.endswith(("_low", "_high")))
        + f"\ncheckpoint: {result.checkpoint.path if result.checkpoint else 'none'}\n"
        f"model: {run_dir / 'model'}\nmetrics: {metrics_path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
