"""An experiment as a whole: its sections, and the checks that read several of them at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, field_validator, model_validator

from gmt_ray.config.search import ConfirmConfig, SearchConfig
from gmt_ray.config.sections import (
    DataConfig,
    EvalConfig,
    MaskConfig,
    MlflowConfig,
    ModelConfig,
    ResourcesConfig,
    TrainConfig,
    WandbConfig,
    _Section,
)
from gmt_ray.names import BENCHMARKS, DPO_METRICS, chosen_on

__all__ = ["Experiment", "confirm_seed_clash"]

_SEARCHABLE_SECTIONS = ("model", "data", "mask", "train")


class Experiment(_Section):
    """A whole experiment: what to train, on what, how, where results go."""

    name: str = "gmt-ray"
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    mask: MaskConfig = MaskConfig()
    train: TrainConfig = TrainConfig()
    resources: ResourcesConfig = ResourcesConfig()
    search: SearchConfig = SearchConfig()
    confirm: ConfirmConfig = ConfirmConfig()
    eval: EvalConfig = EvalConfig()
    mlflow: MlflowConfig = MlflowConfig()
    wandb: WandbConfig = WandbConfig()
    storage_path: str = "runs"  # checkpoints and Ray results; shared storage on a cluster

    @model_validator(mode="after")
    def _options_agree(self):
        # Each check reads options of several sections; every problem is reported at once.
        problems = [problem for check in (_check_search_space, _check_benchmark_data, _check_fsdp, _check_objectives,
                                          _check_packing) for problem in check(self)]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def metric_names(self) -> list[str]:
        """Every metric a trial of this experiment reports that can be an objective (lm-eval's
        ``lm_eval/<task>/<metric>`` are known only at run time)."""
        known = ["loss", "val_loss", *self.eval.metric_names()]
        if self.train.objective == "dpo":
            known += [f"{prefix}{name}" for prefix in ("", "val_") for name in DPO_METRICS]
        return known

    def chosen_on(self) -> str | None:
        """The benchmark whose validation problems a sweep's search chooses on (its objective's,
        ``val_<benchmark>_<score>``); None where the objective is no benchmark's (val_loss)."""
        return chosen_on(self.search.metric, self.eval.benchmarks)

    def verdict_benchmark(self) -> str | None:
        """The benchmark the confirmation stage compares methods on, problem by problem
        (``confirm.benchmark``, else the one the search chooses on)."""
        return self.confirm.benchmark or self.chosen_on()

    def local_storage(self) -> Path | None:
        """``storage_path`` as an absolute local directory; None for remote storage (s3://, gs://)."""
        return None if "://" in self.storage_path else Path(self.storage_path).resolve()

    @field_validator("name")
    @classmethod
    def _name_is_path_safe(cls, value: str) -> str:
        if not value or any(c in value for c in "/\\:"):
            raise ValueError(f"name must be non-empty without '/', '\\' or ':', but got {value!r}")
        return value


def _check_search_space(config: Experiment) -> list[str]:
    problems = []
    for key in config.search.space:
        if key.split(".")[0] not in _SEARCHABLE_SECTIONS:
            problems.append(f"search.space.{key}: only model, data, mask and train options can be searched")
            continue
        node: Any = config
        for part in key.split("."):
            if not isinstance(node, BaseModel) or part not in type(node).model_fields:
                problems.append(f"search.space.{key}: no such option")
                break
            node = getattr(node, part)
    if config.search.mask_ratios and "mask.mask_ratio" in config.search.space:
        problems.append("search: give mask_ratios or search mask.mask_ratio in space, not both")
    return problems


def _check_benchmark_data(config: Experiment) -> list[str]:
    return [f"eval.benchmarks: {name!r} evaluates generated data; data.source is {config.data.source!r}"
            for name in config.eval.benchmarks if BENCHMARKS[name].generated and config.data.source != "arithmetic"]


