"""Post-hoc dropping of delta weights: the paper's Drop baseline and its strategy study.

Given base weights and fine-tuned weights, a ratio p of the deltas is reset to the base:
``trivial`` drops the smallest |delta|, ``salient`` the largest, and ``random`` a
uniformly random subset (DARE, Yu et al. 2024), optionally rescaling the survivors by
1 / (1 - p) to keep the expected delta.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from gmt_ray.masking.gradient_mask import keep_count
from gmt_ray.masking.scores import CachedScores, RandomScores, stable_seed
from gmt_ray.masking.selection import Reducer, kth_largest
from gmt_ray.names import DROP_STRATEGIES

__all__ = ["drop_delta"]

class _DeltaScores:
    """|delta| for ``trivial``; -|delta| reflected into order-preserving positive keys for ``salient``."""

    def __init__(self, base: torch.Tensor, tuned: torch.Tensor, largest_first: bool):
        self.base, self.tuned, self.largest_first = base, tuned, largest_first
        self.numel = tuned.numel()
        self.device = tuned.device

    def _keys(self, delta: torch.Tensor) -> torch.Tensor:
        magnitude = delta.abs().float()
        if self.largest_first:
            return magnitude
        # Ranking the *smallest* first: flip the order of the float bits, which for
        # non-negative floats is the order of the values, into another non-negative key.
        return (0x7F800000 - magnitude.view(torch.int32)).view(torch.float32)

    def scores(self) -> torch.Tensor:
        return self._keys((self.tuned.detach().float() - self.base.detach().float()).reshape(-1))

    def sample(self, count: int, generator: torch.Generator) -> torch.Tensor:
        index = torch.randint(self.numel, (count,), generator=generator, device=generator.device).to(self.device)
        delta = self.tuned.detach().reshape(-1)[index].float() - self.base.detach().reshape(-1)[index].float()
        return self._keys(delta)


def drop_delta(
    base: Mapping[str, torch.Tensor],
    tuned: Mapping[str, torch.Tensor],
    drop_ratio: float,
    *,
    strategy: str = "trivial",
    scope: str = "tensor",
    rescale: bool = True,
    seed: int = 0,
    reducer: Reducer | None = None,
    full_numels: Mapping[str, int] | None = None,
    shard: int = 0,
) -> dict[str, torch.Tensor]:
    """Drops a ratio of delta parameters and returns new weights.

    Sharded weights (FSDP) are dropped exactly as whole ones: every rank passes its shards,
    the full sizes and a reducer, and the thresholds come from counts all-reduced over the
    ranks, so the dropped set is the one a single process would drop on the full tensors
    (for ``random``, an exact count over the full tensor, with draws that differ by shard).

    Args:
        base: state dict of the model before fine-tuning (this rank's shards, with a reducer).
        tuned: state dict after fine-tuning (same keys and shapes; floating tensors
            are dropped, others copied).
        drop_ratio: fraction of deltas reset to the base, in [0, 1).
        strategy: ``trivial`` (smallest |delta|), ``random`` (DARE) or ``salient``
            (largest |delta|).
        scope: ``tensor`` (the ratio per tensor) or ``global`` (over all tensors).
        rescale: for ``random`` only, scale the kept deltas by 1 / (1 - drop_ratio).
        seed: seeds ``random``.
        reducer: all-reduces selection counts over the ranks holding shards (None: whole tensors).
        full_numels: each tensor's full size, when the tensors are shards.
        shard: this rank's index among the shard holders; seeds ``random`` apart per shard.

    Returns:
        A new state dict; the inputs are not modified.

    Raises:
        ValueError: for an unknown strategy or scope, a ratio outside [0, 1), or
            state dicts whose keys or shapes differ.
    """
    if strategy not in DROP_STRATEGIES:
        raise ValueError(f"strategy must be one of {DROP_STRATEGIES}, but got strategy={strategy!r}.")
    if scope not in ("tensor", "global"):
        raise ValueError(f"scope must be 'tensor' or 'global', but got scope={scope!r}.")
    if isinstance(drop_ratio, bool) or not isinstance(drop_ratio, (int, float)) or not 0 <= drop_ratio < 1:
        raise ValueError(f"drop_ratio must be a number in [0, 1), but got drop_ratio={drop_ratio!r}.")
    if set(base) != set(tuned):
        raise ValueError(f"base and tuned state dicts differ in keys: {sorted(set(base) ^ set(tuned))[:5]}.")
    for name in base:
        if base[name].shape != tuned[name].shape:
            raise ValueError(
                f"{name}: base shape {tuple(base[name].shape)} != tuned shape {tuple(tuned[name].shape)}."
            )

    names = [n for n in tuned if tuned[n].is_floating_point()]
    out = {n: tuned[n].detach().clone() for n in tuned if n not in names}
    if drop_ratio == 0:
        out.update({n: tuned[n].detach().clone() for n in names})
        return out

    def source(name: str):
        if strategy == "random":
            # Seeded by the shard too: the same seed on every shard would repeat one pattern.
            return RandomScores(tuned[name].numel(), stable_seed("drop", seed, name, shard), tuned[name].device)
        # Kept entries rank first: the largest |delta| for trivial, the smallest for salient.
        return _DeltaScores(base[name], tuned[name], largest_first=strategy == "trivial")

    full = {n: full_numels[n] if full_numels is not None else tuned[n].numel() for n in names}
    generator = torch.Generator().manual_seed(seed)
    sources = {n: CachedScores(source(n)) if scope == "tensor" else source(n) for n in names}
    if scope == "global":
        total = sum(full.values())
        threshold = kth_largest(list(sources.values()), keep_count(total, drop_ratio), total_numel=total,
                                reducer=reducer, generator=generator)
    scale = 1.0 / (1.0 - drop_ratio) if strategy == "random" and rescale else 1.0
    for name in names:
        if scope == "tensor":
            if full[name] == 0:  # the full size: every rank must take the same branch (collectives)
                out[name] = tuned[name].detach().clone()
                continue
            threshold = kth_largest([sources[name]], keep_count(full[name], drop_ratio), total_numel=full[name],
                                    reducer=reducer, generator=generator)
        keep = (sources[name].scores() >= threshold).view_as(tuned[name])
        delta = tuned[name].detach().float() - base[name].detach().float()
        out[name] = (base[name].detach().float() + delta * keep * scale).to(tuned[name].dtype)
    return out
