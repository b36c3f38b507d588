"""GroupedOptunaSearch: every (method, ratio) group gets its own study and its budget."""

import math

import numpy as np
import optuna
import pytest
from ray.tune.utils import flatten_dict

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
    import optuna

    for sampler in ("random", "tpe"):
        proposals = []
        for _ in range(2):  # two searchers of the same seed
            searcher = GroupedOptunaSearch(config(**{"search.methods": ["gmt"], "search.sampler": sampler,
                                                     "search.startup_trials": 1}))
            values = []
            for i in range(3):
                values.append(searcher.suggest(f"{sampler}{i}")["train.lr"])
                searcher.on_trial_complete(f"{sampler}{i}", {"val_loss": values[-1]})
            proposals.append(values)
        assert all(1e-4 <= v <= 1e-2 for v in proposals[0]) and len(set(proposals[0])) == 3
        # random: each draw fixed from (seed, number); tpe: the same after its one start-up trial.
        assert proposals[0] == proposals[1]
        if sampler == "tpe":  # Optuna's own TPE proposes after the start-up trial
            assert isinstance(searcher.studies[0].sampler, optuna.samplers.TPESampler)


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


# ----------------------------------------------------------------------------- proposals


def test_each_proposal_follows_from_the_seed_and_its_number_so_a_resumed_sweep_repeats_none(tmp_path):
    straight = GroupedOptunaSearch(config(**{"search.methods": ["gmt"], "search.num_samples": 6}))
    expected = [straight.suggest(f"s{i}")["train.lr"] for i in range(6)]
    assert len(set(expected)) == 6  # a Sobol design: no repeats

    searcher = GroupedOptunaSearch(config(**{"search.methods": ["gmt"], "search.num_samples": 6}), storage=journal_storage(tmp_path / "optuna.journal"))
    got = [searcher.suggest(f"t{i}")["train.lr"] for i in range(2)]
    searcher.on_trial_complete("t0", {"val_loss": 0.5})
    searcher.save(str(tmp_path / "searcher.pkl"))
    searcher.suggest("lost")  # asked after the last save: the driver dies
    resumed = GroupedOptunaSearch(config(**{"search.methods": ["gmt"], "search.num_samples": 6}), storage=journal_storage(tmp_path / "optuna.journal"))
    resumed.restore(str(tmp_path / "searcher.pkl"))
    assert resumed.suggest("t1")["train.lr"] == got[1]  # the trial running at the kill keeps its values
    got += [resumed.suggest(f"t{i}")["train.lr"] for i in range(2, 6)]
    assert got == expected  # the lost trial's values come again, for the trial that replaces it
    assert resumed.suggest("t6") == GroupedOptunaSearch.FINISHED


@pytest.mark.parametrize("sampler, num_samples, said", [
    ("tpe", 3, "sobol (tpe never starts: 3 trials per group, no more than its 10 start-up trials)"),
    ("tpe", 12, "tpe (its first 10 trials of each group a Sobol design)"),
    ("sobol", 3, "sobol"), ("random", 3, "random"),
])
def test_the_sampler_is_named_for_what_it_really_runs(sampler, num_samples, said):
    from gmt_ray.sweep.search import sampler_used

    assert sampler_used(config(**{"search.sampler": sampler, "search.num_samples": num_samples}).search) == said


def test_tpe_takes_over_after_its_start_up_design():
    searcher = GroupedOptunaSearch(config(**{"search.methods": ["gmt"], "search.num_samples": 5,
                                             "search.startup_trials": 3}))
    for i in range(5):
        lr = searcher.suggest(f"t{i}")["train.lr"]
        searcher.on_trial_complete(f"t{i}", {"val_loss": abs(math.log10(lr) + 3)})  # best at lr = 1e-3
    study = searcher.studies[0]
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 5
    assert isinstance(study.sampler, optuna.samplers.TPESampler)  # the last proposal was TPE's


def test_a_grid_runs_every_point_once_in_a_seeded_order():
    grid = {"train.lr": {"type": "choice", "values": [1e-3, 3e-3, 1e-2]},
            "train.seed": {"type": "choice", "values": [0, 1]}}
    searcher = GroupedOptunaSearch(config(**{"search.methods": ["gmt"], "search.sampler": "grid", "search.space": grid,
                                             "search.num_samples": 6}))
    points = [tuple(searcher.suggest(f"t{i}")[k] for k in ("train.lr", "train.seed")) for i in range(6)]
    assert sorted(points) == sorted((lr, seed) for lr in (1e-3, 3e-3, 1e-2) for seed in (0, 1))


def test_update_modes_are_groups_of_their_own():
    groups = groups_of(config(**{"search.methods": ["sft", "gmt"], "search.apply_to": ["grad", "update"],
                                 "search.mask_ratios": [0.9]}))
    assert [g.as_dict() for g in groups] == [
        {"mask.method": "sft", "mask.mask_ratio": 0.0},
        {"mask.method": "gmt", "mask.apply_to": "grad", "mask.mask_ratio": 0.9},
        {"mask.method": "gmt", "mask.apply_to": "update", "mask.mask_ratio": 0.9},
    ]


# ----------------------------------------------------------------------------- confirmation


def confirming(**overrides):
    return config(**{"search.methods": ["sft", "gmt"], "search.mask_ratios": [0.9], "search.num_samples": 2,
                     "eval.benchmarks": ["arithmetic"], "search.metric": "val_arithmetic_accuracy",
                     "search.mode": "max", **overrides})


