"""The training methods a sweep compares, by name: the one list every layer reads.

``GradientMask`` applies the masking methods during training; ``drop`` trains as sft and
resets a ratio of the fine-tuning deltas afterwards (the paper's post-hoc Drop baseline).
"""

from __future__ import annotations

__all__ = ["DROP_STRATEGIES", "METHODS", "MASK_METHODS", "RATIO_FREE_METHODS", "uses_mask_ratio"]

MASK_METHODS = ("sft", "gmt", "rmt", "hft")  # applied by GradientMask at every step
METHODS = (*MASK_METHODS, "drop")  # in the order reports list them
# sft masks nothing and hft always freezes half the matrices: a mask ratio means nothing to them.
RATIO_FREE_METHODS = ("sft", "hft")
# Which deltas drop resets: the smallest |delta| (the paper's Drop), a random subset (DARE),
# or the largest.
DROP_STRATEGIES = ("trivial", "random", "salient")


def uses_mask_ratio(method: str) -> bool:
    return method not in RATIO_FREE_METHODS
