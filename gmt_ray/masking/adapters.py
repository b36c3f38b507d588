"""Why a model with PEFT adapters (LoRA and kin) is refused by ``GradientMask``.

GMT ranks the gradients of the model's own weights and lets only the most salient
entries of each weight update. With adapters the base weights are frozen and have no
gradient at all; what trains are the low-rank factors A and B of each adapted matrix.
Masking the factors' gradients is not GMT: the change to a weight, B @ A, stays dense
whatever entries of A and B are masked, and the entries ranked are not the weight's.
So there is no faithful reading of GMT with adapters, and the mask says so instead of
quietly doing something else. ``sft`` masks nothing and is allowed.

Detection needs no ``peft`` import: every adapter module (a ``PeftModel`` wrapper, a LoRA
layer injected by ``get_peft_model`` or by transformers' ``model.add_adapter``) is a class
defined in the ``peft`` package.
"""

from __future__ import annotations

from torch import nn

__all__ = ["adapter_module_names", "refuse_adapters"]


def adapter_module_names(model: nn.Module) -> list[str]:
    """Names of the modules of ``model`` whose class comes from the ``peft`` package."""
    return [name or "<the model itself>" for name, module in model.named_modules()
            if type(module).__module__.partition(".")[0] == "peft"]


def refuse_adapters(model: object, method: str) -> None:
    """Raises if ``model`` carries PEFT adapters and ``method`` would mask anything.

    Args:
        model: what ``GradientMask`` was given (a module, or ``(name, parameter)`` pairs,
            which carry no module types and are not checked).
        method: the masking method.

    Raises:
        ValueError: naming the adapter modules found and why GMT does not apply to them.
    """
    if method == "sft" or not isinstance(model, nn.Module):
        return
    found = adapter_module_names(model)
    if not found:
        return
    shown = ", ".join(repr(n) for n in found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
    raise ValueError(
        f"GradientMask(method={method!r}) does not apply to a model with PEFT adapters (found {shown}). "
        "GMT ranks the gradients of the model's own weights and updates only the most salient entries; "
        "with adapters those weights are frozen and only the low-rank factors A and B train, and masking "
        "their gradients is not GMT (the weight change B @ A stays dense). Fine-tune the full model with "
        "GMT, or merge the adapter first (model.merge_and_unload()) and fine-tune the merged model."
    )
