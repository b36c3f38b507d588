"""MLflow helpers against a real SQLite store written through MLflow's client."""

import pytest

from gmt_ray.sweep import tracking


@pytest.fixture
def store(tmp_path):
    uri = tracking.resolve_tracking_uri(None, base=tmp_path)
    parent = tracking.start_parent_run(uri, "exp", "sft-sweep", {"search": {"metric": "val_loss", "mode": "min"}},
                                       "name: sft-sweep\n")
    client = tracking.client(uri)
    trials = {}
    for trial_id, method, loss in [("a", "gmt", 0.9), ("b", "gmt", 0.7), ("c", "sft", 0.5), ("d", "gmt", 0.1)]:
        run_id = tracking.trial_run(uri, parent, trial_id, f"trial_{trial_id}", {"mask.method": method})
        client.log_metric(run_id, "val_loss", loss)
        if trial_id != "d":  # d never finished: no checkpoint, still RUNNING
            client.set_tag(run_id, tracking.CHECKPOINT_TAG, f"/ckpt/{trial_id}")
            client.set_terminated(run_id, "FINISHED")
        trials[trial_id] = run_id
    return uri, trials


def test_runs_of_trials_the_resumed_sweep_does_not_know_are_soft_deleted(store):
    uri, trials = store
    client = tracking.client(uri)
    parent_id = client.get_run(trials["a"]).data.tags[tracking.PARENT_TAG]
    assert tracking.delete_unknown_children(uri, parent_id, {"a", "b", "c"}) == 1
    assert client.get_run(trials["d"]).info.lifecycle_stage == "deleted"
    assert {client.get_run(trials[t]).info.lifecycle_stage for t in "abc"} == {"active"}
    assert tracking.delete_unknown_children(uri, parent_id, {"a", "b", "c"}) == 0


def test_a_path_is_kept_and_a_run_id_gives_its_checkpoint(store):
    uri, trials = store
    assert tracking.resolve_init_from(uri, "/some/dir") == "/some/dir"
    assert tracking.resolve_init_from(uri, f"mlflow:{trials['a']}") == "/ckpt/a"


def test_best_of_a_sweep_uses_its_own_objective_and_skips_unfinished_trials(store):
    uri, _ = store
    assert tracking.resolve_init_from(uri, "mlflow:best:sft-sweep") == "/ckpt/c"
    assert tracking.resolve_init_from(uri, "mlflow:best:sft-sweep:gmt") == "/ckpt/b"


@pytest.mark.parametrize("spec, message", [
    ("mlflow:best:nope", "no sweep named 'nope'"),
    ("mlflow:best:sft-sweep:rmt", "no finished trial of method 'rmt'"),
    ("mlflow:0123456789abcdef", "no MLflow run"),
])
def test_unresolvable_references_name_what_is_missing(store, spec, message):
    uri, _ = store
    with pytest.raises(ValueError, match=message):
        tracking.resolve_init_from(uri, spec)


def test_a_run_without_checkpoint_is_an_error(store):
    uri, trials = store
    with pytest.raises(ValueError, match="no final checkpoint"):
        tracking.resolve_init_from(uri, f"mlflow:{trials['d']}")


def test_environment_tracking_uri_is_used_when_none_is_configured(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://10.0.0.5:5000")
    assert tracking.resolve_tracking_uri(None, base=tmp_path) == "http://10.0.0.5:5000"
    assert tracking.resolve_tracking_uri("sqlite:///x.db", base=tmp_path) == f"sqlite:///{tmp_path / 'x.db'}"


def test_an_experiment_gets_its_mlflow_init_from_resolved_and_paths_kept(store):
    from gmt_ray.config import load_experiment

    uri, trials = store
    config = load_experiment(None, [f"mlflow.tracking_uri={uri}", "train.init_from=mlflow:best:sft-sweep:gmt"])
    assert tracking.with_resolved_init_from(config).train.init_from == "/ckpt/b"
    plain = load_experiment(None, ["train.init_from=/some/dir"])
    assert tracking.with_resolved_init_from(plain) is plain
