"""benchmarks/search_efficiency.py: its replay goes through the sweep's own config and search,
so a change there that the replay no longer satisfies fails here, not in the docs' numbers."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def search_efficiency():
    spec = importlib.util.spec_from_file_location("search_efficiency", ROOT / "benchmarks" / "search_efficiency.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("strategy", ["random", "tpe", "tpe+asha"])
def test_a_replay_of_the_recorded_grid_finds_a_trial_within_the_best_s_interval(search_efficiency, strategy):
    grid = search_efficiency.load_grid(search_efficiency.DATA)
    assert len(grid) == 126
    config = search_efficiency.replay_config(grid, strategy, seed=0)
    assert config.search.metric == "val_arithmetic_accuracy"
    outcome = search_efficiency.replay(grid, strategy, seed=0)
    assert outcome.trials_started == 126 and outcome.found is not None and 0 < outcome.fraction <= 1
    best = max(grid, key=lambda r: r.accuracy)
    assert outcome.found.accuracy >= best.accuracy_low
    assert (outcome.stopped_early > 0) == (strategy == "tpe+asha")
