"""Validation during training: the loss over the validation split (SFT) or the DPO loss
and pair metrics, each rank over its shard, all-reduced."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from gmt_ray.config import TrainConfig
from gmt_ray.data.tokens import IGNORE_INDEX, PreferenceSplit, TokenizedSplit, collate, collate_pairs
from gmt_ray.names import DPO_METRICS
from gmt_ray.train.dpo import dpo_batch_loss
from gmt_ray.train.parallel import autocast

__all__ = ["validation_dpo", "validation_loss"]


def _shard_batches(length: int, train: TrainConfig, rank: int, world: int) -> list[list[int]]:
    indices = list(range(rank, length, world))
    batches = [indices[i : i + train.micro_batch_size] for i in range(0, len(indices), train.micro_batch_size)]
    return batches[: train.eval_batches] if train.eval_batches is not None else batches


@torch.no_grad()
def validation_loss(model, dataset: TokenizedSplit, train: TrainConfig, *, rank: int, world: int,
                    device: torch.device, dtype: torch.dtype, pad_id: int) -> float:
    """Token-weighted loss over this rank's shard of the validation split, all-reduced."""
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # [loss sum, tokens]
    for chunk in _shard_batches(len(dataset), train, rank, world):
        batch = {k: v.to(device) for k, v in collate([dataset[i] for i in chunk], pad_id).items()}
        tokens = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        with autocast(device, dtype):
            loss = model(**batch, num_items_in_batch=max(tokens, 1)).loss
        totals += torch.tensor([float(loss) * tokens, tokens], dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(totals)
    model.train()
    return float(totals[0] / totals[1]) if totals[1] > 0 else math.nan


@torch.no_grad()
def validation_dpo(module, reference, dataset: PreferenceSplit, train: TrainConfig, *, rank: int, world: int,
                   device: torch.device, dtype: torch.dtype, pad_id: int) -> dict[str, float]:
    """DPO loss and pair metrics over the validation pairs, all-reduced, as ``val_*``."""
    module.eval()
    keys = ["loss", *DPO_METRICS]
    totals = torch.zeros(len(keys) + 1, dtype=torch.float64, device=device)  # sums, then pairs
    for chunk in _shard_batches(len(dataset), train, rank, world):
        batch = {k: v.to(device) for k, v in collate_pairs([dataset[i] for i in chunk], pad_id).items()}
        with autocast(device, dtype):
            losses, stats = dpo_batch_loss(module, reference, batch, train.dpo.beta, split="validation")
        values = [float(losses)] + [float(stats[k]) for k in DPO_METRICS] + [len(chunk)]
        totals += torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(totals)
    module.train()
    pairs = float(totals[-1])
    return {f"val_{k}": float(totals[i]) / pairs if pairs else math.nan for i, k in enumerate(keys)}
