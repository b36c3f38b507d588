"""The masking core: plain PyTorch, no Ray, Tune or MLflow."""

from gmt_ray.masking.drop import drop_delta
from gmt_ray.masking.gradient_mask import GradientMask, MaskStats, ProcessGroupReducer, keep_count
from gmt_ray.masking.hft import hft_frozen_modules
from gmt_ray.masking.methods import MASK_METHODS
from gmt_ray.masking.selection import kth_largest, radix_kth_largest

__all__ = [
    "MASK_METHODS",
    "GradientMask",
    "MaskStats",
    "ProcessGroupReducer",
    "drop_delta",
    "hft_frozen_modules",
    "keep_count",
    "kth_largest",
    "radix_kth_largest",
]
