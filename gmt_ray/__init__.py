"""gmt-ray: Gradient-Mask Tuning experiments on Ray, Optuna and MLflow."""

from gmt_ray.config import ConfigError, Experiment, load_experiment
from gmt_ray.masking import GradientMask, MaskStats, drop_delta

__all__ = ["ConfigError", "Experiment", "GradientMask", "MaskStats", "drop_delta", "load_experiment"]
__version__ = "0.1.0"
