"""Running the recipe on Ray Train: one TorchTrainer per configuration."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from gmt_ray.config import Experiment

__all__ = ["init_ray", "local_cpus", "make_trainer"]

PREEMPTION_WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


def init_ray(address: str | None = None, *, verbose: bool = False, num_cpus: int | None = None) -> None:
    """Connects to a running cluster (``address`` or RAY_ADDRESS), else starts a local one."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Train V2's controller polls its workers every 2 s by default, so every run waits up
    # to 2 s to notice start and end; sweeps of short trials pay that twice per trial.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    if not verbose:
        # Ray's banners, migration notes and per-report worker lines drown the console.
        import logging

        os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
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
    # Workers must import gmt_ray and see the driver's working directory.
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
        _hide_worker_pool_warning()


def _hide_worker_pool_warning() -> None:
    """Drops the raylet's "N PYTHON worker processes have been started" warning.

    A sweep's trials start several short-lived actors per CPU (trial driver, Train
    controller, Train workers), which trips it on every small machine; Ray prints it to
    the driver's console unconditionally (no setting turns it off). Every other raylet
    message still shows. If Ray renames the function, the warning simply shows again.
    """
    import ray._private.worker as ray_worker

    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is None or getattr(original, "_gmt_ray_filtered", False):
        return

    def filtered(data, *args, **kwargs):
        lines = [line for line in data.get("lines", []) if "worker processes have been started" not in line]
        if lines:
            original({**data, "lines": lines}, *args, **kwargs)

    filtered._gmt_ray_filtered = True
    ray_worker.print_to_stdstream = filtered


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
    storage = str(Path(config.storage_path).resolve()) if "://" not in config.storage_path else config.storage_path
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "experiment": config.model_dump(mode="json"),
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
            storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=r.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.train.keep_checkpoints),
            callbacks=callbacks or None,
        ),
    )
