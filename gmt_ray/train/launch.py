"""Running the recipe on Ray Train: one TorchTrainer per configuration."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

from gmt_ray.config import Experiment

__all__ = ["init_ray", "local_cpus", "make_trainer", "ray_session"]

PREEMPTION_WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


# Settings read by Ray's own processes and by Tune and Train in the driver.
_QUIET_RAY = {
    "RAY_USAGE_STATS_ENABLED": "0",
    # Train V2's controller polls its workers every 2 s by default, so every run waits up
    # to 2 s to notice start and end; sweeps of short trials pay that twice per trial.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
}
# Ray's banners, migration notes and per-report worker lines drown the console.
_QUIET_CONSOLE = {"RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0", "RAY_AIR_NEW_OUTPUT": "0"}


@contextlib.contextmanager
def ray_session(address: str | None = None, *, verbose: bool = False, num_cpus: int | None = None):
    """Ray for the duration of a block: connects to a running cluster (``address`` or
    RAY_ADDRESS) or starts a local one, and leaves the process as it found it: a Ray it
    started is shut down, environment variables and log levels it set are restored."""
    import ray

    saved_environ = dict(os.environ)
    ray_logger = logging.getLogger("ray")
    saved_level = ray_logger.level
    started = not ray.is_initialized()
    try:
        if started:
            init_ray(address, verbose=verbose, num_cpus=num_cpus)
        yield
    finally:
        if started and ray.is_initialized():
            from gmt_ray.ray_compat import show_worker_pool_warning

            ray.shutdown()
            show_worker_pool_warning()
        os.environ.clear()
        os.environ.update(saved_environ)
        ray_logger.setLevel(saved_level)


def init_ray(address: str | None = None, *, verbose: bool = False, num_cpus: int | None = None) -> None:
    """Connects to a running cluster (``address`` or RAY_ADDRESS), else starts a local one."""
    import ray

    if ray.is_initialized():
        return
    settings = {**_QUIET_RAY, **({} if verbose else _QUIET_CONSOLE)}
    for key, value in settings.items():
        os.environ.setdefault(key, value)
    if not verbose:
        logging.getLogger("ray").setLevel(logging.ERROR)
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {
        # The dashboard serves the State API, which Ray Train's PlacementGroupCleaner needs to
        # release the resources of a run whose controller was killed (an early-stopped trial).
        # It listens on 127.0.0.1 only.
        "include_dashboard": True,
        "dashboard_host": "127.0.0.1",
        "log_to_driver": verbose,
        "logging_level": "INFO" if verbose else "ERROR",
    }
    env_vars = {"RAY_USAGE_STATS_ENABLED": "0", "PYTHONWARNINGS": os.environ.get("PYTHONWARNINGS", "ignore")}
    kwargs["runtime_env"] = {"env_vars": env_vars}
    if address:
        ray.init(address=address, **kwargs)
    else:
        # Each Train run would start a watcher actor (a fresh process importing Ray Train,
        # ~1.5 CPU-s) for node drains, which a single local machine never has.
        env_vars[PREEMPTION_WATCHER] = os.environ[PREEMPTION_WATCHER] = os.environ.get(PREEMPTION_WATCHER, "0")
        ray.init(num_cpus=num_cpus or local_cpus(), **kwargs)
    if not verbose:
        from gmt_ray.ray_compat import hide_worker_pool_warning

        hide_worker_pool_warning()


def local_cpus() -> int:
    """Logical CPUs of a local Ray: the cores, plus one shared by the trials' light drivers.

    Without it, two 1-CPU trials could not run at once on a 2-core machine: each trial's
    driver holds 0.01 CPU beside its worker.
    """
    return (os.cpu_count() or 1) + 1


def make_trainer(
    config: Experiment,
    *,
    run_name: str,
    prepared: Any = None,
    metrics_path: str | None = None,
    export_dir: str | None = None,
    callbacks: list | None = None,
):
    """A TorchTrainer that runs ``train_loop_per_worker`` for ``config``.

    Args:
        prepared: the tokenised data, or an ObjectRef to it (built once per sweep).
        metrics_path: rank 0 appends every report to this JSONL file.
        export_dir: rank 0 saves the final model there in Hugging Face format.
        callbacks: Ray Train callbacks (e.g. Tune's TuneReportCallback).
    """
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from gmt_ray.train.recipe import train_loop_per_worker

    r = config.resources
    resources = {"CPU": r.cpus_per_worker}
    if r.use_gpu:
        resources["GPU"] = r.gpus_per_worker
    local = config.local_storage()
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "experiment": config,
            "prepared": prepared,
            "metrics_path": metrics_path,
            "export_dir": export_dir,
        },
        torch_config=TorchConfig(backend="nccl" if r.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=r.num_workers, use_gpu=r.use_gpu, resources_per_worker=resources,
            accelerator_type=r.accelerator_type,
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=str(local) if local is not None else config.storage_path,
            failure_config=ray.train.FailureConfig(max_failures=r.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.train.keep_checkpoints),
            callbacks=callbacks or None,
        ),
    )
