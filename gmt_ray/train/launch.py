"""Running the recipe on Ray Train: one TorchTrainer per configuration."""

from __future__ import annotations

from typing import Any

from gmt_ray.config import Experiment

__all__ = ["make_trainer"]


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
    from ray.train.torch import TorchConfig

    from gmt_ray.ray_compat import torch_trainer_class
    from gmt_ray.train.recipe import train_loop_per_worker

    wanted = config.resources
    per_worker = {"CPU": wanted.cpus_per_worker}
    if wanted.use_gpu:
        per_worker["GPU"] = wanted.gpus_per_worker
    local = config.local_storage()
    return torch_trainer_class()(
        train_loop_per_worker,
        train_loop_config={
            "experiment": config,
            "prepared": prepared,
            "metrics_path": metrics_path,
            "export_dir": export_dir,
        },
        torch_config=TorchConfig(backend="nccl" if wanted.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=wanted.num_workers, use_gpu=wanted.use_gpu, resources_per_worker=per_worker,
            accelerator_type=wanted.accelerator_type,
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=str(local) if local is not None else config.storage_path,
            failure_config=ray.train.FailureConfig(max_failures=wanted.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.train.keep_checkpoints),
            callbacks=callbacks or None,
        ),
    )
