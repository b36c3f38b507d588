"""gmt-ray: Gradient-Mask Tuning experiments on Ray, Optuna and MLflow."""

from gmt_ray.masking import GradientMask, MaskStats, drop_delta

__all__ = ["GradientMask", "MaskStats", "drop_delta"]
__version__ = "0.1.0"
