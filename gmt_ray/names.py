"""The ground floor: names every layer reads and none defines again.

Methods and their labels, Drop's strategies and the arithmetic story worlds live here as
names only (what they do lives in masking/ and data/). Nothing here imports gmt-ray.
"""

from __future__ import annotations

__all__ = ["BARE", "DOMAINS", "DROP_STRATEGIES", "MASK_METHODS", "METHOD_LABELS", "METHODS", "PRETRAINING_DOMAINS",
           "RATIO_METHODS", "benchmark_of_metric", "method_label", "uses_mask_ratio"]

# Every training method a sweep compares, in the order reports list them. GradientMask
# applies the first four at every step (masking/methods.py says how); drop trains as sft and
# resets a ratio of the fine-tuning deltas afterwards (the paper's post-hoc Drop baseline).
MASK_METHODS = ("sft", "gmt", "rmt", "hft")
METHODS = (*MASK_METHODS, "drop")
# The methods for which mask.mask_ratio means something (sft and hft have none).
RATIO_METHODS = ("gmt", "rmt", "drop")
# Which deltas drop resets: the smallest |delta| (trivial, the paper's Drop), a random subset
# (DARE), or the largest.
DROP_STRATEGIES = ("trivial", "random", "salient")


def uses_mask_ratio(method: str) -> bool:
    """Whether ``mask.mask_ratio`` means anything to ``method``."""
    return method in RATIO_METHODS


def method_label(method: str, drop_strategy: str | None = None, apply_to: str | None = None) -> str:
    """A method as reports, run names and model names show it: drop with its strategy
    (``drop-trivial``) where the strategy is known, a masking method in the sparse-update
    mode with ``-update`` (``gmt-update``), every other as itself."""
    if method == "drop" and drop_strategy:
        return f"drop-{drop_strategy}"
    if apply_to == "update" and method in ("gmt", "rmt"):
        return f"{method}-update"
    return method


# Every label a report can show, in its order (drop once per strategy, the sparse-update modes
# after the rest).
METHOD_LABELS = (*MASK_METHODS, *(method_label("drop", s) for s in DROP_STRATEGIES),
                 *(method_label(m, apply_to="update") for m in RATIO_METHODS if m != "drop"))


# ----------------------------------------------------------------------------- story worlds

# The arithmetic generator's story worlds (gmt_ray/data/arithmetic.py writes each), and bare
# expressions instead of stories. The quick start's base model was pretrained on the first four
# and bare; its fine-tuning task is bus, which it never saw.
DOMAINS = ("collection", "money", "farm", "reading", "bus")
PRETRAINING_DOMAINS = ("collection", "money", "farm", "reading")
BARE = "bare"


# ----------------------------------------------------------------------------- metrics


def benchmark_of_metric(metric: str) -> str | None:
    """The benchmark a score metric belongs to: ``val_arithmetic_accuracy`` and
    ``arithmetic_accuracy`` -> ``arithmetic``, ``humaneval_pass_at_10`` -> ``humaneval``;
    None for anything else (losses, lm-eval's own names)."""
    import re

    match = re.fullmatch(r"(?:val_)?(?P<benchmark>.+?)_(?:accuracy|pass_at_\d+)", metric)
    return match.group("benchmark") if match else None
