"""The sweep driver: Ray Tune + Optuna (+ ASHA) over TorchTrainer trials, logged to MLflow.

This is the only layer that knows Ray Tune, Optuna and MLflow at once. Per trial, a
Tune function trainable (``train_trial``) resolves the trial's config, opens its MLflow
run, and builds and fits a TorchTrainer whose reports flow back to Tune; Tune callbacks
in the driver log them to the trial's run and publish them for the console.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from gmt_ray.config import Experiment, with_overrides
from gmt_ray.names import evaluation_scores, method_label, uses_mask_ratio
from gmt_ray.ray_compat import restored_callbacks
from gmt_ray.sweep.callbacks import FINAL_REPORT_KEY, ConsoleCallback, MlflowTrialLogger
from gmt_ray.sweep.plan import no_test_scores
from gmt_ray.sweep.search import (
    STAGE_KEY,
    TASK_SCORES_KEY,
    GroupedOptunaSearch,
    build_scheduler,
    sampler_used,
)
from gmt_ray.sweep.study_storage import open_study_storage
from gmt_ray.tracking import SweepRuns, Tags, resolve_tracking_uri
from gmt_ray.tracking.outage import retry_transient

__all__ = ["FIXED_ON_RESUME", "SweepPaths", "SweepResult", "compared_params", "fixed_settings", "run_sweep", "sweep_paths", "train_trial", "trial_run_name"]

STATE_FILE = "gmt_ray_sweep.json"


@dataclass(frozen=True)
class SweepPaths:
    root: Path  # Tune's experiment directory
    state: Path  # our own state: parent run id, tracking URI


# What a sweep's trials are: a resume must not change them, or its trials would answer two
# different questions under one name. Resources, MLflow and W&B settings may change.
FIXED_ON_RESUME = ("model", "data", "mask", "train", "search", "confirm", "eval")


def fixed_settings(config: Experiment) -> dict[str, Any]:
    """The sections of ``config`` a resume must leave as they were, as JSON-ready values."""
    return {section: getattr(config, section).model_dump(mode="json") for section in FIXED_ON_RESUME}


def sweep_paths(config: Experiment) -> SweepPaths:
    root = Path(config.storage_path).resolve() / config.name
    return SweepPaths(root=root, state=root / STATE_FILE)


@dataclass
class SweepResult:
    """What a sweep did: one row per trial Tune knows, and the best finished one."""

    rows: list[dict[str, Any]]
    best: dict[str, Any] | None
    parent_run_id: str
    tracking_uri: str
    interrupted: bool
    total: int
    root: Path
    failed: list[str] = field(default_factory=list)
    registered: dict[str, str] = field(default_factory=dict)  # method -> models:/<sweep>-<method>@best
    experiment_id: str | None = None
    view_id: str | None = None  # the MLflow UI's saved view comparing the trials
    verdicts: list = field(default_factory=list)  # the confirmation stage's (gmt_ray.report.verdicts.Verdict)
    # `python -m gmt_ray.evaluate` arguments for the sweep's first benchmark that command takes
    # (None where it takes none: the generated arithmetic is scored within a sweep only).
    evaluate_args: str | None = None


def trial_run_name(config: Experiment) -> str:
    """What a trial is, in a few characters: ``gmt r=0.60 lr=2.1e-05 s0``."""
    mask = config.mask
    ratio = f" r={mask.mask_ratio:.2f}" if uses_mask_ratio(mask.method) else ""
    label = method_label(mask.method, mask.drop_strategy, mask.apply_to)
    return f"{label}{ratio} lr={config.train.lr:.1e} s{config.train.seed}"


def compared_params(config: Experiment) -> list[str]:
    """What the trials of a sweep differ in: its methods (when several), the searched options,
    and the mask ratios compared side by side (``search.mask_ratios``)."""
    params = ["mask.method"] if len(config.search.methods) > 1 else []
    params += list(config.search.space)
    if config.search.mask_ratios and any(uses_mask_ratio(m) for m in config.search.methods):
        params.append("mask.mask_ratio")
    return list(dict.fromkeys(params))


# ----------------------------------------------------------------------------- one trial


def train_trial(params: dict[str, Any], *, base: Experiment, prepared, runs: SweepRuns,
                init_from: dict[str, str] | None = None, datasets=()) -> None:
    """A Tune function trainable: one TorchTrainer fit, reported to Tune and MLflow.

    Args:
        prepared: ``[ObjectRef]`` to the tokenised data (``gmt_ray.data.prepare``); the Train
            workers fetch it from the object store themselves.
        init_from: where each method's trials start (``train.init_from`` resolved per method).
        datasets: what every trial trains and is evaluated on (``DatasetRef``), for its run's inputs.
    """
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from gmt_ray.sweep.system_metrics import SystemMetricsCallback
    from gmt_ray.train.checkpoint import latest_checkpoint
    from gmt_ray.train.launch import make_trainer

    context = ray.tune.get_context()
    trial_id, trial_name = context.get_trial_id(), context.get_trial_name()
    params = dict(params)
    stage = params.pop(STAGE_KEY, "search")
    # The search chooses on validation problems; confirmation reports on the test problems.
    config = with_overrides(base, {**params, "eval.split": "validation" if stage == "search" else "test"})
    if init_from:
        config = with_overrides(config, {"train.init_from": init_from[config.mask.method]})
    # The trial's own run is opened and closed through retries: a tracking server that is
    # briefly away, or SQLite locked by another trial's write, must not fail the trial.
    window = config.mlflow.retry_window_s
    done = retry_transient(lambda: runs.find_trial(trial_id), window)
    if done is not None and done.info.status == "FINISHED":
        # Finished before the driver died but after Tune last saved its state: report the
        # logged result again instead of training the trial a second time.
        replay = {**done.data.metrics, FINAL_REPORT_KEY: done.info.run_id}
        if stage == "confirm":
            replay[TASK_SCORES_KEY] = task_scores_of_run(runs.client, done.info.run_id, config.verdict_benchmark())
        ray.tune.report(replay)
        return
    name = trial_run_name(config) + (" confirm" if stage == "confirm" else "")
    # A search trial is not evaluated on the test problems: its inputs leave them out.
    used = [d for d in datasets if stage == "confirm" or d.context != "eval"]
    run_id = retry_transient(lambda: runs.open_trial(trial_id, name, params, used, stage=stage), window)
    storage = config.local_storage()
    if storage is not None:
        # A retried trial (its node was lost) continues from its latest checkpoint whose
        # step already reached MLflow: reports still in flight when the node died are
        # trained again rather than missing from the run's history.
        resume = latest_checkpoint(storage / trial_name, max_step=runs.last_logged_step(run_id))
        if resume is not None:
            config = with_overrides(config, {"train.resume_from": str(resume)})

    # The final model in Hugging Face format, beside the trial's checkpoints: what init_from,
    # evaluation and users take (an FSDP checkpoint holds only shards).
    export_dir = storage / trial_name / "model" if storage is not None else None
    # Every report reaches Tune (the scheduler, and the driver's MlflowTrialLogger).
    callbacks = [TuneReportCallback()]
    if config.mlflow.system_metrics:  # measured on the nodes the workers run on, not here
        callbacks.append(SystemMetricsCallback(runs.tracking_uri, run_id, config.mlflow.system_metrics_interval_s))
    trainer = make_trainer(config, run_name=trial_name, prepared=prepared[0], callbacks=callbacks,
                           export_dir=str(export_dir) if export_dir is not None else None)
    try:
        result = trainer.fit()
    except BaseException:
        try:  # the run is marked, but a tracking error here must not hide why training failed
            retry_transient(lambda: runs.fail_trial(run_id), window)
        except Exception:  # noqa: BLE001 - the training error below is the one to report
            pass
        raise
    final = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    retry_transient(lambda: runs.finish_trial(
        run_id, objective=config.search.metric, value=final.get(config.search.metric),
        checkpoint=result.checkpoint.path if result.checkpoint is not None else None,
        model=str(export_dir) if export_dir is not None and export_dir.is_dir() else None,
        method=method_label(config.mask.method, config.mask.drop_strategy, config.mask.apply_to)), window)
    report = {**final, FINAL_REPORT_KEY: run_id}
    if stage == "confirm" and result.checkpoint is not None:
        # Per-problem scores, for the searcher's sequential verdicts (confirm.until_decisive).
        report[TASK_SCORES_KEY] = task_scores_in(result.checkpoint, config.verdict_benchmark())
    ray.tune.report(report)


def task_scores_in(checkpoint, benchmark: str | None) -> dict[str, float]:
    """Per-problem scores on ``benchmark``'s test problems, from the latest evaluation rows in a
    checkpoint (``eval/step{N}-{benchmark}.jsonl``), read through the checkpoint's own file
    system: one small file, not the whole checkpoint from remote storage; empty where none."""
    import pyarrow.fs

    from gmt_ray.eval.records import latest_rows_file, task_scores

    if benchmark is None:
        return {}
    listed = checkpoint.filesystem.get_file_info(pyarrow.fs.FileSelector(f"{checkpoint.path}/eval", allow_not_found=True))
    chosen = latest_rows_file([info.path for info in listed], benchmark)
    if chosen is None:
        return {}
    with checkpoint.filesystem.open_input_stream(chosen) as stream:
        rows = [json.loads(line) for line in stream.read().decode().splitlines() if line.strip()]
    return task_scores(rows)


def task_scores_of_run(mlflow_client, run_id: str, benchmark: str | None) -> dict[str, float]:
    """``task_scores_in`` for a finished run, from its logged evaluation rows."""
    from gmt_ray.eval.records import task_scores
    from gmt_ray.report.sweep import eval_rows

    rows = eval_rows(mlflow_client, run_id, benchmark) if benchmark else None
    return task_scores(rows) if rows else {}


# ----------------------------------------------------------------------------- the sweep


def run_sweep(config: Experiment, prepared, *, resume: bool = False, console=None,
              config_yaml: str | None = None, init_from: dict[str, str] | None = None) -> SweepResult:
    """Runs (or resumes) the sweep of ``config`` on the connected Ray cluster.

    Args:
        prepared: the tokenised data (``gmt_ray.data.prepare``), shared by every trial.
        init_from: where each method's trials start (``gmt_ray.preflight.preflight`` resolves it).
        resume: continue the interrupted sweep of the same name.
        console: a ``SweepConsole`` to show progress on (None: silent).
        config_yaml: the resolved config as written to the parent run (default: ``to_yaml``).
    """
    from ray import tune

    from gmt_ray.config import to_yaml

    paths = sweep_paths(config)
    tracking_uri = resolve_tracking_uri(config.mlflow.tracking_uri)
    # Step reports without the objective reach Tune too (for MLflow and the console); strict
    # checking would reject them. Tune saves its state within a second of every change
    # (default: >= 10 s), so that a killed driver loses as little as possible.
    # Ctrl-C is ours (_stop_on_ctrl_c), so that a stop request leaves a record.
    with _quiet_libraries(), _scoped_environ(TUNE_DISABLE_STRICT_METRIC_CHECKING="1", TUNE_GLOBAL_CHECKPOINT_S="1",
                                             TUNE_DISABLE_SIGINT_HANDLER="1"):
        if resume:
            state = json.loads(paths.state.read_text())
            runs = SweepRuns.reopen(tracking_uri, state["parent_run_id"])
            # Trials that were running when the driver died restart under the same run ids;
            # those Tune never saved are not restarted, and their runs go.
            known = {trial.trial_id for trial in tune.ExperimentAnalysis(str(paths.root)).trials}
            stray = runs.delete_unknown(known)
            if stray and console is not None:
                console.note(f"resume: deleted {stray} MLflow run(s) of trials started after the last saved state")
            runs.close_running(status="KILLED")
        else:
            runs = SweepRuns.start(tracking_uri, config.mlflow.experiment_name or config.name, config.name,
                                   config.model_dump(mode="json"), config_yaml or to_yaml(config))
            # What the sweep trains and is evaluated on, as the parent's inputs: created here
            # once, before trials that start together each log them.
            runs.log_datasets(runs.parent_run_id, getattr(prepared, "datasets", []))
        runs.retry_window_s = config.mlflow.retry_window_s  # for the driver's MlflowTrialLogger
        paths.root.mkdir(parents=True, exist_ok=True)
        paths.state.write_text(json.dumps({"parent_run_id": runs.parent_run_id, "tracking_uri": tracking_uri,
                                           "settings": fixed_settings(config)}))
        view_id = runs.save_comparison_view(config.search.metric, config.search.mode, compared_params(config))

        # Trials run in Tune's per-trial working directories: their Train runs (checkpoints)
        # must go to the sweep's own directory by absolute path, shared storage on a cluster.
        base = config if config.local_storage() is None else config.model_copy(update={"storage_path": str(paths.root)})
        trainable = tune.with_resources(
            # The data goes into the object store once, and each trial passes on only its
            # reference (in a list: Tune resolves a bare reference into a copy for each trial
            # driver, which would then pickle that copy into every trial's Train run).
            tune.with_parameters(train_trial, base=base, prepared=[ray.put(prepared)], runs=runs,
                                 init_from=init_from or {}, datasets=list(getattr(prepared, "datasets", []))),
            # The trial's own driver is light; its Train workers reserve their resources.
            {"CPU": 0.01},
        )
        # The studies' journal sits beside Tune's state, on shared storage on a cluster.
        searcher = GroupedOptunaSearch(config, storage=open_study_storage(config, paths.root))
        total = searcher.total_trials
        # What really proposes the trials, where the parent run and the console say it.
        runs.client.set_tag(runs.parent_run_id, Tags.SAMPLER_USED, sampler_used(config.search))
        if console is not None:
            console.start(total, runs.parent_run_id, tracking_uri, up_to=config.confirm.until_decisive)
            console.note(f"search: {sampler_used(config.search)}; objective {config.search.metric} on validation "
                         "problems" + (f"; then {config.confirm.seeds} fresh seed(s) per chosen configuration on the "
                                       "test problems" if config.confirm.seeds else ""))
            if untested := no_test_scores(config):
                console.note(untested)
        if resume:
            tuner = tune.Tuner.restore(str(paths.root), trainable=trainable, resume_errored=True)
            # Its callbacks come back as pickled, logging to the tracking URI of the sweep's first
            # run: a server that has moved since (a requeued Slurm job starts its own) is this one.
            for callback in restored_callbacks(tuner):
                if isinstance(callback, MlflowTrialLogger):
                    callback.runs = runs
        else:
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=searcher, scheduler=build_scheduler(config), num_samples=total,
                    max_concurrent_trials=config.search.max_concurrent_trials,
                    # A finished trial's driver process (its imports, its MLflow client) takes
                    # the next trial instead of a fresh process paying them again. Not under
                    # ASHA: the driver of a trial it stops is still inside fit(), and Tune
                    # fails the next trial rather than start a fresh driver for it.
                    reuse_actors=config.search.scheduler != "asha",
                ),
                run_config=tune.RunConfig(
                    name=config.name, storage_path=str(paths.root.parent), verbose=0,
                    callbacks=[*_wandb_callbacks(config), ConsoleCallback(config.search.metric, config.train.max_steps),
                               MlflowTrialLogger(runs, base.storage_path, remote=base.local_storage() is None)],
                    # A trial whose driver dies with its node is retried; its TorchTrainer then
                    # resumes from the run's latest checkpoint (worker failures alone are
                    # retried inside the trial, by Ray Train).
                    failure_config=tune.FailureConfig(max_failures=config.resources.max_failures),
                ),
            )
        try:
            with _stop_on_ctrl_c() as stop:
                grid = tuner.fit()
        except KeyboardInterrupt:  # a second Ctrl-C: the graceful stop was cut short
            grid = None
        finally:
            if console is not None:
                console.stop()
    rows = _rows(grid, config) if grid is not None else []
    # Sequential confirmation may end before its most trials (total): then fewer is complete.
    # The searcher ends the sweep (a sequential confirmation may need fewer trials than total,
    # a group whose every search trial failed has nothing to confirm): what Tune returned from
    # a fit that was not stopped is the whole sweep.
    interrupted = stop.requested or grid is None or grid.num_terminated + grid.num_errors < len(grid)
    finished = [r for r in rows if r["status"] == "DONE" and r["stage"] == "search" and _finite(r.get("objective"))]
    best = (min if config.search.mode == "min" else max)(finished, key=lambda r: r["objective"]) if finished else None
    registered = _register_best(runs, config, console)
    found = _verdicts(tracking_uri, runs.parent_run_id, console) if config.confirm.seeds and not interrupted else []
    runs.finish(interrupted=interrupted, metric=config.search.metric, best=best)
    return SweepResult(rows=rows, best=best, parent_run_id=runs.parent_run_id, tracking_uri=tracking_uri,
                       interrupted=interrupted, total=total, root=paths.root,
                       failed=[row["trial"] for row in rows if row["status"] == "ERROR"],
                       registered=registered, experiment_id=runs.experiment_id, view_id=view_id, verdicts=found,
                       evaluate_args=evaluate_args(config))


def evaluate_args(config: Experiment) -> str | None:
    """``--benchmark NAME [--data FILE]`` of the experiment's first benchmark that
    ``python -m gmt_ray.evaluate`` takes; None where it takes none of them."""
    import shlex

    from gmt_ray.eval.benchmarks import BENCHMARKS

    for name in config.eval.benchmarks:
        if name in BENCHMARKS and not BENCHMARKS[name].generated:
            data = config.eval.data.get(name)
            return f"--benchmark {name}" + (f" --data {shlex.quote(data)}" if data else "")
    return None


def _verdicts(tracking_uri: str, parent_run_id: str, console) -> list:
    """The confirmation stage's verdicts, as ``python -m gmt_ray.report`` computes them from the
    runs in MLflow. A store that cannot be read back is reported, not fatal."""
    from gmt_ray.report import collect, confirm_verdicts

    try:
        return confirm_verdicts(collect(tracking_uri, parent_run_id))
    except Exception as error:  # noqa: BLE001 - the runs are logged; the report can compute them later
        if console is not None:
            console.note(f"[yellow]warning: no verdicts computed ({error}); python -m gmt_ray.report computes them")
        return []


def _register_best(runs: SweepRuns, config: Experiment, console) -> dict[str, str]:
    """Each method's best finished trial in the model registry (``<sweep>-<method>@best``).
    A registry that refuses is reported, not fatal: the trials and their models are logged."""
    try:
        return runs.register_best(config.search.metric, config.search.mode)
    except Exception as error:  # noqa: BLE001 - MlflowException, or a server without a registry
        if console is not None:
            console.note(f"[yellow]warning: the best models were not registered: {error}")
        return {}


@contextlib.contextmanager
def _scoped_environ(**values: str):
    """Sets environment variables not already set, for the duration of the block."""
    added = {key: value for key, value in values.items() if key not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


class _StopRequest:
    requested = False


@contextlib.contextmanager
def _stop_on_ctrl_c():
    """The first Ctrl-C asks Tune to stop gracefully (through SIGUSR1, its other stop signal)
    and is recorded; a second one aborts. Tune keeps no record of a stop that we could read,
    and leaves its own handlers installed: both signals' handlers are restored afterwards."""
    request = _StopRequest()
    if threading.current_thread() is not threading.main_thread():  # only the main thread gets signals
        yield request
        return
    saved = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGUSR1)}

    def handle(signum, frame):
        if request.requested:
            raise KeyboardInterrupt
        request.requested = True
        os.kill(os.getpid(), signal.SIGUSR1)

    signal.signal(signal.SIGINT, handle)
    try:
        yield request
    finally:
        for number, handler in saved.items():
            signal.signal(number, handler)


