"""How each masking method picks the entries that update (the methods' names, and Drop's,
are gmt_ray.names's: every layer reads them there).

``GradientMask`` applies the masking methods (``MASK_METHODS``) at every step; ``drop``
trains as sft and resets a ratio of the fine-tuning deltas afterwards (the paper's
post-hoc Drop baseline, masking/drop.py). A new method that ranks entries is a score source
in ``scores.py``, an entry here and its name in gmt_ray/names.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from gmt_ray import names
from gmt_ray.masking.scores import GradientScores, RandomScores, stable_seed

__all__ = ["MASK_METHODS", "MaskMethod"]


def _largest_gradients(grad: torch.Tensor, *, seed: int, step: int, name: str, shard: int):
    return GradientScores(grad)


def _random_subset(grad: torch.Tensor, *, seed: int, step: int, name: str, shard: int):
    # Redrawn each step, the same on every replica, apart on every shard.
    return RandomScores(grad.numel(), stable_seed(seed, step, name, shard), grad.device)


@dataclass(frozen=True)
class MaskMethod:
    """How a masking method picks the gradient entries that update.

    Attributes:
        summary: what it keeps, in a few words.
        uses_mask_ratio: whether ``mask_ratio`` means anything to it.
        scores: ranks one tensor's entries (this rank's local gradient, and the seed, step,
            parameter name and shard its draws may depend on); the largest
            ``ceil((1 - mask_ratio) * n)`` update. None: no per-entry selection.
    """

    summary: str
    uses_mask_ratio: bool
    scores: Callable | None = None


MASK_METHODS: dict[str, MaskMethod] = {
    "sft": MaskMethod("no mask: every entry updates", uses_mask_ratio=False),
    "gmt": MaskMethod("the largest |accumulated gradient|", uses_mask_ratio=True, scores=_largest_gradients),
    "rmt": MaskMethod("a random subset of gmt's size", uses_mask_ratio=True, scores=_random_subset),
    # Half Fine-Tuning freezes whole matrices (masking/hft.py): a choice per run, not per entry.
    "hft": MaskMethod("half of each layer's matrices, fixed for the run", uses_mask_ratio=False),
}
if tuple(MASK_METHODS) != names.MASK_METHODS or any(
        MASK_METHODS[m].uses_mask_ratio != names.uses_mask_ratio(m) for m in MASK_METHODS):
    raise ImportError("gmt_ray.masking.methods and gmt_ray.names disagree on the masking methods")
