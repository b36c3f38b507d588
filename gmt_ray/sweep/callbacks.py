"""Tune callbacks of a sweep; they run in the sweep's driver process.

``MlflowTrialLogger`` writes every Train report of every trial to the trial's MLflow run;
``ConsoleCallback`` publishes trial starts, progress and ends for the console. Tune
pickles its callbacks with the experiment's state, so both hold only picklable values.
"""

from __future__ import annotations

import time
from typing import Any

from ray.tune import Callback
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY
from ray.tune.result import AUTO_RESULT_KEYS

from gmt_ray.sweep.console import publish
from gmt_ray.tracking import SweepRuns, TrackingUnavailable

__all__ = ["ConsoleCallback", "MlflowTrialLogger", "failure_reason"]

# Tune's own bookkeeping in every result; none of it is a training metric.
_TUNE_KEYS = {*AUTO_RESULT_KEYS, "done", "trial_id", "experiment_tag"}
# The trial's closing report (it repeats the last metrics and carries its run id).
FINAL_REPORT_KEY = "mlflow_run_id"


def _numeric(result: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in result.items()
            if k not in _TUNE_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)}


class MlflowTrialLogger(Callback):
    """Logs each trial's step metrics and evaluation rows to its run, and closes the run
    of a trial the scheduler stopped early.

    Logging here rather than in a Ray Train callback keeps MLflow out of each trial's Train
    controller, a fresh process per trial that would otherwise import it (~2 CPU-s).

    While the tracking server is unreachable a write waits (``SweepRuns``' retry window) and
    the console says so; what the window does not save is published as ``tracking_failed``
    (and tagged on the run once the server is back); the trial itself trains on.
    """

    def __init__(self, runs: SweepRuns, storage_path: str, remote: bool):
        self.runs, self.storage_path, self.remote = runs, storage_path, remote
        self.run_ids: dict[str, str] = {}

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if FINAL_REPORT_KEY in result:
            return
        self.runs.notify = publish  # not pickled with the runs: set again after a resume
        run_id = self._run_id(trial.trial_id)
        if run_id is None:
            return
        try:
            self.runs.log_step(run_id, _numeric(result), step=int(result.get("step", 0)))
        except TrackingUnavailable as e:
            publish("tracking_failed", trial_id=trial.trial_id, message=str(e))
        if result.get(CHECKPOINT_PATH_KEY):  # per-sample evaluation rows travel in the checkpoint
            import pyarrow.fs
            import ray.train

            filesystem = pyarrow.fs.FileSystem.from_uri(self.storage_path)[0] if self.remote else None
            with ray.train.Checkpoint(result[CHECKPOINT_PATH_KEY], filesystem).as_directory() as directory:
                try:
                    self.runs.log_eval_rows(run_id, directory)
                except TrackingUnavailable as e:
                    publish("tracking_failed", trial_id=trial.trial_id, message=str(e))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.runs.mark_early_stopped(trial.trial_id, (trial.last_result or {}).get("step"))

    def _run_id(self, trial_id: str) -> str | None:
        if trial_id not in self.run_ids:
            run = self.runs.find_trial(trial_id)
            if run is None:
                return None
            self.run_ids[trial_id] = run.info.run_id
        return self.run_ids[trial_id]


class ConsoleCallback(Callback):
    """Publishes one event per trial start and end, and its progress at every report."""

    def __init__(self, objective: str, max_steps: int):
        self.objective, self.max_steps = objective, max_steps
        self.started: dict[str, float] = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started[trial.trial_id] = time.time()
        publish("trial_started", trial_id=trial.trial_id, params=trial.config,
                total=int(trial.config.get("train.max_steps", self.max_steps)))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if FINAL_REPORT_KEY in result or "step" not in result:
            return
        elapsed = time.time() - self.started.setdefault(trial.trial_id, time.time())
        publish("trial_progress", trial_id=trial.trial_id, step=int(result["step"]),
                total=int(trial.config.get("train.max_steps", self.max_steps)), loss=result.get("loss"),
                elapsed=elapsed)

    def on_trial_complete(self, iteration, trials, trial, **info):
        seconds = time.time() - self.started.get(trial.trial_id, time.time())
        publish("trial_finished", trial_id=trial.trial_id, params=trial.config, metrics=trial.last_result or {},
                seconds=seconds, metric=self.objective)

    def on_trial_recover(self, iteration, trials, trial, **info):
        publish("trial_retrying", trial_id=trial.trial_id, reason=failure_reason(trial.error_file))

    def on_trial_error(self, iteration, trials, trial, **info):
        publish("trial_failed", trial_id=trial.trial_id, params=trial.config, error_file=str(trial.error_file or ""),
                reason=failure_reason(trial.error_file))


def failure_reason(error_file: str | None) -> str:
    """Why a trial failed, in one line: the last line of its error file (the exception and its
    message, e.g. ``TrackingUnavailable: ...`` or ``ActorDiedError: ...`` for a lost node)."""
    try:
        lines = [line.strip() for line in open(error_file, encoding="utf-8", errors="replace") if line.strip()]
    except (OSError, TypeError):
        return "no error file"
    reason = next((line for line in reversed(lines) if not line.startswith(("File ", "^", "~"))), "unknown")
    return reason if len(reason) <= 300 else reason[:300] + "..."