def _check_fsdp(config: Experiment) -> list[str]:
    if config.train.parallelism != "fsdp":
        return []
    if config.train.objective == "dpo" and config.train.dpo.reference == "model":
        return ["train.dpo.reference 'model' keeps an unsharded copy: use 'precomputed' with fsdp"]
    return []


def _check_objectives(config: Experiment) -> list[str]:
    known = config.metric_names()
    problems = [
        f"{where}: {metric!r} is not a metric this experiment reports; choose one of {known} "
        "(or lm_eval/<task>/<metric>)"
        for where, metric in (("search.metric", config.search.metric), ("search.asha.metric", config.search.asha.metric))
        if metric not in known and not metric.startswith("lm_eval/")
    ]
    metric = config.search.metric
    if metric in config.eval.metric_names() and not metric.startswith("val_"):
        problems.append(f"search.metric: {metric!r} is measured on the test problems, which the search must not "
                        f"see: choose on the validation problems, 'val_{metric}'")
    if config.confirm.seeds and config.verdict_benchmark() is None:
        problems.append(f"confirm.seeds: the confirmation stage compares methods problem by problem on a benchmark: "
                        f"choose on one (search.metric val_<benchmark>_<score>, not {metric!r}) or name it in "
                        "confirm.benchmark")
    if config.confirm.benchmark and config.confirm.benchmark not in config.eval.benchmarks:
        problems.append(f"confirm.benchmark: {config.confirm.benchmark!r} is not in eval.benchmarks "
                        f"{config.eval.benchmarks}")
    if config.confirm.seeds and config.search.scheduler == "asha":
        problems.append("confirm.seeds: confirmation runs every seed to the end; with search.scheduler 'asha' ASHA "
                        "would stop some: use scheduler 'none'")
    return problems


def confirm_seed_clash(config: Experiment) -> str | None:
    """Where a sweep's confirmation seeds include a seed its search trials train with (a
    confirmation would repeat a search trial, not confirm it): the problem, else None.

    A sweep-level check (``gmt_ray.sweep.run`` and ``--dry-run``), not a validator: each
    confirmation trial's own config sets ``train.seed`` to one of these seeds."""
    confirm = config.confirm
    if not confirm.seeds:
        return None
    last = confirm.first_seed + confirm.most_seeds - 1
    searched = config.search.space.get("train.seed")
    if searched is None:
        # A group with nothing to search repeats over train.seed, train.seed + 1, ... (one per trial).
        highest = config.train.seed + config.search.num_samples - 1
        overlap = config.train.seed <= last and confirm.first_seed <= highest
        used = f"train.seed={config.train.seed}" + (f" and, where a group has nothing to search, up to {highest}"
                                                      if highest > config.train.seed else "")
    elif searched.type == "choice":
        overlap = any(isinstance(v, int) and confirm.first_seed <= v <= last for v in searched.values or [])
        used = f"search.space.train.seed {searched.values}"
    else:
        overlap = searched.low <= last and confirm.first_seed <= searched.high
        used = f"search.space.train.seed [{searched.low:g}, {searched.high:g}]"
    if not overlap:
        return None
    return (f"confirm.first_seed: the confirmation's seeds {confirm.first_seed}..{last} include the search's "
            f"({used}): a confirmation trains with fresh seeds; move confirm.first_seed above them")


def _check_packing(config: Experiment) -> list[str]:
    problems = []
    if config.data.packing and config.train.objective == "dpo":
        problems.append("data.packing: DPO batches are not packed (a pair's log-probabilities are summed over padded "
                        "rows); set data.packing: false with train.objective: dpo")
    if config.model.attn_implementation.startswith("flash_attention") and not config.resources.use_gpu:
        problems.append(f"model.attn_implementation: {config.model.attn_implementation} runs on GPUs only, and "
                        "resources.use_gpu is false: use auto, sdpa or eager")
    return problems
