"""How many weights actually move in a masked step, in each ``apply_to`` mode.

    python benchmarks/apply_to_movement.py [--ratio 0.9] [--steps 30] [--size 64] [--lr 1e-3]

Trains one ``size x size`` linear layer with AdamW (weight decay 0) on random regression
data, the same data and initial weights in every run, with gmt at ``--ratio``, and prints,
for each mode, the fraction of the weight's entries that the mask kept at the last step and
the fraction that changed in that step alone:

- ``grad``: masked gradient entries are zeros, but AdamW's moments still hold earlier
  gradients, so a masked entry keeps moving through its momentum;
- ``update``: the update itself is sparse, the paper's rule theta <- theta - eta * M(Gamma):
  only the kept entries move.

``sft`` (no mask) is printed beside them for scale. The figures in docs/masking-modes.md come
from this script.
"""

from __future__ import annotations

import argparse

import torch

from gmt_ray import GradientMask


def moved_in_last_step(apply_to: str | None, ratio: float, steps: int, size: int, lr: float) -> tuple[float, float]:
    """(kept fraction at the last step, fraction of entries changed by the last step)."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(size, size, bias=False)
    data = torch.randn(steps, 32, size)
    target = torch.randn(steps, 32, size)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=lr, weight_decay=0.0)
    mask = None
    if apply_to is not None:
        mask = GradientMask(layer, method="gmt", mask_ratio=ratio, apply_to=apply_to,
                            optimizer=optimizer if apply_to == "update" else None)
    kept, changed = 1.0, 0.0
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(layer(data[step]), target[step]).backward()
        if mask is not None:
            kept = mask.apply().kept_fraction
        before = layer.weight.detach().clone()
        optimizer.step()
        changed = (layer.weight.detach() != before).float().mean().item()
    return kept, changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratio", type=float, default=0.9, help="gmt's mask ratio (fraction zeroed)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    print(f"{args.size}x{args.size} linear layer, AdamW (lr {args.lr}, weight decay 0), gmt at mask ratio "
          f"{args.ratio}; entries changed in step {args.steps} alone:")
    for label, apply_to in (("sft (no mask)", None), ("gmt apply_to=grad", "grad"), ("gmt apply_to=update", "update")):
        kept, changed = moved_in_last_step(apply_to, args.ratio, args.steps, args.size, args.lr)
        print(f"  {label:20s} kept by the mask {kept:6.1%}   changed {changed:6.1%}")


if __name__ == "__main__":
    main()