def _search_stage(searcher, values):
    """Runs the search stage: trial i gets objective values[i]."""
    trials = [searcher.suggest(f"s{i}") for i in range(len(values))]
    for i, value in enumerate(values):
        searcher.on_trial_complete(f"s{i}", {"val_arithmetic_accuracy": value})
    return trials


def test_confirmation_retrains_each_groups_choice_with_fresh_seeds_after_the_search():
    searcher = GroupedOptunaSearch(confirming(**{"confirm.seeds": 2}))
    assert searcher.total_trials == 8
    trials = [searcher.suggest(f"s{i}") for i in range(4)]
    assert searcher.suggest("c0") is None  # the search still runs: nothing to confirm yet
    for i, value in enumerate([0.2, 0.5, 0.4, 0.3]):  # sft, gmt, sft, gmt (round robin)
        searcher.on_trial_complete(f"s{i}", {"val_arithmetic_accuracy": value})
    confirm = [searcher.suggest(f"c{i}") for i in range(4)]
    assert all(c["stage"] == "confirm" for c in confirm) and all(t["stage"] == "search" for t in trials)
    assert sorted((c["mask.method"], c["train.seed"]) for c in confirm) == [("gmt", 1000), ("gmt", 1001),
                                                                            ("sft", 1000), ("sft", 1001)]
    # Each group's best by the objective: sft's second trial (0.4), gmt's first (0.5).
    assert {c["mask.method"]: c["train.lr"] for c in confirm} == {"sft": trials[2]["train.lr"],
                                                                   "gmt": trials[1]["train.lr"]}
    assert searcher.suggest("c4") is None  # the round runs
    for i in range(4):
        searcher.on_trial_complete(f"c{i}", {"task_scores": {"1": 1.0}})
    assert searcher.suggest("c4") == GroupedOptunaSearch.FINISHED


def test_sequential_confirmation_adds_rounds_until_decided_and_survives_a_restore(tmp_path):
    searcher = GroupedOptunaSearch(confirming(**{"confirm.seeds": 2, "confirm.until_decisive": True,
                                                 "confirm.per_round": 1, "confirm.max_seeds": 4}))
    assert searcher.total_trials == 2 * (2 + 4)
    _search_stage(searcher, [0.2, 0.5, 0.4, 0.3])
    rng = np.random.default_rng(0)

    def finish_round(ids):
        for trial_id in ids:
            # Answers drawn alike for both methods: no difference to find, and too few seeds for
            # equivalence, so every round is used up to max_seeds. Tune hands the searcher its
            # results flattened (task_scores/<task id>), task ids with '/' in them included.
            answers = rng.random(40) < 0.5
            result = flatten_dict({"task_scores": {f"Task/{t}": float(a) for t, a in enumerate(answers)}})
            searcher.on_trial_complete(trial_id, result)
            assert searcher.confirm_scores[trial_id] == {f"Task/{t}": float(a) for t, a in enumerate(answers)}

    first = [f"c{i}" for i in range(4)]
    assert all(searcher.suggest(t)["stage"] == "confirm" for t in first)
    finish_round(first)
    second = ["d0", "d1"]
    assert {searcher.suggest(t)["train.seed"] for t in second} == {1002}
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = GroupedOptunaSearch(confirming(**{"confirm.seeds": 2, "confirm.until_decisive": True,
                                                 "confirm.per_round": 1, "confirm.max_seeds": 4}))
    restored.restore(str(tmp_path / "searcher.pkl"))
    searcher = restored
    finish_round(second)
    third = ["e0", "e1"]
    assert {searcher.suggest(t)["train.seed"] for t in third} == {1003}
    finish_round(third)
    assert searcher.suggest("f0") == GroupedOptunaSearch.FINISHED  # max_seeds spent
    assert searcher.confirm_seeds == 4


def test_a_decided_comparison_ends_the_rounds():
    searcher = GroupedOptunaSearch(confirming(**{"confirm.seeds": 3, "confirm.until_decisive": True,
                                                 "confirm.max_seeds": 9}))
    _search_stage(searcher, [0.2, 0.5, 0.4, 0.3])
    for i in range(6):
        trial_id = f"c{i}"
        method = searcher.suggest(trial_id)["mask.method"]
        if i == 5:  # a failed run leaves its arm a seed short; the others still decide
            searcher.on_trial_complete(trial_id, None, error=True)
            continue
        # gmt answers all 200 problems, sft none: decided at the first look.
        scores = {str(t): float(method == "gmt") for t in range(200)}
        searcher.on_trial_complete(trial_id, flatten_dict({"task_scores": scores}))
    assert searcher.suggest("c6") == GroupedOptunaSearch.FINISHED and searcher.confirm_seeds == 3


def test_the_choice_is_fixed_when_confirmation_starts():
    searcher = GroupedOptunaSearch(confirming(**{"confirm.seeds": 2, "confirm.until_decisive": True,
                                                 "confirm.max_seeds": 3}))
    trials = _search_stage(searcher, [0.2, 0.5, 0.4, 0.3])
    first = searcher.suggest("c0")
    # A search trial rerun now (Tune's resume_errored) with a better value changes nothing.
    searcher.on_trial_complete("s3", {"val_arithmetic_accuracy": 0.9})
    again = [searcher.suggest(f"c{i}") for i in range(1, 4)]
    gmt = [c for c in [first, *again] if c["mask.method"] == "gmt"]
    assert {c["train.lr"] for c in gmt} == {trials[1]["train.lr"]}
