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
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from ray.tune.search import Searcher

from gmt_ray.config import Experiment, SearchConfig, SearchParam
from gmt_ray.masking.scores import stable_seed
from gmt_ray.names import uses_mask_ratio

__all__ = ["STAGE_KEY", "TASK_SCORES_KEY", "Design", "Group", "GroupedOptunaSearch", "build_scheduler", "groups_of",
           "optuna_space", "sampler_used", "task_scores_of"]

# The per-problem scores a confirmation trial's final report carries (its objective's benchmark).
TASK_SCORES_KEY = "task_scores"


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
        # Drop's strategies (trivial, random, salient), and gmt's update modes (does the sparse
        # update matter?), are compared side by side like methods.
        if method == "drop":
            variants = [(("mask.drop_strategy", s),) for s in config.search.drop_strategies]
        elif method == "gmt":
            variants = [(("mask.apply_to", mode),) for mode in config.search.apply_to]
        else:
            variants = []
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


# Optuna's own number of random trials before TPE models anything (TPESampler's default).
TPE_STARTUP_TRIALS = 10
STAGE_KEY = "stage"  # a trial's stage in its Tune config, beside its options: "search" or "confirm"


def startup_trials(search: SearchConfig) -> int:
    """How many of a group's trials come from the start-up design before TPE (search.sampler tpe)."""
    return search.startup_trials if search.startup_trials is not None else TPE_STARTUP_TRIALS


def sampler_used(search: SearchConfig) -> str:
    """What really proposes each group's trials, said honestly: TPE with a budget no larger
    than its start-up trials never models anything, and is a Sobol design throughout."""
    if search.sampler != "tpe":
        return search.sampler
    startup = startup_trials(search)
    if search.num_samples <= startup:
        return (f"sobol (tpe never starts: {search.num_samples} trials per group, no more than its {startup} "
                "start-up trials)")
    return f"tpe (its first {startup} trials of each group a Sobol design)"


class Design:
    """A group's proposals, the k-th of which follows from the sampler, its seed and k alone, so
    that a resumed sweep proposes what the uninterrupted one would have.

    Sobol (scrambled, scipy's): a quasi-random design that fills the space evenly; random:
    independent uniform draws; grid: every point of the grid, in a seeded order. Values are
    mapped from the unit cube onto each range (a log scale for loguniform). ``tpe`` proposes its
    first ``startup_trials`` from the Sobol design, then asks Optuna's TPE, seeded by k.
    """

    def __init__(self, search: SearchConfig, space: dict[str, SearchParam], seed: int):
        self.sampler, self.space, self.seed = search.sampler, dict(sorted(space.items())), seed
        self.startup = startup_trials(search) if search.sampler == "tpe" else math.inf

    def point(self, k: int) -> dict[str, Any] | None:
        """The k-th trial's values (k from 0), or None where TPE proposes it."""
        if not self.space:
            return {}
        if self.sampler == "grid":
            return self._grid_point(k)
        if self.sampler == "random":
            unit = np.random.default_rng([self.seed, k]).random(len(self.space))
        elif k < self.startup:  # sobol, and tpe's start-up
            unit = self._sobol(k)
        else:
            return None
        return {key: _from_unit(param, float(u)) for (key, param), u in zip(self.space.items(), unit)}

    def _sobol(self, k: int) -> np.ndarray:
        from scipy.stats import qmc

        engine = qmc.Sobol(d=len(self.space), scramble=True, seed=self.seed)
        with warnings.catch_warnings():  # the first k + 1 points of a base-2 run: balanced up to there
            warnings.simplefilter("ignore")
            return engine.random_base2(max(0, math.ceil(math.log2(k + 1))))[k]

    def _grid_point(self, k: int) -> dict[str, Any]:
        axes = [(key, list(param.values)) for key, param in self.space.items()]
        order = np.random.default_rng(self.seed).permutation(math.prod(len(values) for _, values in axes))
        index, point = int(order[k % len(order)]), {}
        for key, values in reversed(axes):
            index, position = divmod(index, len(values))
            point[key] = values[position]
        return point


def _from_unit(param: SearchParam, u: float) -> Any:
    if param.type == "choice":
        return param.values[min(len(param.values) - 1, int(u * len(param.values)))]
    if param.type == "int":
        return int(min(param.high, math.floor(param.low + u * (param.high - param.low + 1))))
    if param.type == "loguniform":
        return float(math.exp(math.log(param.low) + u * (math.log(param.high) - math.log(param.low))))
    return float(param.low + u * (param.high - param.low))


