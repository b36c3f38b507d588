"""Data parallelism for the recipe: DDP or FSDP2, gradient sync, precision and devices."""

from __future__ import annotations

from contextlib import nullcontext

import torch

__all__ = ["autocast", "local_tensor", "no_sync", "parallelize", "synchronize"]


def parallelize(model: torch.nn.Module, parallelism: str, device: torch.device,
                gpu_dtype: torch.dtype | None) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the model to call, the bare module whose parameters the mask and checkpoints use)."""
    import ray.train.torch

    if parallelism == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        model.to(device)
        policy = MixedPrecisionPolicy(param_dtype=gpu_dtype) if gpu_dtype is not None else MixedPrecisionPolicy()
        for layer in _decoder_layers(model):
            fully_shard(layer, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        return model, model
    wrapped = ray.train.torch.prepare_model(model)  # DDP when there is more than one worker
    return wrapped, wrapped.module if hasattr(wrapped, "module") else wrapped


def _decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 0:
            return list(module)
    return []


def no_sync(model: torch.nn.Module, parallelism: str, last: bool):
    """Gradient all-reduce only on the step's last micro-batch (DDP and FSDP both sync on
    every backward unless told not to)."""
    if parallelism == "ddp" and not last and hasattr(model, "no_sync"):
        return model.no_sync()
    if parallelism == "fsdp" and hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(last)
    return nullcontext()


def autocast(device: torch.device, dtype: torch.dtype):
    if device.type == "cuda" and dtype == torch.bfloat16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def synchronize(device: torch.device) -> None:
    """Waits for the GPU, so that wall-clock timings mean what they say."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of an FSDP (DTensor) parameter; the tensor itself otherwise."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor
