"""Each rank's micro-batches in a deterministic, resumable order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from gmt_ray.data.tokens import collate

__all__ = ["ShardBatches", "Step"]


@dataclass
class Step:
    """One optimizer step's micro-batches, and what they hold without padding."""

    micro_batches: list[dict[str, torch.Tensor]]
    sequences: int  # rows of the padded layout (a DPO pair is two)
    tokens: int  # their tokens, padding excluded


class ShardBatches:
    """This rank's micro-batches in a deterministic order; (epoch, offset) is all its state.

    Shuffling and sharding come from torch's DistributedSampler with the rank and world
    size, so every rank sees a disjoint shard and a resumed run the same order.
    """

    def __init__(self, dataset, batch_size: int, rank: int, world: int, seed: int, pad_id: int,
                 collate_fn: Callable = collate, packing: Callable | None = None):
        """``packing``: a ``gmt_ray.data.packing.PackedSteps``; ``next_step`` then packs each step's
        examples (the same examples, in the same steps) instead of padding them."""
        self.dataset, self.batch_size, self.pad_id, self.collate_fn = dataset, batch_size, pad_id, collate_fn
        self.packing = packing
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
        """The next padded micro-batch."""
        return self.collate_fn(self._next_examples(), self.pad_id)

    def next_step(self, micro_batches: int) -> Step:
        """The next ``micro_batches`` micro-batches' examples as one step: padded micro-batches as
        ``next`` gives them, or the same examples packed (``packing``)."""
        parts = [self._next_examples() for _ in range(micro_batches)]
        if self.packing is None:
            batches = [self.collate_fn(part, self.pad_id) for part in parts]
            return Step(batches, sequences=sum(len(b["input_ids"]) for b in batches),
                        tokens=sum(int(b["attention_mask"].sum()) for b in batches))
        examples = [example for part in parts for example in part]
        return Step(self.packing(examples, micro_batches, self.pad_id), sequences=len(examples),
                    tokens=sum(len(example[0]) for example in examples))

    def _next_examples(self) -> list:
        if self.offset == self.batches_per_epoch:
            self.epoch, self.offset, self._order = self.epoch + 1, 0, None
        if self._order is None:
            self.sampler.set_epoch(self.epoch)
            self._order = list(self.sampler)
        start = self.offset * self.batch_size
        examples = [self.dataset[i] for i in self._order[start : start + self.batch_size]]
        self.offset += 1
        return examples

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.offset, self._order = state["epoch"], state["offset"], None