@contextlib.contextmanager
def _quiet_libraries():
    """Optuna's per-trial INFO lines and MLflow's database migrations stay off the console."""
    import mlflow  # noqa: F401 - configures its loggers on import; quieten them after
    import optuna

    verbosity = optuna.logging.get_verbosity()
    loggers = {name: logging.getLogger(name) for name in ("mlflow", "alembic")}
    levels = {name: logger.level for name, logger in loggers.items()}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for logger in loggers.values():
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)
        for name, logger in loggers.items():
            logger.setLevel(levels[name])


def _wandb_callbacks(config: Experiment) -> list:
    """Ray Tune's own W&B logger when the experiment names a project (off by default)."""
    if config.wandb.project is None:
        return []
    from ray.air.integrations.wandb import WandbLoggerCallback

    # Not the run id, nor a confirmation run's per-problem scores (one W&B metric per problem).
    return [WandbLoggerCallback(project=config.wandb.project, entity=config.wandb.entity, group=config.name,
                                excludes=["mlflow_run_id", TASK_SCORES_KEY])]


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def confirm_metric(config: Experiment) -> str | None:
    """What a confirmation run is scored by: the verdicts' benchmark's test score."""
    from gmt_ray.eval.benchmarks import get_benchmark

    benchmark = config.verdict_benchmark()
    return get_benchmark(benchmark).metric if benchmark else None