class GroupedOptunaSearch(Searcher):
    """Round-robin over one Optuna study per group, ``search.num_samples`` trials each, then
    the confirmation stage: each group's chosen configuration with ``confirm.seeds`` fresh
    seeds (in rounds until decisive with ``confirm.until_decisive``).

    Args:
        config: the experiment (search section: groups, space, metric, mode, sampler, seed;
            confirm section).
        storage: an Optuna storage (``gmt_ray.sweep.study_storage``); each group's study lives
            there by name, so a resumed sweep keeps its history. None: in memory.
    """

    def __init__(self, config: Experiment, storage: optuna.storages.BaseStorage | None = None):

        # No metric for Tune itself: the objective is read here, from the trial's last result.
        super().__init__()
        search = config.search
        self.objective, self.objective_mode, self.confirm = search.metric, search.mode, config.confirm
        self.groups = groups_of(config)
        self.budget = search.num_samples
        self.base_seed = config.train.seed
        self.spaces = [optuna_space(search.space, group) for group in self.groups]
        self.designs = [Design(search, {k: p for k, p in search.space.items() if k in space}, seed=search.seed + index)
                        for index, space in enumerate(self.spaces)]
        self.studies = [
            optuna.create_study(
                study_name=f"{config.name}/{group.name}", storage=storage, load_if_exists=True,
                direction="minimize" if search.mode == "min" else "maximize",
            )
            for group in self.groups
        ]
        # Tune trial id -> (group index, Optuna trial number or None when nothing is searched).
        self.owner: dict[str, tuple[int, int | None]] = {}
        self.suggested: dict[str, dict] = {}
        self.issued = [0] * len(self.groups)
        self._next = 0
        # Search trials' outcomes: trial id -> (group index, its searched values, its objective or None).
        self.outcomes: dict[str, tuple[int, dict, float | None]] = {}
        # The confirmation stage: its trials (trial id -> group index, seed), the seeds given so
        # far, what is still to be started, and the per-problem scores of those that finished.
        self.confirm_trials: dict[str, tuple[int, int]] = {}
        self.confirm_seeds = 0
        self.confirm_queue: list[tuple[int, int]] = []
        self.confirm_scores: dict[str, dict[str, float]] = {}
        self.confirm_choice: dict[int, dict] = {}  # each group's chosen values, fixed when confirmation starts
        self.finished_confirming = False

    @property
    def total_trials(self) -> int:
        """The most trials the sweep can run (sequential confirmation may stop before)."""
        return (self.budget + self.confirm.most_seeds) * len(self.groups)

    def suggest(self, trial_id: str) -> dict | None:
        if trial_id in self.suggested:  # a restarted trial keeps its configuration
            return self.suggested[trial_id]
        open_groups = [i for i in range(len(self.groups)) if self.issued[i] < self.budget]
        if open_groups:
            return self._suggest_search(trial_id, open_groups)
        return self._suggest_confirm(trial_id)

    def _suggest_search(self, trial_id: str, open_groups: list[int]) -> dict:
        index = min(open_groups, key=lambda i: (i - self._next) % len(self.groups))
        self._next = (index + 1) % len(self.groups)
        k = self.issued[index]
        self.issued[index] += 1
        if self.spaces[index]:
            point = self.designs[index].point(k)
            study = self.studies[index]
            if point is None:  # TPE, seeded by k: its proposal follows from k and the history so far
                study.sampler = optuna.samplers.TPESampler(seed=stable_seed(self.designs[index].seed, k) % 2**32,
                                                           n_startup_trials=0)
            else:
                with warnings.catch_warnings():  # "experimental" since Optuna 2.4
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    study.sampler = optuna.samplers.PartialFixedSampler(point, optuna.samplers.RandomSampler(seed=k))
            trial = study.ask(self.spaces[index])
            params, number = trial.params, trial.number
        else:
            # Nothing to search in this group: its trials repeat it over training seeds.
            params, number = {"train.seed": self.base_seed + k}, None
        self.owner[trial_id] = (index, number)
        self.suggested[trial_id] = {**self.groups[index].as_dict(), **params, STAGE_KEY: "search"}
        return self.suggested[trial_id]

    # ------------------------------------------------------------------ confirmation

    def chosen(self) -> dict[int, dict]:
        """Each group's chosen configuration: its best finished search trial's values by the
        objective (the first of equals). Groups without one are not confirmed."""
        best: dict[int, tuple[float, dict]] = {}
        better = (lambda a, b: a < b) if self.objective_mode == "min" else (lambda a, b: a > b)
        for index, params, value in self.outcomes.values():
            if value is not None and (index not in best or better(value, best[index][0])):
                best[index] = (value, params)
        return {index: params for index, (_, params) in best.items()}

    def _suggest_confirm(self, trial_id: str) -> dict | None:
        if not self.confirm.seeds or self.finished_confirming:
            return Searcher.FINISHED
        if any(trial not in self.outcomes for trial in self.owner):
            return None  # a search trial still runs: the choice waits for it
        if not self.confirm_queue and not self._confirm_running():
            if not self._another_round():
                self.finished_confirming = True
                return Searcher.FINISHED
        if not self.confirm_queue:
            return None  # the round's last trials still run
        index, seed = self.confirm_queue.pop(0)
        self.confirm_trials[trial_id] = (index, seed)
        chosen = self.confirm_choice[index]
        self.suggested[trial_id] = {**self.groups[index].as_dict(), **chosen, "train.seed": seed, STAGE_KEY: "confirm"}
        return self.suggested[trial_id]

    def _confirm_running(self) -> bool:
        return any(trial not in self.confirm_scores for trial in self.confirm_trials)

    def _another_round(self) -> bool:
        """Queues the next round of confirmation seeds; False when confirmation is over."""
        first_round = self.confirm_seeds == 0
        if not first_round and (not self.confirm.until_decisive or self.confirm_seeds >= self.confirm.max_seeds
                                or self.decisive()):
            return False
        if first_round:  # chosen once, when the search is over: a rerun search trial cannot change it later
            self.confirm_choice = self.chosen()
        count = self.confirm.seeds if first_round else min(self.confirm.per_round,
                                                             self.confirm.max_seeds - self.confirm_seeds)
        seeds = range(self.confirm.first_seed + self.confirm_seeds, self.confirm.first_seed + self.confirm_seeds + count)
        self.confirm_queue = [(index, seed) for seed in seeds for index in sorted(self.confirm_choice)]
        self.confirm_seeds += count
        return bool(self.confirm_queue)

    def decisive(self) -> bool:
        """Whether every primary comparison is decided on the confirmation runs so far."""
        from gmt_ray.report.verdicts import arm_of, decisive, looks_allowed, primary_comparisons, verdicts

        chosen = self.confirm_choice
        scores: dict = {}
        for trial_id, (index, seed) in self.confirm_trials.items():
            if self.confirm_scores.get(trial_id):  # finished with its scores (a failed run has none)
                arm = arm_of({key: str(value) for key, value in {**self.groups[index].as_dict(), **chosen[index]}.items()})
                scores.setdefault(arm, {})[seed] = self.confirm_scores[trial_id]
        looks = looks_allowed(self.confirm.seeds, self.confirm.max_seeds, self.confirm.per_round)
        return decisive(verdicts(scores, primary_comparisons(scores), alpha=self.confirm.alpha,
                                 min_effect=self.confirm.min_effect, looks=looks))

    # ------------------------------------------------------------------ results

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        result = result or {}
        if trial_id in self.confirm_trials:
            # A failed confirmation run counts as done, without scores: its arm has one seed less.
            self.confirm_scores[trial_id] = {} if error else task_scores_of(result)
            return
        index, number = self.owner.get(trial_id, (None, None))
        if index is None:
            return
        value = result.get(self.objective)
        finite = not error and isinstance(value, (int, float)) and math.isfinite(value)
        searched = {k: v for k, v in self.suggested.get(trial_id, {}).items()
                    if k != STAGE_KEY and k not in self.groups[index].as_dict()}
        self.outcomes[trial_id] = (index, searched, float(value) if finite else None)
        if number is None:
            return
        TrialState = optuna.trial.TrialState
        # skip_if_finished: a resumed sweep may replay a trial its study already holds as finished.
        if error:
            self.studies[index].tell(number, state=TrialState.FAIL, skip_if_finished=True)
        elif not finite:
            # Ended without its objective: stopped early by the scheduler.
            self.studies[index].tell(number, state=TrialState.PRUNED, skip_if_finished=True)
        else:
            self.studies[index].tell(number, float(value), skip_if_finished=True)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the objective and its direction come from the experiment, not from Tune

    # The studies persist themselves in their storage; this is the searcher's own state.
    _STATE = ("owner", "suggested", "issued", "_next", "outcomes", "confirm_trials", "confirm_seeds", "confirm_queue",
              "confirm_scores", "confirm_choice", "finished_confirming")

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
        would stay RUNNING in the study for ever, and TPE would keep seeing them: they are
        closed as FAIL. The resumed sweep proposes the same values again for the trial that
        replaces each (``Design``)."""

        for index, study in enumerate(self.studies):
            known = {number for group, number in self.owner.values() if group == index}
            for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                if trial.number not in known:
                    study.tell(trial.number, state=optuna.trial.TrialState.FAIL)


def task_scores_of(result: dict) -> dict[str, float]:
    """The per-problem scores a confirmation run reported (``TASK_SCORES_KEY``), whether nested
    or as Tune hands a result to its searcher, flattened into ``task_scores/<task id>`` keys
    (task ids may hold '/' themselves: HumanEval/0)."""
    nested = result.get(TASK_SCORES_KEY)
    if isinstance(nested, dict):
        return {str(task): float(score) for task, score in nested.items()}
    prefix = f"{TASK_SCORES_KEY}/"
    return {key[len(prefix):]: float(value) for key, value in result.items() if key.startswith(prefix)}


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
