"""Each rank's micro-batches in a deterministic, resumable order."""

from __future__ import annotations

from collections.abc import Callable

import torch

from gmt_ray.data.tokens import collate

__all__ = ["ShardBatches"]


class ShardBatches:
    """This rank's micro-batches in a deterministic order; (epoch, offset) is all its state.

    Shuffling and sharding come from torch's DistributedSampler with the rank and world
    size, so every rank sees a disjoint shard and a resumed run the same order.
    """

    def __init__(self, dataset, batch_size: int, rank: int, world: int, seed: int, pad_id: int,
                 collate_fn: Callable = collate):
        self.dataset, self.batch_size, self.pad_id, self.collate_fn = dataset, batch_size, pad_id, collate_fn
        self.sampler = torch.utils.data.DistributedSampler(
            dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.batches_per_epoch = len(self.sampler) // batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{len(dataset)} training examples are too few for micro_batch_size={batch_size} "
                f"on {world} workers"
            )
        self.epoch, self.offset = 0, 0
        self._order: list[int] | None = None

    def next(self) -> dict[str, torch.Tensor]:
        if self.offset == self.batches_per_epoch:
            self.epoch, self.offset, self._order = self.epoch + 1, 0, None
        if self._order is None:
            self.sampler.set_epoch(self.epoch)
            self._order = list(self.sampler)
        start = self.offset * self.batch_size
        batch = self.collate_fn([self.dataset[i] for i in self._order[start : start + self.batch_size]], self.pad_id)
        self.offset += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.offset, self._order = state["epoch"], state["offset"], None
