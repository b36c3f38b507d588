"""Data parallelism for the recipe: DDP or FSDP2, gradient sync, precision and devices."""

from __future__ import annotations

from contextlib import nullcontext

import torch

__all__ = ["autocast", "load_sharded_weights_", "local_tensor", "no_sync", "parallelize", "synchronize"]


def parallelize(model: torch.nn.Module, parallelism: str, device: torch.device,
                gpu_dtype: torch.dtype | None) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the model to call, the bare module whose parameters the mask and checkpoints use).

    A model on the meta device (FSDP only) stays there: see ``load_sharded_weights_``.
    DDP wraps the model only where the default process group has more than one rank.
    """
    import torch.distributed as dist

    if parallelism == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        if not _on_meta(model):
            model.to(device)
        policy = MixedPrecisionPolicy(param_dtype=gpu_dtype) if gpu_dtype is not None else MixedPrecisionPolicy()
        for layer in _decoder_layers(model):
            fully_shard(layer, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        return model, model
    model.to(device)
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return model, model
    from torch.nn.parallel import DistributedDataParallel

    # As Ray Train's prepare_model wraps it: DDP's defaults, the worker's own GPU.
    wrapped = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    return wrapped, model


@torch.no_grad()
def load_sharded_weights_(module: torch.nn.Module, source: str, device: torch.device) -> None:
    """Materialises this rank's shards of a model built on the meta device and sharded by
    ``parallelize``, then fills them from ``source`` (``models.WeightFiles``) one decoder
    layer at a time: rank 0 reads the layer's tensors and broadcasts them, every rank keeps
    its own shards. Peak memory per rank: its shards plus about one layer.

    Every rank must call it (collective).

    Raises:
        ValueError: on every rank, when the files' tensors do not fit the model (named).
    """
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    from gmt_ray.models import WeightFiles

    module.to_empty(device=device)
    _init_non_persistent_buffers_(module)
    aliases = _aliases(module)
    files = WeightFiles(source) if dist.get_rank() == 0 else None
    # Rank 0 alone sees the files: it checks them first and tells everyone, so that all
    # ranks fail together instead of waiting forever on a broadcast that never comes.
    problem = [_mismatch(module, aliases, files, source) if files is not None else None]
    dist.broadcast_object_list(problem, src=0)
    if problem[0] is not None:
        raise ValueError(problem[0])
    params = module.state_dict(keep_vars=True)
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)
    stored_names = set(files.names()) if files is not None else set()
    for names in _chunks(module, list(aliases)):
        chunk = {}
        if files is not None:
            stored = {name: next(a for a in aliases[name] if a in stored_names) for name in names}
            tensors = files.read(list(stored.values()))
            # The parameter's dtype before the broadcast: bf16 files into fp32 masters.
            chunk = {name: tensors[stored[name]].to(params[name].dtype) for name in names}
            del tensors
        set_model_state_dict(module, chunk, options=options)


def _on_meta(model: torch.nn.Module) -> bool:
    return any(p.is_meta for p in model.parameters())


def _init_non_persistent_buffers_(model: torch.nn.Module) -> None:
    """Buffers that no file holds (rotary ``inv_freq``), computed again from the config:
    ``to_empty`` left them uninitialised. Hugging Face models know how in ``_init_weights``."""
    for module in model.modules():
        if module._non_persistent_buffers_set:
            if not hasattr(model, "_init_weights"):
                raise TypeError(f"{type(model).__name__} has non-persistent buffers in {type(module).__name__} "
                                "and no _init_weights to compute them on the meta-device path")
            model._init_weights(module)


def _aliases(module: torch.nn.Module) -> dict[str, list[str]]:
    """Each stored tensor of the model under its first name -> all its names (tied
    embeddings are one tensor with two names; a file may hold either, or both)."""
    by_tensor: dict[int, list[str]] = {}
    for name, tensor in module.state_dict(keep_vars=True).items():
        by_tensor.setdefault(id(tensor), []).append(name)
    return {names[0]: names for names in by_tensor.values()}


def _mismatch(module: torch.nn.Module, aliases: dict[str, list[str]], files, source: str) -> str | None:
    """What keeps ``files`` from loading into ``module`` (None: nothing), as the old strict
    ``load_state_dict`` would have refused it."""
    shapes = files.shapes()
    params = module.state_dict(keep_vars=True)
    known = {a for names in aliases.values() for a in names}
    ignored = {name for name, _ in module.named_buffers() if name not in params}  # old checkpoints' inv_freq
    missing = [name for name, names in aliases.items() if not any(a in shapes for a in names)]
    unexpected = [name for name in shapes if name not in known and name not in ignored]
    wrong = [f"{a} {shapes[a]} (model: {tuple(params[name].shape)})" for name, names in aliases.items()
             for a in names if a in shapes and shapes[a] != tuple(params[name].shape)]
    problems = [f"{label}: {', '.join(items[:5])}{f' (+{len(items) - 5} more)' if len(items) > 5 else ''}"
                for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if items]
    if not problems:
        return None
    model_type = getattr(getattr(module, "config", None), "model_type", type(module).__name__)
    return f"the weights in {source} do not fit model {model_type!r}: " + "; ".join(problems)


def _chunks(module: torch.nn.Module, names: list[str]) -> list[list[str]]:
    """``names`` grouped by decoder layer (one layer's tensors load together); any other
    tensor (embeddings, final norm, head) on its own."""
    prefixes = {id(m): name + "." for name, m in module.named_modules()}
    layers = [prefixes[id(layer)] for layer in _decoder_layers(module)]
    chunks: dict[str, list[str]] = {}
    for name in names:
        key = next((prefix for prefix in layers if name.startswith(prefix)), name)
        chunks.setdefault(key, []).append(name)
    return list(chunks.values())


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
