"""Rehearsals: the paper files at toy scale, their own code path, stand-ins where needed."""

from operator import attrgetter
from pathlib import Path

import pytest

from gmt_ray.config import load_experiment
from gmt_ray.sweep.rehearse import rehearsal_config

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("name", ["math", "code", "general", "dpo", "general-13b", "dpo-13b"])
def test_a_rehearsal_keeps_the_files_code_path_and_substitutes_what_it_cannot_reach(offline, name):
    original = load_experiment(EXPERIMENTS / f"{name}.yaml")
    config, notes = rehearsal_config(original)
    assert config.name == f"{original.name}-rehearsal"
    assert config.mlflow.experiment_name == f"{original.name}-rehearsal"
    # What the real run does, it does: objective, parallelism, methods, benchmarks, lm-eval tasks.
    for keep in ("search.metric", "search.methods", "train.parallelism", "train.objective", "eval.benchmarks",
                 "eval.lm_eval.tasks", "mask.method", "mask.drop_strategy"):
        assert attrgetter(keep)(config) == attrgetter(keep)(original), keep
    assert config.search.num_samples == 1 and config.search.mask_ratios == original.search.mask_ratios[:1]
    assert config.resources.num_workers == 2 and config.train.max_steps <= 8
    # Offline: a model of the same family, rows in the data set's own columns, local files.
    assert any("the hub cannot be reached" in note for note in notes)
    assert Path(config.model.name, "config.json").exists()
    assert config.data.source == "file" and Path(config.data.path).exists()
    assert all(Path(p).exists() for p in config.eval.data.values())
    assert Path(config.storage_path) == offline / "runs"  # /mnt/shared is not here: nothing made up there
    if original.train.init_from:
        sweep = original.train.init_from.removeprefix("mlflow:best:").removesuffix(":{method}")
        assert config.train.init_from == f"mlflow:best:{sweep}-rehearsal:{{method}}"
    for benchmark, sampling in original.eval.sampling.items():  # sampled still, enough for pass@10
        assert config.eval.sampling[benchmark].samples == min(sampling.samples, 10)
    # One evaluation file for two benchmarks (MBPP+ as mbpp and mbpp_plus_tests): one stand-in.
    assert len(set(config.eval.data.values())) == len(set(original.eval.data.values()))


def test_a_rehearsal_that_fails_its_checks_keeps_the_previous_one(offline):
    from gmt_ray.errors import UsageError
    from gmt_ray.sweep.rehearse import rehearse

    previous = offline / "runs" / "quickstart-rehearsal" / "trial_0"
    previous.mkdir(parents=True)
    (previous / "result.json").write_text("{}")
    with pytest.raises(UsageError, match="no-such-model"):  # found by the checks, not by the config's schema
        rehearse(EXPERIMENTS / "quickstart.yaml", [f"train.init_from={offline / 'no-such-model'}"])
    assert (previous / "result.json").exists()
    assert not (offline / "mlflow.db").exists()  # the previous rehearsal's runs were not touched either
