"""The masking core: plain PyTorch, no Ray, Tune or MLflow."""

from gmt_ray.masking.drop import drop_delta
from gmt_ray.masking.gradient_mask import METHODS, GradientMask, MaskStats, ProcessGroupReducer, keep_count
from gmt_ray.masking.hft import hft_frozen_modules
from gmt_ray.masking.methods import DROP_STRATEGIES
from gmt_ray.masking.selection import kth_largest, radix_kth_largest

__all__ = [
    "DROP_STRATEGIES",
    "METHODS",
    "GradientMask",
    "MaskStats",
    "ProcessGroupReducer",
    "drop_delta",
    "hft_frozen_modules",
    "keep_count",
    "kth_largest",
    "radix_kth_largest",
]
