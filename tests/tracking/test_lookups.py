"""Finding sweeps and init_from references (gmt_ray.tracking.lookups) in a real SQLite store."""

import pytest

from gmt_ray import tracking
from tests.helpers import sweep_of


def test_a_sweep_is_found_by_name_or_parent_run_id(store):
    uri, trials = store
    parent = sweep_of(uri, trials["a"]).parent_run_id
    assert tracking.find_parent_run(uri, "sft-sweep") == parent == tracking.find_parent_run(uri, parent)
    with pytest.raises(ValueError, match="not a sweep's parent run"):
        tracking.find_parent_run(uri, trials["a"])
    with pytest.raises(ValueError, match="no sweep named 'other'"):
        tracking.find_parent_run(uri, "other")


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
    with pytest.raises(ValueError, match="has no exported model or final checkpoint"):
        tracking.resolve_init_from(uri, f"mlflow:{trials['d']}")


def test_environment_tracking_uri_is_used_when_none_is_configured(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://10.0.0.5:5000")
    assert tracking.resolve_tracking_uri(None, base=tmp_path) == "http://10.0.0.5:5000"
    assert tracking.resolve_tracking_uri("sqlite:///x.db", base=tmp_path) == f"sqlite:///{tmp_path / 'x.db'}"


def test_an_experiment_gets_its_mlflow_init_from_resolved_and_paths_kept(store):
    from gmt_ray.config import load_experiment

    uri, trials = store
    config = load_experiment(None, [f"mlflow.tracking_uri={uri}", "train.init_from=mlflow:best:sft-sweep:gmt"])
    assert tracking.init_from_by_method(config) == {"gmt": "/ckpt/b"}
    plain = load_experiment(None, ["train.init_from=/some/dir", "search.methods=[sft, gmt]"])
    assert tracking.init_from_by_method(plain) == {"gmt": "/some/dir", "sft": "/some/dir"}
    assert tracking.init_from_by_method(load_experiment()) == {}


def test_each_method_starts_from_its_own_best_trial(store):
    from gmt_ray.config import load_experiment

    uri, trials = store
    config = load_experiment(None, [f"mlflow.tracking_uri={uri}", "train.init_from=mlflow:best:sft-sweep:{method}",
                                    "search.methods=[sft, gmt]", "mask.method=gmt"])
    assert tracking.init_from_by_method(config) == {"gmt": "/ckpt/b", "sft": "/ckpt/c"}
    missing = load_experiment(None, [f"mlflow.tracking_uri={uri}", "train.init_from=mlflow:best:sft-sweep:{method}",
                                     "search.methods=[sft, rmt]"])
    with pytest.raises(ValueError, match="no finished trial of method 'rmt'"):
        tracking.init_from_by_method(missing)


def test_an_mlflow_reference_into_a_store_that_is_not_there_creates_none(tmp_path):
    uri = tracking.resolve_tracking_uri(None, base=tmp_path)
    with pytest.raises(ValueError, match=r"^train.init_from='mlflow:best:sft-sweep': there is no MLflow store at .*"
                                         "or set mlflow.tracking_uri"):
        tracking.resolve_init_from(uri, "mlflow:best:sft-sweep")
    # The evaluation CLI's flags, named as that command names them.
    with pytest.raises(ValueError, match=r"^--model='mlflow:best:sft-sweep': .* or set --tracking-uri"):
        tracking.resolve_init_from(uri, "mlflow:best:sft-sweep", what="--model")
    assert list(tmp_path.iterdir()) == []
