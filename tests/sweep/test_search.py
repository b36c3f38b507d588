"""GroupedOptunaSearch: every (method, ratio) group gets its own study and its budget."""

import optuna
import pytest

from gmt_ray.config import load_experiment
from gmt_ray.sweep.search import GroupedOptunaSearch, groups_of
from gmt_ray.sweep.study_storage import journal_storage


def config(**overrides):
    base = {
        "search.methods": ["sft", "gmt", "rmt", "hft"],
        "search.space": {"train.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
        "search.num_samples": 3,
    }
    return load_experiment(None, {**base, **overrides})


def test_groups_fix_the_method_and_each_listed_ratio():
    groups = groups_of(config(**{"search.mask_ratios": [0.5, 0.9]}))
    assert [g.as_dict() for g in groups] == [
        {"mask.method": "sft", "mask.mask_ratio": 0.0},
        {"mask.method": "gmt", "mask.mask_ratio": 0.5},
        {"mask.method": "gmt", "mask.mask_ratio": 0.9},
        {"mask.method": "rmt", "mask.mask_ratio": 0.5},
        {"mask.method": "rmt", "mask.mask_ratio": 0.9},
        {"mask.method": "hft", "mask.mask_ratio": 0.0},
    ]


def test_round_robin_budget_and_finish():
    searcher = GroupedOptunaSearch(config())
    suggestions = [searcher.suggest(f"t{i}") for i in range(12)]
    assert [s["mask.method"] for s in suggestions[:4]] == ["sft", "gmt", "rmt", "hft"]
    assert sorted(s["mask.method"] for s in suggestions) == sorted(["sft", "gmt", "rmt", "hft"] * 3)
    assert all(1e-4 <= s["train.lr"] <= 1e-2 for s in suggestions)
    assert searcher.suggest("t12") == GroupedOptunaSearch.FINISHED
    assert searcher.total_trials == 12


def test_restarted_trial_keeps_its_configuration_and_results_reach_its_study():
    searcher = GroupedOptunaSearch(config(**{"search.methods": ["gmt"]}))
    first = searcher.suggest("a")
    assert searcher.suggest("a") == first
    searcher.on_trial_complete("a", {"val_loss": 1.5})
    study = searcher.studies[0]
    assert [t.value for t in study.trials] == [1.5]


def test_groups_with_nothing_to_search_repeat_over_seeds():
    searcher = GroupedOptunaSearch(config(**{"search.methods": ["sft"], "search.space": {}, "train.seed": 7}))
    seeds = [searcher.suggest(f"t{i}")["train.seed"] for i in range(3)]
    assert seeds == [7, 8, 9]


@pytest.mark.parametrize("kind", ["journal", "rdb"])
def test_study_history_persists_in_its_storage(tmp_path, kind):
    def storage():  # a fresh handle each time, as a resumed sweep opens it
        if kind == "journal":
            return journal_storage(tmp_path / "optuna.journal")
        return optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")

    searcher = GroupedOptunaSearch(config(**{"search.methods": ["gmt"]}), storage=storage())
    searcher.suggest("a")
    searcher.on_trial_complete("a", {"val_loss": 0.5})
    again = GroupedOptunaSearch(config(**{"search.methods": ["gmt"]}), storage=storage())
    assert [t.value for t in again.studies[0].trials] == [0.5]


def test_restore_fails_optuna_trials_asked_after_the_saved_state(tmp_path):
    searcher = GroupedOptunaSearch(config(**{"search.methods": ["gmt"]}), storage=journal_storage(tmp_path / "j"))
    searcher.suggest("a")
    searcher.on_trial_complete("a", {"val_loss": 0.5})
    searcher.suggest("b")
    searcher.save(str(tmp_path / "searcher.pkl"))
    searcher.suggest("c")  # the driver dies before the next save
    restored = GroupedOptunaSearch(config(**{"search.methods": ["gmt"]}), storage=journal_storage(tmp_path / "j"))
    restored.restore(str(tmp_path / "searcher.pkl"))
    states = [t.state for t in restored.studies[0].get_trials()]
    TrialState = optuna.trial.TrialState
    assert states == [TrialState.COMPLETE, TrialState.RUNNING, TrialState.FAIL]  # b continues, c is gone
    restored.on_trial_complete("b", {"val_loss": 0.4})
    assert [t.value for t in restored.studies[0].get_trials()][:2] == [0.5, 0.4]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"search.space": {"train.lrr": {"type": "uniform", "low": 0, "high": 1}}}, "train.lrr: no such option"),
        ({"search.space": {"train.lr": {"type": "loguniform", "low": 0, "high": 1}}}, "loguniform needs low > 0"),
        ({"search.space": {"train.lr": {"type": "uniform", "low": 1, "high": 1}}}, "needs low < high"),
        ({"search.space": {"train.lr": {"type": "choice", "values": []}}}, "non-empty 'values'"),
        ({"search.methods": ["gmt", "gmt"]}, "methods repeat"),
        ({"search.methods": ["dare"]}, "search.methods.0"),
        ({"search.mask_ratios": [1.0]}, "search.mask_ratios.0"),
        ({"search.mask_ratios": [0.5], "search.space": {"mask.mask_ratio": {"type": "uniform", "low": 0.1, "high": 0.9}}},
         "not both"),
        ({"search.space": {"resources.num_workers": {"type": "int", "low": 1, "high": 2}}}, "only model, data"),
    ],
)
def test_bad_search_sections(overrides, message):
    from gmt_ray.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        config(**overrides)


