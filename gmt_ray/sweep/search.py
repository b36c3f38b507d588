"""Search: one Optuna study per (method, mask ratio) group, behind one Tune searcher,
and the scheduler that may stop trials early.

The paper compares methods at equal mask ratio, each at its best learning rate. A single
study over ``method`` would spend its budget where it likes; instead each group has its
own study and budget, and the groups take turns suggesting trials so that every method
advances together under a concurrency limit. The studies are driven through Optuna's
public ask-and-tell interface and live in a persistent storage, so a resumed sweep keeps them.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass
from typing import Any

import optuna
from ray.tune.search import Searcher

from gmt_ray.config import Experiment, SearchConfig, SearchParam
from gmt_ray.masking.methods import uses_mask_ratio

__all__ = ["Group", "GroupedOptunaSearch", "build_scheduler", "groups_of", "make_sampler", "optuna_space"]


@dataclass(frozen=True)
class Group:
    """Options fixed for a group of trials, e.g. {"mask.method": "gmt", "mask.mask_ratio": 0.9}."""

    fixed: tuple[tuple[str, Any], ...]

    @property
    def name(self) -> str:
        return ",".join(f"{k.split('.')[-1]}={v}" for k, v in self.fixed)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.fixed)


def groups_of(config: Experiment) -> list[Group]:
    groups = []
    for method in config.search.methods:
        # Drop's strategies (trivial, random, salient) are compared side by side like methods.
        variants = [(("mask.drop_strategy", s),) for s in config.search.drop_strategies] if method == "drop" else []
        for variant in variants or [()]:
            head = (("mask.method", method), *variant)
            if not uses_mask_ratio(method):
                groups.append(Group((*head, ("mask.mask_ratio", 0.0))))
            elif config.search.mask_ratios:
                groups += [Group((*head, ("mask.mask_ratio", r))) for r in config.search.mask_ratios]
            else:
                groups.append(Group(head))
    return groups


def optuna_space(space: dict[str, SearchParam], group: Group) -> dict[str, Any]:
    """The group's Optuna distributions: the searched options it does not fix."""
    import optuna.distributions as d

    fixed = group.as_dict()
    result: dict[str, Any] = {}
    for key, param in space.items():
        if key in fixed:
            continue
        if param.type == "uniform":
            result[key] = d.FloatDistribution(param.low, param.high)
        elif param.type == "loguniform":
            result[key] = d.FloatDistribution(param.low, param.high, log=True)
        elif param.type == "int":
            result[key] = d.IntDistribution(int(param.low), int(param.high))
        else:
            result[key] = d.CategoricalDistribution(param.values)
    return result


def make_sampler(search: SearchConfig, space: dict[str, Any], seed: int):
    """The Optuna sampler of one group's study (``search.sampler``)."""

    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if search.sampler == "grid":
        # The config allows only categorical spaces with grid: every axis has its values.
        return _AskTellGridSampler({k: list(v.choices) for k, v in space.items()}, seed=seed)
    startup = search.startup_trials if search.startup_trials is not None else 10  # Optuna's own default
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)


