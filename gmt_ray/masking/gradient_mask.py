"""``GradientMask``: sparsify the accumulated gradient (or the update) once per step.

    mask = GradientMask(model, method="gmt", mask_ratio=0.3)
    for micro_batch in micro_batches:
        loss(micro_batch).backward()   # gradients of all N micro-batches accumulate
    stats = mask.apply()               # once per optimizer step, never per micro-batch
    optimizer.step()

Semantics, all exact:

* ``mask_ratio`` r is the fraction zeroed (the paper's convention): each scope keeps
  ``k = ceil((1 - r) * n)`` entries, computed in exact decimal arithmetic.
* Ties: every entry whose score equals the k-th largest score is kept too, so the kept
  count exceeds k only where scores tie at the threshold. Zero gradients are never
  salient: an entry with g == 0 is never counted as kept, even below k nonzero entries.
* ``scope="tensor"`` ranks entries within each parameter tensor; ``scope="global"``
  ranks all eligible entries together (a large-gradient layer may then keep most of its
  entries and a quiet one almost none).
* ``apply_to="grad"`` zeroes gradient entries before the optimizer, so AdamW's moments
  see the masked gradient, and a masked entry can still move through its momentum.
  ``apply_to="update"`` leaves the gradient (and the moments) whole and makes the update
  itself sparse, the paper's rule theta <- theta - eta * M(Gamma): entries outside the mask
  do not move in that step. It hooks ``optimizer.step`` and steps one tensor at a time,
  so it needs an optimizer that updates each parameter independently (SGD, Adam, AdamW).
* Either way the kept set (the one ``stats.kept`` counts) is fixed at ``apply()``, whatever
  happens to the gradient before the step (clipping, a loss scaler's unscale, any
  rescale): in grad mode the masked entries are zeros, and a rescale leaves them zeros;
  in update mode ``apply()`` stores each tensor's keep mask, 1 bit per entry, until the
  step, and exactly those entries take the optimizer's update. Update mode therefore
  needs an ``apply()`` before every ``optimizer.step()``; a step without one raises.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import torch
from torch import nn

from gmt_ray.masking.adapters import refuse_adapters
from gmt_ray.masking.hft import hft_frozen_modules, module_of
from gmt_ray.masking.methods import MASK_METHODS
from gmt_ray.masking.scores import CachedScores, stable_seed
from gmt_ray.masking.selection import Reducer, kth_largest

__all__ = ["GradientMask", "MaskStats", "ProcessGroupReducer", "keep_count"]

SCOPES = ("tensor", "global")
APPLY_TO = ("grad", "update")

# The smallest positive float32: a threshold never falls below it, so zeros never count.
_MIN_POSITIVE = torch.tensor(1, dtype=torch.int32).view(torch.float32)
# Bit i of packed keep byte j is entry 8j + i of the flattened (local) tensor.
_BIT_VALUES = torch.tensor([1 << i for i in range(8)], dtype=torch.uint8)


@dataclass
class MaskStats:
    """What one ``apply()`` did.

    Attributes:
        kept: entries the mask selects to update (for gmt never a zero gradient; rmt's
            random subset may contain zero gradients and counts them).
        eligible: entries the mask governs.
        kept_fraction: kept / eligible.
        thresholds: the score threshold per scope (parameter name, or "global").
        seconds: wall time of ``apply()``.
    """

    kept: int
    eligible: int
    kept_fraction: float
    thresholds: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def keep_count(numel: int, mask_ratio: float) -> int:
    """ceil((1 - mask_ratio) * numel), exact for the decimal value of ``mask_ratio``."""
    return math.ceil((1 - Fraction(repr(float(mask_ratio)))) * numel)


class ProcessGroupReducer:
    """All-reduces selection counts over a ``torch.distributed`` process group."""

    def __init__(self, group=None):
        self.group = group

    def sum_(self, tensor: torch.Tensor) -> None:
        torch.distributed.all_reduce(tensor, torch.distributed.ReduceOp.SUM, group=self.group)

    def max_(self, tensor: torch.Tensor) -> None:
        torch.distributed.all_reduce(tensor, torch.distributed.ReduceOp.MAX, group=self.group)

    def min_(self, tensor: torch.Tensor) -> None:
        torch.distributed.all_reduce(tensor, torch.distributed.ReduceOp.MIN, group=self.group)


class GradientMask:
    """Masks accumulated gradients by one of the paper's methods.

    Args:
        model: an ``nn.Module`` or an iterable of ``(name, parameter)`` pairs.
        method: ``sft`` (no mask), ``gmt`` (keep the largest |grad|), ``rmt`` (keep a
            random subset of the same size, redrawn each step, identical on all ranks),
            or ``hft`` (freeze half of the matrices of each layer, fixed for the run).
        mask_ratio: fraction of entries zeroed, in [0, 1). Used by gmt and rmt.
        scope: ``tensor`` (a threshold per parameter) or ``global`` (one threshold).
        apply_to: ``grad`` or ``update`` (see the module docstring).
        optimizer: required for ``apply_to="update"``.
        include: regexes; a parameter is eligible if its name matches any (default: all).
        exclude: regexes; a matching parameter is left unmasked.
        seed: seeds rmt's draws and hft's choice.

    Raises:
        ValueError: for an unknown method, scope or apply_to, a mask_ratio outside
            [0, 1), an invalid regex, ``update`` without optimizer, no eligible
            parameter, or a model with PEFT adapters (``gmt_ray.masking.adapters``).
    """

    def __init__(
        self,
        model: nn.Module | Iterable[tuple[str, nn.Parameter]],
        method: str = "gmt",
        mask_ratio: float = 0.0,
        *,
        scope: str = "tensor",
        apply_to: str = "grad",
        optimizer: torch.optim.Optimizer | None = None,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
        seed: int = 0,
    ):
        if method not in MASK_METHODS:
            raise ValueError(f"method must be one of {tuple(MASK_METHODS)}, but got method={method!r}.")
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, but got scope={scope!r}.")
        if apply_to not in APPLY_TO:
            raise ValueError(f"apply_to must be one of {APPLY_TO}, but got apply_to={apply_to!r}.")
        if isinstance(mask_ratio, bool) or not isinstance(mask_ratio, (int, float)) or not 0 <= mask_ratio < 1:
            raise ValueError(f"mask_ratio must be a number in [0, 1), but got mask_ratio={mask_ratio!r}.")
        if apply_to == "update" and optimizer is None:
            raise ValueError("apply_to='update' needs the optimizer: pass optimizer=... to GradientMask.")
        refuse_adapters(model, method)  # LoRA & co.: masking the factors is not GMT (see adapters.py)
        include_patterns = _compile("include", include if include is not None else [".*"])
        exclude_patterns = _compile("exclude", exclude)

        named = model.named_parameters() if isinstance(model, nn.Module) else model
        self.parameters: dict[str, nn.Parameter] = {
            name: p
            for name, p in named
            if p.requires_grad
            and any(r.search(name) for r in include_patterns)
            and not any(r.search(name) for r in exclude_patterns)
        }
        if not self.parameters:
            raise ValueError(
                f"no trainable parameter matches include={list(include or ['.*'])} and exclude={list(exclude)}."
            )
        self.method = method
        self.mask_ratio = float(mask_ratio)
        self.scope = scope
        self.apply_to = apply_to
        self.seed = seed
        self.step = 0  # apply() calls so far; rmt draws from (seed, step, name)
        self.frozen: frozenset[str] = frozenset()
        if method == "hft":
            modules = hft_frozen_modules(self.parameters, seed)
            self.frozen = frozenset(n for n in self.parameters if module_of(n) in modules)
        self._thresholds: dict[str, torch.Tensor] = {}
        # Update mode: the step's kept set as apply() fixed it, by parameter name: packed
        # keep bits, or False for a tensor that stays whole (hft); an absent name updates
        # whole. None until apply() and again after the step that consumed it.
        self._kept_sets: dict[str, torch.Tensor | bool] | None = None
        self._hidden_grads: list[tuple[nn.Parameter, torch.Tensor | None]] = []
        self._in_sparse_step = False
        self._hooks = []
        if apply_to == "update":
            self._owners = {id(p): name for name, p in self.parameters.items()}
            self._hooks = [
                optimizer.register_step_pre_hook(self._sparse_step),
                optimizer.register_step_post_hook(self._restore_grads),
            ]

    # ------------------------------------------------------------------ public API

    @property
    def trainable_modules(self) -> list[str]:
        """Modules whose parameters the mask lets train at all (all but hft's frozen)."""
        return sorted({module_of(n) for n in self.parameters if n not in self.frozen})

    def apply(self) -> MaskStats:
        """Masks the accumulated gradients in place; call once per optimizer step."""
        start = time.perf_counter()
        self._thresholds = {}
        self._kept_sets = {} if self.apply_to == "update" else None
        grads = {n: p.grad for n, p in self.parameters.items() if p.grad is not None}
        eligible = sum(_full_numel(g) for g in grads.values())
        if self.method == "hft":
            kept = self._apply_hft(grads)
        elif MASK_METHODS[self.method].scores is None or self.mask_ratio == 0:
            kept = eligible  # no mask: every entry may update
        else:
            kept = self._apply_selection(grads)
        self.step += 1
        return MaskStats(
            kept=kept,
            eligible=eligible,
            kept_fraction=kept / eligible if eligible else 0.0,
            thresholds={n: float(t) for n, t in self._thresholds.items()},
            seconds=time.perf_counter() - start,
        )

    def state_dict(self) -> dict:
        """What a checkpoint needs to continue the same masks after resume."""
        # Not the kept sets of update mode: they live from one apply() to the step right
        # after it, and a step without its apply() raises, so a resumed run recomputes them.
        return {"step": self.step, "seed": self.seed, "method": self.method}

    def load_state_dict(self, state: dict) -> None:
        if state.get("method") != self.method or state.get("seed") != self.seed:
            raise ValueError(
                f"mask state is for method={state.get('method')!r}, seed={state.get('seed')!r}, "
                f"but this mask has method={self.method!r}, seed={self.seed!r}."
            )
        self.step = int(state["step"])

    def remove(self) -> None:
        """Detaches the optimizer hooks of ``apply_to='update'``."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    # ------------------------------------------------------------------ methods

    def _apply_hft(self, grads: dict[str, torch.Tensor]) -> int:
        kept = 0
        for name, grad in grads.items():
            if name in self.frozen:
                if self.apply_to == "grad":
                    # None, not zeros: the optimizer then skips the tensor entirely, so
                    # weight decay and momentum cannot move a frozen matrix either.
                    self.parameters[name].grad = None
                else:
                    self._thresholds[name] = torch.tensor(math.inf)
                    self._kept_sets[name] = False
            else:
                kept += _full_numel(grad)
        return kept

    def _score_source(self, name: str, grad: torch.Tensor):
        shard = torch.distributed.get_rank() if _is_sharded(grad) else 0
        return MASK_METHODS[self.method].scores(_local(grad), seed=self.seed, step=self.step, name=name, shard=shard)

    def _apply_selection(self, grads: dict[str, torch.Tensor]) -> int:
        reducer = _reducer_for(grads.values())
        generator = _generator(self.seed, self.step, next(iter(grads.values())).device)
        if self.scope == "global":
            sources = {n: self._score_source(n, g) for n, g in grads.items()}
            total = sum(_full_numel(g) for g in grads.values())
            threshold = self._select(list(sources.values()), total, reducer, generator)
            self._thresholds["global"] = threshold
            kept = sum(self._mask_(n, threshold, s) for n, s in sources.items())
        else:
            kept = 0
            for name, grad in grads.items():
                source = CachedScores(self._score_source(name, grad))
                threshold = self._select([source], _full_numel(grad), reducer, generator)
                self._thresholds[name] = threshold
                kept += self._mask_(name, threshold, source)
        if reducer is not None:
            kept_tensor = torch.tensor([kept], dtype=torch.int64, device=generator.device)
            reducer.sum_(kept_tensor)
            kept = int(kept_tensor.item())
        return kept

    def _select(self, sources, total: int, reducer: Reducer | None, generator) -> torch.Tensor:
        k = keep_count(total, self.mask_ratio)
        threshold = kth_largest(sources, k, total_numel=total, reducer=reducer, generator=generator)
        return torch.maximum(threshold, _MIN_POSITIVE.to(threshold.device))

    def _mask_(self, name: str, threshold: torch.Tensor, source) -> int:
        """Zeroes the unselected gradient entries (grad mode) or stores them for the step
        (update mode); returns this rank's kept count."""
        keep = source.scores() >= threshold
        if self.apply_to == "grad":
            local = _local(self.parameters[name].grad)
            local.mul_(keep.view_as(local))
        else:
            # Stored, not recomputed at the step: by then the gradient may be clipped or
            # unscaled, and its scores would no longer match this threshold.
            self._kept_sets[name] = _pack_bits(keep)
        return int(torch.count_nonzero(keep))

    # ------------------------------------------------------------------ apply_to="update"

    def _keep_for(self, name: str | None, parameter: nn.Parameter) -> torch.Tensor | None:
        """The keep mask of one (local) tensor as apply() fixed it; None if it all updates."""
        kept = self._kept_sets.get(name)
        if kept is None:
            return None
        local = _local(parameter.detach())
        if kept is False:
            return torch.zeros_like(local, dtype=torch.bool)
        return _unpack_bits(kept, local.numel()).view_as(local)

    def _sparse_step(self, optimizer, args, kwargs):
        if self._in_sparse_step:
            return None
        if self._kept_sets is None:
            raise RuntimeError(
                "apply_to='update': call mask.apply() before every optimizer.step(); the step "
                "moves only the entries that apply() kept."
            )
        closure = args[1] if len(args) > 1 else kwargs.get("closure")  # args[0] is the optimizer itself
        if closure is not None or len(args) > 2 or set(kwargs) - {"closure"}:
            # A closure would be re-run for every tensor's step; step(None) (accelerate's) is plain.
            raise ValueError("apply_to='update' does not support optimizer.step(closure).")
        if not self._kept_sets:  # nothing masked (sft, mask_ratio 0): a plain step
            self._kept_sets = None
            return None
        self._in_sparse_step = True
        groups = optimizer.param_groups
        all_params = [group["params"] for group in groups]
        try:
            for group in groups:
                group["params"] = []
            for group, params in zip(groups, all_params):
                for parameter in params:
                    if parameter.grad is None:
                        continue
                    name = self._owners.get(id(parameter))
                    before = _local(parameter.detach()).clone() if name in self._kept_sets else None
                    group["params"] = [parameter]
                    optimizer.step()
                    group["params"] = []
                    if before is not None:
                        # Unpacked only after the step, so the mask never coexists with the
                        # optimizer's temporaries; restored in place, without a second copy.
                        local = _local(parameter.detach())
                        torch.where(self._keep_for(name, parameter), local, before, out=local)
        finally:
            for group, params in zip(groups, all_params):
                group["params"] = params
            self._in_sparse_step = False
            self._kept_sets = None  # consumed (and freed): the next step needs a new apply()
        # Each tensor has had its step; hide the gradients so the caller's step is a no-op.
        self._hidden_grads = [(p, p.grad) for params in all_params for p in params]
        for parameter, _ in self._hidden_grads:
            parameter.grad = None
        return None

    def _restore_grads(self, optimizer, args, kwargs) -> None:
        if self._in_sparse_step:
            return
        for parameter, grad in self._hidden_grads:
            parameter.grad = grad
        self._hidden_grads = []


def _pack_bits(keep: torch.Tensor) -> torch.Tensor:
    """A bool tensor as flat uint8, 8 entries per byte: 1/8 of the bool's memory."""
    flat = keep.reshape(-1)
    if flat.numel() % 8:
        flat = torch.cat([flat, flat.new_zeros(-flat.numel() % 8)])
    bits = flat.view(-1, 8).view(torch.uint8)  # a bool is one byte holding 0 or 1
    return (bits * _BIT_VALUES.to(bits.device)).sum(dim=1, dtype=torch.uint8)


def _unpack_bits(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """The flat bool tensor of ``numel`` entries that ``_pack_bits`` packed."""
    return (packed.unsqueeze(1) & _BIT_VALUES.to(packed.device)).ne(0).reshape(-1)[:numel]


def _compile(option: str, patterns: Sequence[str]) -> list[re.Pattern]:
    if isinstance(patterns, str):
        patterns = [patterns]
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as error:
            raise ValueError(f"{option} pattern {pattern!r} is not a valid regex: {error}.") from None
    return compiled


def _is_sharded(tensor: torch.Tensor) -> bool:
    placements = getattr(tensor, "placements", None)
    return placements is not None and any(p.is_shard() for p in placements)


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _full_numel(tensor: torch.Tensor) -> int:
    return tensor.numel()  # a DTensor reports its global size


def _reducer_for(grads: Iterable[torch.Tensor]) -> Reducer | None:
    sharded = [_is_sharded(g) for g in grads]
    if not any(sharded):
        return None
    if not all(sharded):
        raise ValueError("GradientMask cannot mix sharded (FSDP) and whole gradients in one mask.")
    return ProcessGroupReducer()


def _generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(stable_seed("bracket", seed, step))
    return generator
