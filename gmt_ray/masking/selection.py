"""Exact k-th largest selection over many tensors, without sorting them.

The masking methods all reduce to one question: given non-negative float32 scores
spread over one or more tensors (possibly sharded across ranks), what is the k-th
largest score? The answer must be exact (the kept count is part of the method's
definition) and nearly free next to an optimizer step.

How it is answered:

1. Bracket. Score a small random sample and pick a value range ``[lo, hi]`` that
   holds the k-th largest score with overwhelming probability (a +-6 sigma binomial
   margin around the target rank in the sample).
2. Count. One pass over the scores counts the entries above ``hi`` and keeps the
   (few) positive entries inside the bracket. If the counts prove the k-th largest
   lies inside, a radix select over the bracket's entries finds it exactly.
3. Fallback. If the bracket missed (or the scores are too few to sample), a radix
   select over all scores: four passes of 8-bit histograms over the float bits.
   For non-negative IEEE floats the bit pattern read as an integer has the same order
   as the value, so histograms of bit digits find the exact k-th value. Histograms
   add up, so sharded scores only need their counts all-reduced.

Nothing here sorts. On one process, small sets (a small scope, a bracket's entries) go
to ``torch.kthvalue``, itself a selection; sharded scopes use the radix select, whose
histograms all-reduce. No pass is longer than one tensor, which keeps every call below
the INT_MAX / 2^24 element limits of CUDA's sort, topk and quantile, and the extra
memory is a few bytes per element of the largest single tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol

import torch

__all__ = ["Reducer", "ScoreSource", "kth_largest", "radix_kth_largest"]

# Below this many scores in a scope, sampling costs more than it saves.
_SAMPLE_MIN_NUMEL = 1 << 16
# Binomial sigmas of margin around the target rank in the sample: a miss (which only
# costs the radix fallback, never correctness) has probability ~1e-9.
_BRACKET_SIGMAS = 6.0


class Reducer(Protocol):
    """Sums or takes the extremes of a tensor across the ranks that hold shards of a scope.

    ``None`` is used instead of a reducer when every rank holds whole tensors.
    """

    def sum_(self, tensor: torch.Tensor) -> None: ...

    def max_(self, tensor: torch.Tensor) -> None: ...

    def min_(self, tensor: torch.Tensor) -> None: ...


class ScoreSource(Protocol):
    """One segment of a scope: a tensor's scores, produced on demand.

    ``scores()`` returns a flat, contiguous, non-negative float32 tensor and must return
    the same values every call: scores of a large scope are recomputed per pass rather
    than stored, so that no pass holds more than one tensor's scores.
    """

    numel: int
    device: torch.device

    def scores(self) -> torch.Tensor: ...

    def sample(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """``count`` scores drawn from the same distribution (only steers speed)."""
        ...


def _as_bits(values: torch.Tensor) -> torch.Tensor:
    return values.contiguous().view(torch.int32)


def radix_kth_largest(
    passes: Callable[[], "Sequence[torch.Tensor] | object"],
    k: int,
    reducer: Reducer | None,
    device: torch.device,
) -> torch.Tensor:
    """Exact k-th largest (1-based) of non-negative float32 values, by 8-bit radix digits.

    Args:
        passes: called once per digit; returns an iterable of flat float32 tensors that
            together hold this rank's values (the same values every call).
        k: rank of the wanted value among the values of all ranks, 1 <= k <= total.
        reducer: sums histograms across ranks, or None for a single holder.
        device: where the histograms live.

    Returns:
        A 0-dim float32 tensor holding the k-th largest value.
    """
    prefix = 0
    remaining = k
    for shift in (24, 16, 8, 0):
        histogram = torch.zeros(256, dtype=torch.int64, device=device)
        for values in passes():
            bits = _as_bits(values)
            if shift < 24:
                bits = bits[(bits >> (shift + 8)) == prefix]
            histogram += torch.bincount((bits >> shift) & 0xFF, minlength=256)
        if reducer is not None:
            reducer.sum_(histogram)
        # Counts of values whose digit is >= d, for d = 255 .. 0.
        at_or_above = histogram.flip(0).cumsum(0)
        position = int(torch.searchsorted(at_or_above, torch.tensor([remaining], device=device)).item())
        if position > 0:
            remaining -= int(at_or_above[position - 1].item())
        prefix = (prefix << 8) | (255 - position)
    return torch.tensor([prefix], dtype=torch.int32).view(torch.float32)[0].to(device)


def _sample_size(numel: int) -> int:
    # Bracket width shrinks like 1/sqrt(sample): n^(2/3) keeps the bracket's entries
    # (~n^(2/3)) and the sample itself of the same small order.
    return int(min(numel, max(4096, numel ** (2.0 / 3.0)), 1 << 22))


def kth_largest(
    segments: Sequence[ScoreSource],
    k: int,
    *,
    total_numel: int | None = None,
    reducer: Reducer | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Exact k-th largest score over all segments (and all ranks, with a reducer).

    Args:
        segments: this rank's score sources for the scope.
        k: 1 <= k <= total_numel.
        total_numel: number of scores across all ranks (defaults to this rank's).
        reducer: combines counts across ranks holding shards of the scope.
        generator: randomness for the bracket sample (affects speed, never the result).

    Returns:
        A 0-dim float32 tensor. Ties: every score equal to it counts as at or above it.
    """
    local_numel = sum(s.numel for s in segments)
    total = local_numel if total_numel is None else total_numel
    if not 1 <= k <= total:
        raise ValueError(f"k must be in [1, {total}], but got k={k}.")
    device = _device_of(segments)

    def all_scores():
        return (s.scores() for s in segments)

    if total < _SAMPLE_MIN_NUMEL:
        if reducer is None:  # small and whole: one kthvalue beats several radix passes
            return _kthvalue_from_top(torch.cat(list(all_scores())), k)
        return radix_kth_largest(all_scores, k, reducer, device)

    generator = generator if generator is not None else _default_generator(device)
    lo, hi = _bracket(segments, local_numel, k / total, generator, device)
    if reducer is not None:
        reducer.min_(lo)
        reducer.max_(hi)

    # Count pass: entries above the bracket, and the positive entries inside it.
    counts = torch.zeros(2, dtype=torch.int64, device=device)  # [above hi, inside]
    inside: list[torch.Tensor] = []
    lo_is_zero = float(lo) <= 0.0
    for scores in all_scores():
        counts[0] += torch.count_nonzero(scores > hi)
        in_range = (scores > 0) if lo_is_zero else (scores >= lo)
        in_bracket = scores[in_range.logical_and_(scores <= hi)]
        counts[1] += in_bracket.numel()
        inside.append(in_bracket)
    if reducer is not None:
        reducer.sum_(counts)
    above, in_count = (int(c) for c in counts.tolist())

    if above < k <= above + in_count:
        if reducer is None:
            return _kthvalue_from_top(torch.cat(inside), k - above)
        return radix_kth_largest(lambda: inside, k - above, reducer, device)
    if k > above + in_count and lo_is_zero:
        # Fewer than k positive scores: the k-th largest is zero.
        return torch.zeros((), dtype=torch.float32, device=device)
    del inside
    return radix_kth_largest(all_scores, k, reducer, device)


