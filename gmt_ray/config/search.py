"""What a sweep runs: its groups, the searched options and how they are proposed (search), and
the confirmation stage that retrains each group's choice with fresh seeds (confirm)."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from gmt_ray.config.sections import BenchmarkName, DropStrategy, Method, _Section


class SearchParam(_Section):
    """One searched option: ``uniform``/``loguniform``/``int`` over [low, high], or ``choice``."""

    type: Literal["uniform", "loguniform", "int", "choice"]
    low: float | None = None
    high: float | None = None
    values: list[Any] | None = None

    def edge(self, value: Any) -> str | None:
        """``"top"`` or ``"bottom"`` where ``value`` lies at an end of the searched range (the
        outer 5% of a range, on a log scale for loguniform; the largest or smallest of three or
        more numeric choices), else None: a best value there may lie outside the range."""
        if self.type == "choice":
            numbers = [v for v in self.values or [] if isinstance(v, (int, float)) and not isinstance(v, bool)]
            if len(numbers) < 3 or value not in numbers:
                return None
            return "top" if value == max(numbers) else "bottom" if value == min(numbers) else None
        low, high, value = float(self.low), float(self.high), float(value)
        if self.type == "loguniform":
            low, high, value = math.log(low), math.log(high), math.log(value)
        position = (value - low) / (high - low)
        return "top" if position >= 0.95 else "bottom" if position <= 0.05 else None

    @model_validator(mode="after")
    def _bounds(self):
        if self.type == "choice":
            if not self.values:
                raise ValueError("a choice needs a non-empty 'values' list")
        elif self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"{self.type} needs low < high, but got low={self.low}, high={self.high}")
        elif self.type == "loguniform" and self.low <= 0:
            raise ValueError(f"loguniform needs low > 0, but got low={self.low}")
        return self


class AshaConfig(_Section):
    metric: str = "val_loss"  # reported at every eval interval
    mode: Literal["min", "max"] = "min"
    grace_period: int = Field(20, ge=1)  # steps before a trial can be stopped
    reduction_factor: float = Field(3, gt=1)


class SearchConfig(_Section):
    """Which trials a sweep runs: for each method (x mask ratio), Optuna tunes ``space``."""

    methods: list[Method] = ["gmt"]
    # Fixed mask ratios compared side by side (each gets its own Optuna study); empty:
    # mask.mask_ratio is fixed by the mask section or searched through ``space``.
    mask_ratios: list[Annotated[float, Field(ge=0, lt=1)]] = []
    # Method drop: the post-hoc strategies compared (each its own group); empty: mask.drop_strategy.
    drop_strategies: list[DropStrategy] = []
    # gmt: the update modes compared (each its own group; rmt, its control, keeps mask.apply_to); empty: mask.apply_to.
    apply_to: list[Literal["grad", "update"]] = []
    space: dict[str, SearchParam] = {}  # dotted option -> distribution, e.g. train.lr
    num_samples: int = Field(4, ge=1)  # trials per (method, mask ratio) group
    # The objective, measured on validation data (never on the reported test problems):
    # val_loss, or a benchmark's validation score such as val_arithmetic_accuracy.
    metric: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    # How each group's study proposes trials: tpe (a Sobol design for its first startup_trials,
    # then Optuna's TPE), sobol (a scrambled Sobol design: quasi-random, space-filling), random,
    # or grid (every space entry a choice). Each proposal follows from the sampler's seed and the
    # trial's number in its group, so a resumed sweep proposes what it would have.
    sampler: Literal["tpe", "sobol", "random", "grid"] = "tpe"
    startup_trials: int | None = Field(None, ge=0)  # tpe: Sobol trials before TPE (null: Optuna's 10)
    seed: int = 0  # the sampler's seed
    max_concurrent_trials: int = Field(2, ge=1)
    scheduler: Literal["none", "asha"] = "none"
    asha: AshaConfig = AshaConfig()
    storage: str | None = None  # Optuna RDB URL; default: a journal file in the sweep directory (NFS-safe)

    @field_validator("methods")
    @classmethod
    def _unique_methods(cls, methods: list[str]) -> list[str]:
        if not methods:
            raise ValueError("at least one method is needed")
        if len(set(methods)) != len(methods):
            raise ValueError(f"methods repeat: {methods}")
        return methods

    @model_validator(mode="after")
    def _grid_has_values(self):
        if self.sampler != "grid":
            return self
        continuous = [key for key, param in self.space.items() if param.type != "choice"]
        if continuous:
            raise ValueError(f"sampler 'grid' needs explicit values, but {continuous} "
                             f"{'is a range' if len(continuous) == 1 else 'are ranges'}: give each as "
                             "{type: choice, values: [...]}")
        points = math.prod(len(param.values) for param in self.space.values())
        if self.space and self.num_samples > points:
            raise ValueError(f"sampler 'grid' has {points} points per group; num_samples={self.num_samples} "
                             "would repeat them")
        return self


class ConfirmConfig(_Section):
    """The confirmation stage: each group's chosen configuration trained again with fresh seeds
    and evaluated on the test problems, the same for every method (0 seeds: no stage)."""

    seeds: int = Field(0, ge=0)  # seeds per chosen configuration (the first round)
    first_seed: int = Field(1000, ge=0)  # seeds first_seed, first_seed + 1, ...: never a search seed
    # Add rounds of per_round seeds until every primary comparison is decided (its interval
    # excludes 0, or lies within +-min_effect), or max_seeds is spent; the error rate holds
    # over every look (gmt_ray.report.verdicts).
    until_decisive: bool = False
    per_round: int = Field(2, ge=1)
    max_seeds: int = Field(10, ge=1)
    min_effect: float | None = Field(None, gt=0, lt=1)  # a difference smaller than this does not matter
    alpha: float = Field(0.05, gt=0, lt=0.5)  # the family-wise error rate of the primary comparisons
    # The benchmark the verdicts compare on, problem by problem (its test problems); null: the
    # one the search chooses on (search.metric val_<benchmark>_<score>).
    benchmark: BenchmarkName | None = None

    @property
    def most_seeds(self) -> int:
        """The most seeds a chosen configuration can be confirmed with (every round, where rounds are added)."""
        return self.max_seeds if self.until_decisive else self.seeds

    @model_validator(mode="after")
    def _rounds_fit(self):
        if self.until_decisive and self.seeds < 2:
            raise ValueError(f"until_decisive needs seeds >= 2 in its first round (a seed-to-seed spread), "
                             f"but got seeds={self.seeds}")
        if self.until_decisive and self.max_seeds < self.seeds:
            raise ValueError(f"max_seeds={self.max_seeds} is below seeds={self.seeds}")
        return self
