"""``GradientMaskCallback``: GMT in a plain Hugging Face ``transformers.Trainer``.

    from gmt_ray.integrations.transformers import GradientMaskCallback

    trainer = Trainer(model=model, args=args, train_dataset=data,
                      callbacks=[GradientMaskCallback(method="gmt", mask_ratio=0.3)])

The project's recipe does, per optimizer step::

    N x (forward, backward)  ->  mask.apply()  ->  clip  ->  optimizer.step()

The Trainer (transformers 5.x, ``Trainer._inner_training_loop``) does::

    N x (forward, backward)  ->  clip (args.max_grad_norm)  ->  on_pre_optimizer_step  ->  optimizer.step()

``on_pre_optimizer_step`` runs once per optimizer step, after the last micro-batch, so the
mask sees the fully accumulated gradient, as in the recipe. But the Trainer has clipped
by then: its coefficient is max_norm / ||g||, the recipe's max_norm / ||M(g)||, and the
masked gradient that reaches AdamW differs. To be exact the callback takes clipping over:
when training begins it sets ``args.max_grad_norm`` to 0 (the Trainer then only measures
the norm, for its ``grad_norm`` log, which is therefore the norm before masking), masks,
clips the masked gradient to the original ``max_grad_norm`` itself, and restores
``args.max_grad_norm`` when training ends.

Not supported: DeepSpeed, which steps the optimizer inside ``backward`` before any
callback sees the gradient (refused); models with PEFT adapters (refused by
``GradientMask``, see ``gmt_ray.masking.adapters``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from gmt_ray.masking import GradientMask, MaskStats

__all__ = ["GradientMaskCallback"]


class GradientMaskCallback(TrainerCallback):
    """Masks the accumulated gradient once per optimizer step of a ``transformers.Trainer``.

    Takes the model (and, for ``apply_to="update"``, the optimizer) from the Trainer's
    callback arguments. Options and defaults are ``GradientMask``'s, so every trainable
    parameter is masked unless ``include``/``exclude`` say otherwise. Options and the model
    are checked when the Trainer is built (``on_init_end``), not after data loading.

    Args:
        method: ``sft``, ``gmt``, ``rmt`` or ``hft``.
        mask_ratio: fraction of entries zeroed, in [0, 1).
        scope: ``tensor`` or ``global``.
        apply_to: ``grad`` or ``update``.
        include: regexes of the parameter names the mask governs (default: all).
        exclude: regexes of parameter names left unmasked.
        seed: rmt's draws and hft's choice.

    Attributes:
        mask: the ``GradientMask`` of the current training run (None before it).
        last_stats: the ``MaskStats`` of the latest optimizer step.
    """

    def __init__(
        self,
        method: str = "gmt",
        mask_ratio: float = 0.0,
        *,
        scope: str = "tensor",
        apply_to: str = "grad",
        include: Sequence[str] | None = None,
        exclude: Sequence[str] = (),
        seed: int = 0,
    ):
        self.options = {"method": method, "mask_ratio": mask_ratio, "scope": scope, "include": include,
                        "exclude": exclude, "seed": seed}
        self.apply_to = apply_to
        self.mask: GradientMask | None = None
        self.last_stats: MaskStats | None = None
        self._max_grad_norm = 0.0  # the user's args.max_grad_norm, applied here after masking

    def on_init_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    model: nn.Module | None = None, **kwargs):
        if getattr(args, "deepspeed", None):
            raise ValueError(
                "GradientMaskCallback does not work under DeepSpeed: DeepSpeed steps the optimizer inside "
                "backward(), before any Trainer callback sees the gradient, so there is nothing left to mask."
            )
        if model is not None:  # None with model_init: checked when training begins
            # A throwaway mask checks every option and refuses adapters now; apply_to="update"
            # needs the optimizer, which does not exist yet, so its check waits for on_train_begin.
            GradientMask(model, apply_to="grad" if self.apply_to == "update" else self.apply_to, **self.options)

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None, **kwargs):
        innermost = _innermost(optimizer) if self.apply_to == "update" else None
        self.mask = GradientMask(model, apply_to=self.apply_to, optimizer=innermost, **self.options)
        # rmt draws from (seed, step): continue the same draws when the Trainer resumes.
        self.mask.step = state.global_step
        self._max_grad_norm = args.max_grad_norm or 0.0
        args.max_grad_norm = 0.0

    def on_pre_optimizer_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                              model: nn.Module | None = None, **kwargs):
        self.last_stats = self.mask.apply()
        if self._max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), self._max_grad_norm)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        args.max_grad_norm = self._max_grad_norm
        if self.mask is not None:
            self.mask.remove()


def _innermost(optimizer: torch.optim.Optimizer | None) -> torch.optim.Optimizer | None:
    """The torch optimizer inside accelerate's ``AcceleratedOptimizer`` wrapper(s): the one
    whose ``step`` and ``param_groups`` ``GradientMask(apply_to="update")`` drives."""
    while optimizer is not None and hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer
