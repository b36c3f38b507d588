"""A sweep's runs read back from MLflow: its trials (search and confirmation stages) with their
params, last metrics and throughput, and the per-problem scores of its confirmation runs."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gmt_ray.names import label_of
from gmt_ray.report.verdicts import Arm, arm_of

__all__ = ["Sweep", "Trial", "collect", "eval_rows"]

_PARAM_KEYS_NOT_CONFIG = {"train.seed"}  # trials differing only in these repeat a configuration


@dataclass
class Trial:
    run_id: str
    name: str
    status: str
    params: dict[str, str]  # the sweep's whole config, overlaid with this trial's own values
    metrics: dict[str, float]  # each metric's last value
    early_stopped: bool = False
    stage: str = "search"  # or "confirm"

    @property
    def method(self) -> str:
        """Its method as reports show it (``names.method_label``)."""
        return label_of(self.params)

    @property
    def arm(self) -> Arm:
        return arm_of(self.params)

    @property
    def mask_ratio(self) -> float:
        return float(self.params.get("mask.mask_ratio", 0.0))

    @property
    def lr(self) -> float:
        return float(self.params.get("train.lr", "nan"))

    @property
    def seed(self) -> int:
        return int(self.params.get("train.seed", 0))

    def configuration(self) -> tuple:
        """What identifies the trial's configuration: everything it set but its seed."""
        own = {k: v for k, v in self.params.items() if k not in _PARAM_KEYS_NOT_CONFIG}
        return tuple(sorted(own.items()))


@dataclass
class Sweep:
    name: str
    parent_run_id: str
    tracking_uri: str
    metric: str
    mode: str
    trials: list[Trial] = field(default_factory=list)
    throughput: dict[str, dict[str, float]] = field(default_factory=dict)  # run id -> mean tokens/samples per s
    config: dict[str, Any] = field(default_factory=dict)  # the resolved config (the parent's config.yaml)
    started_ms: int | None = None  # the parent run's start and end (ms since the epoch)
    ended_ms: int | None = None

    def finished(self, stage: str = "search") -> list[Trial]:
        """Trials of ``stage`` that ran to the end with their score (the search stage's objective,
        the confirmation stage's test score); early-stopped ones excluded."""
        metric = self.metric if stage == "search" else self.test_metric
        return [t for t in self.trials if t.stage == stage and t.status == "FINISHED" and not t.early_stopped
                and metric in t.metrics]

    @property
    def verdict_benchmark(self) -> str | None:
        """The benchmark the confirmation runs are compared on: ``Experiment.verdict_benchmark``
        of the sweep's stored config, read field by field (a sweep an older gmt-ray ran need not
        validate against today's schema)."""
        from gmt_ray.names import chosen_on

        confirm, evaluation = self.config.get("confirm") or {}, self.config.get("eval") or {}
        return confirm.get("benchmark") or chosen_on(self.metric, evaluation.get("benchmarks") or [])

    @property
    def test_metric(self) -> str:
        """The confirmation runs' score: the verdicts' benchmark on its test problems."""
        from gmt_ray.eval.benchmarks import get_benchmark

        benchmark = self.verdict_benchmark
        return get_benchmark(benchmark).metric if benchmark else self.metric.removeprefix("val_")

    def confirm_scores(self) -> dict[Arm, dict[int, dict[str, float]]]:
        """Per-problem scores of the confirmation runs on the objective's benchmark:
        ``{arm: {seed: {task_id: score}}}`` (a task's score: its share of correct samples)."""
        from gmt_ray.eval.records import task_scores
        from gmt_ray.tracking import client

        mlflow_client = client(self.tracking_uri)
        out: dict[Arm, dict[int, dict[str, float]]] = {}
        for trial in self.finished("confirm"):
            rows = eval_rows(mlflow_client, trial.run_id, self.verdict_benchmark)
            if rows is not None:
                out.setdefault(trial.arm, {})[trial.seed] = task_scores(rows)
        return out


def eval_rows(mlflow_client, run_id: str, benchmark: str | None) -> list[dict] | None:
    """The per-sample rows of a run's last evaluation of ``benchmark`` on its test problems
    (``eval/step{N}-{benchmark}.jsonl``); None where the run has none."""
    import tempfile

    from gmt_ray.eval.records import latest_rows_file

    if benchmark is None:
        return None
    last = latest_rows_file([a.path for a in mlflow_client.list_artifacts(run_id, "eval")], benchmark)
    if last is None:
        return None
    with tempfile.TemporaryDirectory() as directory:
        local = mlflow_client.download_artifacts(run_id, last, directory)
        return [json.loads(line) for line in Path(local).read_text().splitlines() if line.strip()]


def collect(tracking_uri: str, parent_run_id: str) -> Sweep:
    """Every trial run of a sweep, read back from MLflow."""
    import tempfile

    import yaml

    from gmt_ray.tracking import SweepRuns, Tags

    runs = SweepRuns(tracking_uri, parent_run_id)
    client = runs.client
    parent = client.get_run(parent_run_id)
    base = dict(parent.data.params)
    try:
        with tempfile.TemporaryDirectory() as directory:
            config = yaml.safe_load(Path(client.download_artifacts(parent_run_id, "config.yaml", directory))
                                    .read_text()) or {}
    except Exception:  # noqa: BLE001 - a parent logged without its config: the params still describe it
        config = {}
    sweep = Sweep(
        name=parent.data.tags.get(Tags.SWEEP, parent.info.run_name), parent_run_id=parent_run_id,
        tracking_uri=tracking_uri, metric=base.get("search.metric", "val_loss"), mode=base.get("search.mode", "min"),
        config=config, started_ms=parent.info.start_time, ended_ms=parent.info.end_time,
    )
    for run in sorted(runs.trials(), key=lambda r: r.info.run_name or ""):
        trial = Trial(
            run_id=run.info.run_id, name=run.info.run_name, status=run.info.status,
            params={**base, **run.data.params}, metrics=dict(run.data.metrics),
            early_stopped=Tags.EARLY_STOPPED in run.data.tags, stage=run.data.tags.get(Tags.STAGE, "search"),
        )
        sweep.trials.append(trial)
        # Throughput: the mean over the run's reports after the first (start-up, compilation).
        speeds = {}
        for key in ("tokens_per_s", "samples_per_s"):
            history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
            values = [m.value for m in history[1:]] or [m.value for m in history]
            if values:
                speeds[key] = statistics.fmean(values)
        sweep.throughput[run.info.run_id] = speeds
    return sweep