def _kthvalue_from_top(values: torch.Tensor, k: int) -> torch.Tensor:
    return values.kthvalue(values.numel() - k + 1).values.reshape(()).to(torch.float32)


def _bracket(
    segments: Sequence[ScoreSource],
    local_numel: int,
    keep_fraction: float,
    generator: torch.Generator,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    size = _sample_size(local_numel)
    # Sample each segment in proportion to its size so the pooled sample is uniform.
    parts = [
        s.sample(max(1, round(size * s.numel / local_numel)), generator).float()
        for s in segments
        if s.numel > 0
    ]
    if not parts:  # a rank holding no shard of this scope: neutral for min/max
        return torch.full((), math.inf, device=device), torch.zeros((), device=device)
    sample = torch.cat(parts)
    m = sample.numel()
    target = keep_fraction * m  # rank from the top of the k-th largest, in the sample
    margin = _BRACKET_SIGMAS * math.sqrt(m * keep_fraction * (1 - keep_fraction)) + 2
    # kthvalue ranks from the bottom: the r-th smallest is the (m - r + 1)-th largest.
    rank_hi = min(m, max(1, math.floor(m - (target - margin) + 1)))
    rank_lo = min(m, max(1, math.ceil(m - (target + margin) + 1)))
    hi = sample.kthvalue(rank_hi).values if target - margin > 0 else sample.max() * 2 + 1
    lo = sample.kthvalue(rank_lo).values if target + margin < m else torch.zeros((), device=device)
    return lo.reshape(()).to(device, torch.float32), hi.reshape(()).to(device, torch.float32)


def _device_of(segments: Sequence[ScoreSource]) -> torch.device:
    for s in segments:
        return s.device  # type: ignore[attr-defined]
    return torch.device("cpu")


def _default_generator(device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(0)
    return generator
