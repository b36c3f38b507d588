"""The one typed schema of every gmt-ray option, its default and its validation.

Experiment YAML files and ``--set key=value`` overrides both go through
``load_experiment``; every problem found is reported at once, with the key and (for
YAML) the file and line, as a ``ConfigError``.

    sections.py  the sections: model, data, mask, eval, train, resources, mlflow, wandb
    search.py    search (groups, space, sampler) and confirm (the confirmation stage)
    schema.py    Experiment: the sections together, and the checks across them
    loading.py   YAML and --set, line-numbered errors, the resolved config as YAML
"""

from gmt_ray.config.loading import load_experiment, parse_overrides, split_key, to_yaml, with_overrides
from gmt_ray.config.schema import Experiment, confirm_seed_clash
from gmt_ray.config.search import AshaConfig, ConfirmConfig, SearchConfig, SearchParam
from gmt_ray.config.sections import (
                                     ArithmeticData,
                                     DataConfig,
                                     DpoConfig,
                                     EvalConfig,
                                     LmEvalConfig,
                                     MaskConfig,
                                     MlflowConfig,
                                     ModelConfig,
                                     ResourcesConfig,
                                     SamplingConfig,
                                     TinyModel,
                                     TrainConfig,
                                     WandbConfig,
)
from gmt_ray.errors import ConfigError

__all__ = [
    "ArithmeticData",
    "AshaConfig",
    "ConfigError",
    "ConfirmConfig",
    "DataConfig",
    "DpoConfig",
    "EvalConfig",
    "Experiment",
    "LmEvalConfig",
    "MaskConfig",
    "MlflowConfig",
    "ModelConfig",
    "ResourcesConfig",
    "SamplingConfig",
    "SearchConfig",
    "SearchParam",
    "TinyModel",
    "TrainConfig",
    "WandbConfig",
    "confirm_seed_clash",
    "load_experiment",
    "parse_overrides",
    "split_key",
    "to_yaml",
    "with_overrides",
]