def _rows(grid, config: Experiment) -> list[dict[str, Any]]:
    rows = []
    for result in grid:
        params = result.config or {}
        metrics = result.metrics or {}
        stage = params.get(STAGE_KEY, "search")
        # A confirmation run's score is its test score on the verdicts' benchmark; a search trial's, the objective.
        metric = confirm_metric(config) if stage == "confirm" else config.search.metric
        rows.append({
            "trial": metrics.get("trial_id") or (Path(result.path).name if result.path else "?"),
            "stage": stage,
            "method": method_label(params.get("mask.method", config.mask.method),
                                   params.get("mask.drop_strategy"), params.get("mask.apply_to")),
            "mask_ratio": params.get("mask.mask_ratio", config.mask.mask_ratio),
            "lr": params.get("train.lr", config.train.lr),
            "seed": params.get("train.seed", config.train.seed),
            "params": {k: v for k, v in params.items() if k != STAGE_KEY},
            "metrics": {k: v for k, v in metrics.items() if _finite(v)},
            "score_name": metric,
            "objective": metrics.get(metric),
            "low": metrics.get(f"{metric}_low"),
            "high": metrics.get(f"{metric}_high"),
            "scores": evaluation_scores(metrics, config.search.metric),
            # A trial resumed from its final checkpoint reports its step back as a float.
            "steps": int(metrics["step"]) if _finite(metrics.get("step")) else metrics.get("step"),
            "run_id": metrics.get(FINAL_REPORT_KEY),
            "status": "ERROR" if result.error else "DONE",
        })
    return rows
