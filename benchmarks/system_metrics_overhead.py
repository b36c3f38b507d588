"""What MLflow's system-metrics monitor costs a trial's start-up: the same tiny sweep with
``mlflow.system_metrics`` on and off, in alternating rounds on one local Ray.

    python benchmarks/system_metrics_overhead.py [--rounds 3] [--trials 2] [--steps 5]

Per trial it reads from MLflow the time from the trial's run being opened (before its
TorchTrainer starts) to its first reported step: start-up (Train controller, worker,
imports, model) plus one step. With system metrics on, each trial's rank-0 worker also
imports MLflow and starts the monitor, in a background thread. Trials run one at a time
so that they do not compete with each other; rounds alternate so that a busy machine
affects both settings alike. Prints the median and mean per setting and their difference.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

TINY = {
    "model.tiny.hidden_size": 64, "model.tiny.intermediate_size": 172, "model.tiny.num_layers": 2,
    "model.tiny.vocab_size": 384, "data.arithmetic.train_size": 512, "data.arithmetic.validation_size": 64,
    "train.micro_batch_size": 16,
}


def start_up_seconds(args, workdir: Path, name: str, system_metrics: bool) -> list[float]:
    """Seconds from each trial's run start to its first logged step."""
    from gmt_ray.config import load_experiment
    from gmt_ray.data.prepare import prepare
    from gmt_ray.sweep.driver import run_sweep
    from gmt_ray.tracking import client

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    config = load_experiment(None, {
        "name": name, "storage_path": str(workdir / "runs"), "mlflow.tracking_uri": uri,
        "mlflow.system_metrics": system_metrics, **TINY,
        "train.max_steps": args.steps, "train.eval_every": args.steps, "train.log_every": 1,
        "train.checkpoint_every": args.steps,
        "search.methods": ["gmt"], "search.num_samples": args.trials, "search.max_concurrent_trials": 1,
        "search.space": {"train.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
    })
    result = run_sweep(config, prepare(config))
    assert not result.interrupted and not result.failed, result
    mlflow_client = client(uri)
    seconds = []
    for row in result.rows:
        run = mlflow_client.get_run(row["run_id"])
        first = min(m.timestamp for m in mlflow_client.get_metric_history(row["run_id"], "loss"))
        seconds.append((first - run.info.start_time) / 1000)
        has_system = any(k.startswith("system/") for k in run.data.metrics)
        assert has_system == system_metrics, f"system metrics {has_system} with mlflow.system_metrics={system_metrics}"
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=2, help="trials per sweep")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()

    from gmt_ray.cluster import ray_session

    times: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as directory, ray_session():
        # One sweep first to warm caches (imports, tokenizer training) for both settings alike.
        start_up_seconds(args, Path(directory), "warm-up", False)
        for round_ in range(args.rounds):
            for setting in ((False, True) if round_ % 2 == 0 else (True, False)):
                times[setting] += start_up_seconds(args, Path(directory), f"r{round_}-{int(setting)}", setting)
    for setting in (False, True):
        values = times[setting]
        print(f"system metrics {'on ' if setting else 'off'}: start-up to first step, {len(values)} trials: "
              f"median {statistics.median(values):.1f} s, mean {statistics.mean(values):.1f} s "
              f"({', '.join(f'{v:.1f}' for v in values)})")
    difference = statistics.median(times[True]) - statistics.median(times[False])
    print(f"difference of medians: {difference:+.1f} s per trial "
          f"({difference / statistics.median(times[False]):+.0%})")


if __name__ == "__main__":
    main()