def test_each_sampler_draws_from_its_groups_space():
    grid = {"train.lr": {"type": "choice", "values": [1e-3, 3e-3]}, "train.seed": {"type": "choice", "values": [0, 1]}}
    searcher = GroupedOptunaSearch(config(**{"search.methods": ["gmt"], "search.sampler": "grid",
                                             "search.space": grid, "search.num_samples": 4}))
    points = {(s["train.lr"], s["train.seed"]) for s in (searcher.suggest(f"g{i}") for i in range(4))}
    assert points == {(1e-3, 0), (1e-3, 1), (3e-3, 0), (3e-3, 1)}  # every grid point exactly once
    for sampler in ("random", "tpe"):
        searcher = GroupedOptunaSearch(config(**{"search.methods": ["gmt"], "search.sampler": sampler,
                                                 "search.startup_trials": 1}))
        values = []
        for i in range(3):
            values.append(searcher.suggest(f"{sampler}{i}")["train.lr"])
            searcher.on_trial_complete(f"{sampler}{i}", {"val_loss": values[-1]})
        assert all(1e-4 <= v <= 1e-2 for v in values) and len(set(values)) == 3
        assert type(searcher.studies[0].sampler).__name__ == {"random": "RandomSampler", "tpe": "TPESampler"}[sampler]


def test_a_trial_without_its_objective_is_pruned_and_an_error_fails():
    import optuna

    searcher = GroupedOptunaSearch(config(**{"search.methods": ["gmt"]}))
    for trial_id in "abc":
        searcher.suggest(trial_id)
    searcher.on_trial_complete("a", {"val_loss": 1.0})
    searcher.on_trial_complete("b", {"step": 4, "loss": 2.0})  # stopped by the scheduler before its end
    searcher.on_trial_complete("c", None, error=True)
    TrialState = optuna.trial.TrialState
    assert [t.state for t in searcher.studies[0].trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL]


@pytest.mark.parametrize("overrides, message", [
    ({"search.sampler": "grid"}, r"sampler 'grid' needs explicit values, but \['train.lr'\] is a range"),
    ({"search.sampler": "grid", "search.space": {"train.lr": {"type": "choice", "values": [1e-3, 2e-3]}}},
     "has 2 points per group; num_samples=3 would repeat them"),
])
def test_grid_needs_explicit_values(overrides, message):
    from gmt_ray.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        config(**overrides)


def test_a_trial_replayed_after_a_resume_is_not_told_twice():
    searcher = GroupedOptunaSearch(config(**{"search.methods": ["gmt"]}))
    searcher.suggest("a")
    searcher.on_trial_complete("a", {"val_loss": 1.0})
    searcher.on_trial_complete("a", None, error=True)  # Tune replays it after a resume: no error, no change
    assert [t.value for t in searcher.studies[0].trials] == [1.0]


def test_a_grid_group_completes_its_last_point():
    """Optuna's GridSampler stops Study.optimize once its grid is told in full; under ask/tell
    there is no loop to stop, and its Study.stop() raised into Tune, which failed each group's last trial."""
    grid = {"train.lr": {"type": "choice", "values": [1e-3, 3e-3]}}
    searcher = GroupedOptunaSearch(config(**{"search.methods": ["gmt"], "search.sampler": "grid",
                                             "search.space": grid, "search.num_samples": 2}))
    for i in range(2):
        searcher.suggest(f"g{i}")
    for i in range(2):
        searcher.on_trial_complete(f"g{i}", {"val_loss": 0.5 + i})
    trials = searcher.studies[0].trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"] and sorted(t.value for t in trials) == [0.5, 1.5]
    assert searcher.suggest("g2") == searcher.FINISHED
