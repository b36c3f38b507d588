"""The sweep driver: Ray Tune + Optuna (+ ASHA) over TorchTrainer trials, logged to MLflow.

This is the only layer that knows Ray Tune, Optuna and MLflow at once. Per trial, a
Tune function trainable resolves the trial's config, opens its MLflow child run, and
builds and fits a TorchTrainer whose reports flow back to Tune; a Tune callback here, in
the driver, logs them to the trial's run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.tune import Callback

from gmt_ray.config import Experiment, with_overrides
from gmt_ray.sweep import tracking
from gmt_ray.sweep.console import evaluation_scores
from gmt_ray.sweep.search import GroupedOptunaSearch

__all__ = ["SweepPaths", "run_sweep", "trial_config", "sweep_paths"]

STATE_FILE = "gmt_ray_sweep.json"
_ACTIVE_CONSOLE: list = [None]


@dataclass(frozen=True)
class SweepPaths:
    root: Path  # Tune's experiment directory
    state: Path  # our own state: parent run id, tracking URI
    optuna_url: str


def sweep_paths(config: Experiment) -> SweepPaths:
    root = Path(config.storage_path).resolve() / config.name
    return SweepPaths(root=root, state=root / STATE_FILE, optuna_url=config.search.storage or f"sqlite:///{root / 'optuna.db'}")


def trial_config(base: dict[str, Any], params: dict[str, Any]) -> Experiment:
    """The experiment of one trial: the base with the searcher's dotted values applied."""
    return with_overrides(Experiment.model_validate(base), params)


# ----------------------------------------------------------------------------- one trial


