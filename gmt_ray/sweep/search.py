"""Search: one Optuna study per (method, mask ratio) group, behind one Tune searcher.

The paper compares methods at equal mask ratio, each at its best learning rate. A single
TPE study over ``method`` would spend its budget where it likes; instead each group has
its own ``OptunaSearch`` and budget, and the groups take turns suggesting trials so that
every method advances together under a concurrency limit.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any

from ray.tune.search import Searcher

from gmt_ray.config import Experiment, SearchParam

__all__ = ["Group", "GroupedOptunaSearch", "groups_of", "optuna_space"]

# Methods whose mask ratio means nothing: sft masks nothing, hft always freezes half.
_RATIO_FREE = {"sft", "hft"}


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
        variants = [(("mask.drop_strategy", s),) for s in config.search.drop_strategies] if method == "drop" else [()]
        for variant in variants or [()]:
            head = (("mask.method", method), *variant)
            if config.search.mask_ratios and method not in _RATIO_FREE:
                groups += [Group((*head, ("mask.mask_ratio", r))) for r in config.search.mask_ratios]
            elif method in _RATIO_FREE:
                groups.append(Group((*head, ("mask.mask_ratio", 0.0))))
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


class GroupedOptunaSearch(Searcher):
    """Round-robin over per-group OptunaSearch instances, ``num_samples`` trials each.

    Args:
        config: the experiment (search section: groups, space, metric, mode, seed).
        storage_url: an Optuna RDB URL; each group's study lives there by name, so a
            resumed sweep keeps its history even beyond Tune's own searcher checkpoint.
    """

    def __init__(self, config: Experiment, storage_url: str | None = None):
        from ray.tune.search.optuna import OptunaSearch

        s = config.search
        super().__init__(metric=s.metric, mode=s.mode)
        self.groups = groups_of(config)
        self.budget = s.num_samples
        storage = None
        if storage_url:
            import optuna

            storage = optuna.storages.RDBStorage(storage_url)
        self.searchers = []
        for index, group in enumerate(self.groups):
            space = optuna_space(s.space, group)
            searcher = OptunaSearch(
                space=space or None, metric=s.metric, mode=s.mode, seed=s.seed + index,
                study_name=f"{config.name}/{group.name}", storage=storage,
            )
            self.searchers.append(searcher)
        self.base_seed = config.train.seed
        self.issued = [0] * len(self.groups)
        self.owner: dict[str, int] = {}
        self.suggested: dict[str, dict] = {}
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
        self.owner[trial_id] = index
        searcher = self.searchers[index]
        if searcher._space:
            params = searcher.suggest(trial_id) or {}
        else:
            # Nothing to search in this group: its trials repeat it over training seeds.
            params = {"train.seed": self.base_seed + self.issued[index] - 1}
        self.suggested[trial_id] = {**self.groups[index].as_dict(), **params}
        return self.suggested[trial_id]

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # Training reports without the objective (step metrics) are no news to Optuna.
        index = self.owner.get(trial_id)
        if index is not None and self.metric in result and self.searchers[index]._space:
            import optuna

            try:
                self.searchers[index].on_trial_result(trial_id, result)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # a resumed sweep replaying a trial its study already holds as finished

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        index = self.owner.get(trial_id)
        if index is not None and self.searchers[index]._space:
            self.searchers[index].on_trial_complete(trial_id, result=result, error=error)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # metric and mode come from the experiment, not from Tune

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
        self._fail_unsaved_trials()

    def _fail_unsaved_trials(self) -> None:
        """Optuna trials asked for after the last saved state (the driver died in between)
        would stay RUNNING in the study for ever, and TPE's constant liar would keep
        counting them: they are closed as FAIL."""
        import optuna

        for searcher in self.searchers:
            study = getattr(searcher, "_ot_study", None)
            if study is None:
                continue
            known = {t.number for t in searcher._ot_trials.values()}
            for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                if trial.number not in known:
                    study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
