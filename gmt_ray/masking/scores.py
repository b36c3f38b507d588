"""Score sources: what each masking method ranks, one tensor at a time.

GMT ranks entries by |accumulated gradient|; RMT by random keys, which makes its
"uniformly random subset of exactly k entries" the same selection problem as GMT's.
"""

from __future__ import annotations

import hashlib

import torch

__all__ = ["CachedScores", "GradientScores", "RandomScores", "random_keys", "stable_seed"]

# Random keys are positive finite float32 bit patterns with 30 random bits: 2^30
# distinct values (rand() has only 2^24, which would tie often in tensors of tens of
# millions of entries), never zero (so never mistaken for a zero gradient), ordered
# like their bits.
_KEY_BITS = (1 << 30) - 1


def random_keys(count: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """``count`` i.i.d. random keys: float32 whose bit patterns are uniform in 1 .. 2^30."""
    # One 64-bit draw yields two keys: about twice as fast as int32 randint on CPU.
    words = torch.empty((count + 1) // 2, dtype=torch.int64, device=device).random_(generator=generator)
    keys = words.view(torch.int32)[:count]
    return keys.bitwise_and_(_KEY_BITS).add_(1).view(torch.float32)


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from its parts, the same in every process and Python session."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class GradientScores:
    """|g| as flat float32; bf16/fp16 gradients are widened, which is exact."""

    def __init__(self, grad: torch.Tensor):
        self.grad = grad
        self.numel = grad.numel()
        self.device = grad.device

    def scores(self) -> torch.Tensor:
        return self.grad.detach().reshape(-1).abs().float()

    def sample(self, count: int, generator: torch.Generator) -> torch.Tensor:
        index = torch.randint(self.numel, (count,), generator=generator, device=generator.device)
        return self.grad.detach().reshape(-1)[index.to(self.device)].abs().float()


class RandomScores:
    """Random keys drawn from ``seed``; the same keys on every call and every rank."""

    def __init__(self, numel: int, seed: int, device: torch.device):
        self.numel = numel
        self.seed = seed
        self.device = torch.device(device)

    def _generator(self, seed: int) -> torch.Generator:
        generator = torch.Generator(device=self.device)
        generator.manual_seed(seed)
        return generator

    def scores(self) -> torch.Tensor:
        return random_keys(self.numel, self._generator(self.seed), self.device)

    def sample(self, count: int, generator: torch.Generator) -> torch.Tensor:
        # Keys are i.i.d., so fresh keys have the same distribution as a sample of them.
        return random_keys(count, generator, generator.device).to(self.device)


class CachedScores:
    """Computes a source's scores once; for scopes of a single tensor, whose scores fit."""

    def __init__(self, source):
        self.source = source
        self.numel = source.numel
        self.device = source.device
        self._scores: torch.Tensor | None = None

    def scores(self) -> torch.Tensor:
        if self._scores is None:
            self._scores = self.source.scores()
        return self._scores

    def sample(self, count: int, generator: torch.Generator) -> torch.Tensor:
        return self.source.sample(count, generator)