def run_trial(params: dict[str, Any], *, base: dict, prepared, tracking_uri: str, parent_run_id: str) -> None:
    """A Tune function trainable: one TorchTrainer fit, reported to Tune and MLflow."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    context = ray.tune.get_context()
    trial_id, trial_name = context.get_trial_id(), context.get_trial_name()
    config = trial_config(base, params)
    client = tracking.client(tracking_uri)
    done = tracking.find_trial_run(tracking_uri, parent_run_id, trial_id)
    if done is not None and done.info.status == "FINISHED":
        # Finished before the driver died but after Tune last saved its state: report the
        # logged result again instead of training the trial a second time.
        ray.tune.report({**done.data.metrics, "mlflow_run_id": done.info.run_id})
        return
    run_id = tracking.trial_run(tracking_uri, parent_run_id, trial_id, trial_name, params)
    if "://" not in config.storage_path:
        from gmt_ray.train.recipe import latest_checkpoint

        # A retried trial (its node was lost) continues from its latest checkpoint whose
        # step already reached MLflow: reports still in flight when the node died are
        # trained again rather than missing from the run's history.
        logged = [m.step for m in client.get_metric_history(run_id, "loss")]
        resume = latest_checkpoint(Path(config.storage_path) / trial_name, max_step=max(logged, default=0))
        if resume is not None:
            config = with_overrides(config, {"train.resume_from": str(resume)})
    from gmt_ray.train.launch import make_trainer

    # Every report reaches Tune (the scheduler, and the driver's TrialStepLogger for MLflow).
    trainer = make_trainer(config, run_name=trial_name, prepared=prepared, callbacks=[TuneReportCallback()])
    try:
        result = trainer.fit()
    except BaseException:
        run = client.get_run(run_id)
        if "gmt_ray.early_stopped" not in run.data.tags:  # stopped by the scheduler, not failed
            client.set_terminated(run_id, status="FAILED")
        raise
    final = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    final["mlflow_run_id"] = run_id
    client.set_tag(run_id, "gmt_ray.objective", f"{config.search.metric}={final.get(config.search.metric)}")
    if result.checkpoint is not None:
        client.set_tag(run_id, tracking.CHECKPOINT_TAG, result.checkpoint.path)
    ray.tune.report(final)
    client.set_terminated(run_id, status="FINISHED")


# ----------------------------------------------------------------------------- the sweep


def run_sweep(config: Experiment, prepared, *, resume: bool, console, config_yaml: str) -> dict[str, Any]:
    """Runs (or resumes) the sweep; returns a summary for the console and the caller."""
    import mlflow  # noqa: F401 - configures its loggers on import; quieten them after
    import optuna
    from ray import tune

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    paths = sweep_paths(config)
    tracking_uri = tracking.resolve_tracking_uri(config.mlflow.tracking_uri)
    # Step reports without the objective reach Tune too (for MLflow); strict checking
    # would reject them.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    # Save Tune's experiment state within a second of every change (default: >= 10 s),
    # so that a killed driver loses as little as possible.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")

    state = json.loads(paths.state.read_text()) if resume else {}
    parent_run_id = tracking.start_parent_run(
        tracking_uri, config.mlflow.experiment_name or config.name, config.name,
        config.model_dump(mode="json"), config_yaml, run_id=state.get("parent_run_id"),
    )
    if resume:
        # Trials that were running when the driver died restart under the same run ids;
        # those Tune never saved are not restarted, and their runs go.
        known = {trial.trial_id for trial in tune.ExperimentAnalysis(str(paths.root)).trials}
        stray = tracking.delete_unknown_children(tracking_uri, parent_run_id, known)
        if stray:
            console.note(f"resume: deleted {stray} MLflow run(s) of trials started after the last saved state")
        tracking.close_children(tracking_uri, parent_run_id, status="KILLED")
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.state.write_text(json.dumps({"parent_run_id": parent_run_id, "tracking_uri": tracking_uri}))

    # Trials run in Tune's per-trial working directories: their Train runs (checkpoints)
    # must go to the sweep's own directory by absolute path, shared storage on a cluster.
    trial_base = config.model_dump(mode="json")
    if "://" not in config.storage_path:
        trial_base["storage_path"] = str(paths.root)
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial, base=trial_base, prepared=ray.put(prepared),
            tracking_uri=tracking_uri, parent_run_id=parent_run_id,
        ),
        # The trial's own driver is light; its Train workers reserve their resources.
        {"CPU": 0.01},
    )
    searcher = GroupedOptunaSearch(config, storage_url=paths.optuna_url)
    total = searcher.total_trials
    _ACTIVE_CONSOLE[0] = console
    console.start(total, parent_run_id, tracking_uri)
    if resume:
        tuner = tune.Tuner.restore(str(paths.root), trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher, scheduler=_scheduler(config), num_samples=total,
                max_concurrent_trials=config.search.max_concurrent_trials,
                # A finished trial's driver process (its imports, its MLflow client) takes
                # the next trial instead of a fresh process paying them again. Not under
                # ASHA: the driver of a trial it stops is still inside fit(), and Tune
                # fails the next trial rather than start a fresh driver for it.
                reuse_actors=config.search.scheduler != "asha",
            ),
            run_config=tune.RunConfig(
                name=config.name, storage_path=str(paths.root.parent), verbose=0,
                callbacks=[
                    _ConsoleCallback(config), _EarlyStopRecorder(tracking_uri, parent_run_id),
                    tracking.TrialStepLogger(tracking_uri, parent_run_id, trial_base["storage_path"]),
                ],
                # A trial whose driver dies with its node is retried; its TorchTrainer then
                # resumes from the run's latest checkpoint (worker failures alone are
                # retried inside the trial, by Ray Train).
                failure_config=tune.FailureConfig(max_failures=config.resources.max_failures),
            ),
        )
    stop = _CtrlC()
    try:
        grid = tuner.fit()
    except KeyboardInterrupt:
        stop.requested, grid = True, None
    finally:
        stop.restore()
    rows = _rows(grid, config) if grid is not None else []
    finished = [r for r in rows if r["status"] == "DONE" and _finite(r.get("objective"))]
    interrupted = stop.requested or len(rows) < total
    client = tracking.client(tracking_uri)
    tracking.close_children(tracking_uri, parent_run_id, status="KILLED")
    best = None
    if finished:
        best = (min if config.search.mode == "min" else max)(finished, key=lambda r: r["objective"])
        client.log_metric(parent_run_id, f"best_{config.search.metric}", best["objective"])
        client.set_tag(parent_run_id, "gmt_ray.best_trial", best["trial"])
        client.set_tag(parent_run_id, "gmt_ray.best_run_id", best.get("run_id", ""))
    client.set_terminated(parent_run_id, status="KILLED" if interrupted else "FINISHED")
    return {"rows": rows, "best": best, "parent_run_id": parent_run_id, "tracking_uri": tracking_uri,
            "interrupted": interrupted, "total": total, "root": paths.root}


class _CtrlC:
    """The first Ctrl-C stops the sweep gracefully and is remembered; a second one aborts.

    Tune's own SIGINT handling stops as gracefully but keeps no record we can read, so
    ours records the request and asks Tune to stop through SIGUSR1, its other stop signal.
    """

    def __init__(self):
        import signal

        self.requested = False
        self._signal = signal
        self._previous = signal.getsignal(signal.SIGINT)
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        os.kill(os.getpid(), self._signal.SIGUSR1)

    def restore(self) -> None:
        self._signal.signal(self._signal.SIGINT, self._previous)


def _scheduler(config: Experiment):
    if config.search.scheduler != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    a = config.search.asha
    return ASHAScheduler(
        time_attr="step", metric=a.metric, mode=a.mode, max_t=config.train.max_steps,
        grace_period=min(a.grace_period, config.train.max_steps), reduction_factor=a.reduction_factor,
        stop_last_trials=False,  # a trial that reaches max_steps finishes and is evaluated
    )


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _rows(grid, config: Experiment) -> list[dict[str, Any]]:
    rows = []
    for result in grid:
        params = result.config or {}
        metrics = result.metrics or {}
        status = "ERROR" if result.error else "DONE"
        rows.append({
            "trial": metrics.get("trial_id") or (Path(result.path).name if result.path else "?"),
            "method": params.get("mask.method", config.mask.method),
            "mask_ratio": params.get("mask.mask_ratio", config.mask.mask_ratio),
            "lr": params.get("train.lr", config.train.lr),
            "params": params,
            "objective": metrics.get(config.search.metric),
            "scores": evaluation_scores(metrics, config.search.metric),
            "steps": metrics.get("step"),
            "run_id": metrics.get("mlflow_run_id"),
            "status": status,
        })
    return rows


class _EarlyStopRecorder(Callback):
    """A trial stopped by the scheduler never reaches its own final report: close its run here."""

    def __init__(self, tracking_uri: str, parent_run_id: str):
        self.tracking_uri, self.parent_run_id = tracking_uri, parent_run_id

    def on_trial_complete(self, iteration, trials, trial, **info):
        run = tracking.find_trial_run(self.tracking_uri, self.parent_run_id, trial.trial_id)
        # Whatever the dying trial managed to write (RUNNING, or FAILED as its fit() was cut
        # short), a trial Tune completes without our final report was stopped early.
        if run is not None and "gmt_ray.objective" not in run.data.tags:
            client = tracking.client(self.tracking_uri)
            client.set_tag(run.info.run_id, "gmt_ray.early_stopped", f"step {(trial.last_result or {}).get('step')}")
            client.set_terminated(run.info.run_id, status="FINISHED")


class _ConsoleCallback(Callback):
    """Tune callback: one line per trial start and finish, and the progress bar."""

    def __init__(self, config: Experiment):
        self.config = config
        self.started: dict[str, float] = {}

    @property
    def console(self):
        # Looked up, not held: Tune pickles its callbacks with the experiment state, and a
        # resumed sweep must print to the console of the process that resumed it.
        return _ACTIVE_CONSOLE[0]

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started[trial.trial_id] = time.time()
        self.console.trial_started(trial.trial_id, trial.config)

    def on_trial_complete(self, iteration, trials, trial, **info):
        metrics = trial.last_result or {}
        seconds = time.time() - self.started.get(trial.trial_id, time.time())
        self.console.trial_finished(trial.trial_id, trial.config, metrics, seconds, self.config.search.metric)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.console.trial_failed(trial.trial_id, trial.config, str(trial.error_file or ""))