class _AskTellGridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler without its end-of-grid ``Study.stop()``: that stops
    ``Study.optimize``, and under ask/tell, with no loop to stop, it raises instead (after the
    trial's value is stored). Each group's budget (``search.num_samples``) ends it here."""

    def after_trial(self, study, trial, state, values) -> None:
        pass


class GroupedOptunaSearch(Searcher):
    """Round-robin over one Optuna study per group, ``search.num_samples`` trials each.

    Args:
        config: the experiment (search section: groups, space, metric, mode, sampler, seed).
        storage: an Optuna storage (``gmt_ray.sweep.study_storage``); each group's study lives
            there by name, so a resumed sweep keeps its history. None: in memory.
    """

    def __init__(self, config: Experiment, storage: optuna.storages.BaseStorage | None = None):

        # No metric for Tune itself: the objective is read here, from the trial's last result.
        super().__init__()
        s = config.search
        self.objective = s.metric
        self.groups = groups_of(config)
        self.budget = s.num_samples
        self.base_seed = config.train.seed
        self.spaces = [optuna_space(s.space, group) for group in self.groups]
        self.studies = [
            optuna.create_study(
                study_name=f"{config.name}/{group.name}", storage=storage, load_if_exists=True,
                direction="minimize" if s.mode == "min" else "maximize",
                sampler=make_sampler(s, space, seed=s.seed + index),
            )
            for index, (group, space) in enumerate(zip(self.groups, self.spaces))
        ]
        # Tune trial id -> (group index, Optuna trial number or None when nothing is searched).
        self.owner: dict[str, tuple[int, int | None]] = {}
        self.suggested: dict[str, dict] = {}
        self.issued = [0] * len(self.groups)
        self._next = 0

    @property
    def total_trials(self) -> int:
        return self.budget * len(self.groups)

    def suggest(self, trial_id: str) -> dict | None:
        if trial_id in self.suggested:  # a restarted trial keeps its configuration
            return self.suggested[trial_id]
        open_groups = [i for i in range(len(self.groups)) if self.issued[i] < self.budget]
        if not open_groups:
            return Searcher.FINISHED
        index = min(open_groups, key=lambda i: (i - self._next) % len(self.groups))
        self._next = (index + 1) % len(self.groups)
        self.issued[index] += 1
        if self.spaces[index]:
            trial = self.studies[index].ask(self.spaces[index])
            params, number = trial.params, trial.number
        else:
            # Nothing to search in this group: its trials repeat it over training seeds.
            params, number = {"train.seed": self.base_seed + self.issued[index] - 1}, None
        self.owner[trial_id] = (index, number)
        self.suggested[trial_id] = {**self.groups[index].as_dict(), **params}
        return self.suggested[trial_id]

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:

        index, number = self.owner.get(trial_id, (None, None))
        if number is None:
            return
        value = (result or {}).get(self.objective)
        TrialState = optuna.trial.TrialState
        # skip_if_finished: a resumed sweep may replay a trial its study already holds as finished.
        if error:
            self.studies[index].tell(number, state=TrialState.FAIL, skip_if_finished=True)
        elif not isinstance(value, (int, float)) or not math.isfinite(value):
            # Ended without its objective: stopped early by the scheduler.
            self.studies[index].tell(number, state=TrialState.PRUNED, skip_if_finished=True)
        else:
            self.studies[index].tell(number, float(value), skip_if_finished=True)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the objective and its direction come from the experiment, not from Tune

    # The studies persist themselves in their storage; this is the searcher's own state.
    _STATE = ("owner", "suggested", "issued", "_next")

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump({key: getattr(self, key) for key in self._STATE}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            for key, value in pickle.load(f).items():
                setattr(self, key, value)
        self._fail_unsaved_trials()

    def _fail_unsaved_trials(self) -> None:
        """Optuna trials asked for after the last saved state (the driver died in between)
        would stay RUNNING in the study for ever, and TPE's constant liar would keep
        counting them: they are closed as FAIL."""

        for index, study in enumerate(self.studies):
            known = {number for group, number in self.owner.values() if group == index}
            for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                if trial.number not in known:
                    study.tell(trial.number, state=optuna.trial.TrialState.FAIL)


def build_scheduler(config: Experiment):
    """Tune's trial scheduler for ``search.scheduler`` (None: every trial runs to the end)."""
    if config.search.scheduler != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    a = config.search.asha
    return ASHAScheduler(
        time_attr="step", metric=a.metric, mode=a.mode, max_t=config.train.max_steps,
        grace_period=min(a.grace_period, config.train.max_steps), reduction_factor=a.reduction_factor,
        stop_last_trials=False,  # a trial that reaches max_steps finishes and is evaluated
    )
