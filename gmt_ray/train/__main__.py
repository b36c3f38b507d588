"""python -m gmt_ray.train [CONFIG.yaml] [--set key=value ...]: one configuration on Ray Train."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import threading
import time
from pathlib import Path

from gmt_ray import cli
from gmt_ray.preflight import preflight


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gmt_ray.train", description=__doc__)
    cli.add_experiment_arguments(parser, file_required=False)
    parser.add_argument("--run-name", help="name of the run directory under storage_path")
    parser.add_argument("--dry-run", action="store_true", help="validate the config and print it resolved; start nothing (data, model and files are "
                        "checked when it runs; the sweep's --dry-run checks them too)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return cli.run_command(lambda: _train(args))


def _train(args: argparse.Namespace) -> int:
    from gmt_ray.config import to_yaml

    config = cli.experiment_from(args)
    if args.dry_run:
        print(to_yaml(config))
        return 0
    checked = preflight(config)
    config, prepared = checked.config, checked.prepared

    import ray

    from gmt_ray.cluster import ray_session
    from gmt_ray.names import evaluation_scores
    from gmt_ray.train.launch import make_trainer

    run_name = args.run_name or f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if run_name in (".", "..") or "/" in run_name or "\\" in run_name:
        raise cli.UsageError(f"--run-name {run_name!r}: a directory name under storage_path, without a path")
    run_dir = config.local_storage() / run_name if config.local_storage() else None
    if run_dir is None:
        raise cli.UsageError("python -m gmt_ray.train writes its metrics and model locally: give a local storage_path")
    if run_dir.exists():  # its metrics, config and model would be overwritten
        raise cli.UsageError(f"--run-name {run_name!r}: a run of that name is at {run_dir}: give another name")
    with ray_session(args.address, verbose=args.verbose, say=print):
        run_dir.mkdir(parents=True, exist_ok=True)
        metrics_path = run_dir / "metrics.jsonl"
        (run_dir / "config.yaml").write_text(to_yaml(config))
        trainer = make_trainer(config, run_name=run_name, prepared=ray.put(prepared), metrics_path=str(metrics_path),
                               export_dir=str(run_dir / "model"))
        start = time.time()
        with _followed(metrics_path, config):
            result = trainer.fit()
    if result.error is not None:
        print(f"error: training failed: {result.error}", file=sys.stderr)
        return 1
    reports = [json.loads(line) for line in metrics_path.read_text().splitlines()] if metrics_path.exists() else []
    final = reports[-1] if reports else result.metrics or {}
    val = [r["val_loss"] for r in reports if "val_loss" in r]
    print(
        f"done in {time.time() - start:.0f} s: step {final.get('step')}, loss {final.get('loss', math.nan):.4f}, "
        f"val_loss {val[-1] if val else math.nan:.4f}, {final.get('tokens_per_s', 0):.0f} tokens/s, "
        f"kept {final.get('kept_fraction', math.nan):.3f}"
        + "".join(f"\n{name} {value:.4f}" for name, value in evaluation_scores(final, objective="").items())
        + f"\ncheckpoint: {result.checkpoint.path if result.checkpoint else 'none'}\n"
        f"model: {run_dir / 'model'}\nmetrics: {metrics_path}"
    )
    return 0


@contextlib.contextmanager
def _followed(metrics_path: Path, config):
    """A progress bar (stderr) fed by the reports rank 0 appends to ``metrics_path`` while
    the block runs: ``train  step 20/60  loss 1.2345  12s in  ~24s left``."""
    from gmt_ray.progress import StepProgress

    last_step = min(config.train.max_steps, config.train.stop_after_steps or config.train.max_steps)
    stop = threading.Event()
    with StepProgress("train", total=last_step, unit="step", info="starting") as progress:

        def follow():
            offset = 0
            while True:
                finished = stop.wait(0.5)
                try:
                    with open(metrics_path, "rb") as file:
                        file.seek(offset)
                        data = file.read()
                except FileNotFoundError:
                    data = b""
                complete = data[: data.rfind(b"\n") + 1]  # a line still being written waits
                offset += len(complete)
                for line in complete.decode().splitlines():
                    report = json.loads(line)
                    progress.initial = int(report.get("resumed_from_step") or 0)  # the pace counts this run's steps
                    info = f"loss {report['loss']:.4f}" if isinstance(report.get("loss"), (int, float)) else ""
                    if "val_loss" in report:
                        info += f"  val_loss {report['val_loss']:.4f}"
                    progress.update(int(report.get("step", 0)), info=info)
                if finished:
                    return

        thread = threading.Thread(target=follow, daemon=True, name="gmt-ray-train-progress")
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
