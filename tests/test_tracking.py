"""The MLflow module against a real SQLite store written through MLflow's client."""

import pytest

from gmt_ray import tracking
from gmt_ray.tracking import SweepRuns, Tags


@pytest.fixture
def store(tmp_path):
    uri = tracking.resolve_tracking_uri(None, base=tmp_path)
    runs = SweepRuns.start(uri, "exp", "sft-sweep", {"search": {"metric": "val_loss", "mode": "min"}},
                           "name: sft-sweep\n")
    trials = {}
    for trial_id, method, loss in [("a", "gmt", 0.9), ("b", "gmt", 0.7), ("c", "sft", 0.5), ("d", "gmt", 0.1)]:
        run_id = runs.open_trial(trial_id, f"trial_{trial_id}", {"mask.method": method})
        runs.log_step(run_id, {"val_loss": loss}, step=1)
        if trial_id != "d":  # d never finished: no checkpoint, still RUNNING
            runs.finish_trial(run_id, objective="val_loss", value=loss, checkpoint=f"/ckpt/{trial_id}")
        trials[trial_id] = run_id
    return uri, trials


def _runs(uri, trials) -> SweepRuns:
    return SweepRuns(uri, tracking.client(uri).get_run(trials["a"]).data.tags[Tags.PARENT])


def test_runs_of_trials_the_resumed_sweep_does_not_know_are_soft_deleted(store):
    uri, trials = store
    runs = _runs(uri, trials)
    assert runs.delete_unknown({"a", "b", "c"}) == 1
    assert runs.client.get_run(trials["d"]).info.lifecycle_stage == "deleted"
    assert {runs.client.get_run(trials[t]).info.lifecycle_stage for t in "abc"} == {"active"}
    assert runs.delete_unknown({"a", "b", "c"}) == 0


def test_a_trial_run_is_reopened_not_duplicated_and_closed_by_its_owner(store):
    uri, trials = store
    runs = _runs(uri, trials)
    assert runs.open_trial("d", "again", {"mask.method": "gmt"}) == trials["d"]
    assert runs.last_logged_step(trials["d"], "val_loss") == 1 and runs.last_logged_step(trials["d"]) == 0
    assert runs.close_running(status="KILLED") == 1
    assert runs.client.get_run(trials["d"]).info.status == "KILLED"
    # A trial the scheduler stopped before its final report is closed as early-stopped;
    # one that reported its objective is left as it is.
    assert runs.mark_early_stopped("d", 4) and runs.client.get_run(trials["d"]).data.tags[Tags.EARLY_STOPPED] == "step 4"
    assert not runs.mark_early_stopped("a", 4)
    runs.fail_trial(trials["d"])  # the dying fit() reports after the early stop: it stays early-stopped
    assert runs.client.get_run(trials["d"]).info.status == "FINISHED"


def test_a_sweep_is_found_by_name_or_parent_run_id(store):
    uri, trials = store
    parent = _runs(uri, trials).parent_run_id
    assert tracking.find_parent_run(uri, "sft-sweep") == parent == tracking.find_parent_run(uri, parent)
    with pytest.raises(ValueError, match="not a sweep's parent run"):
        tracking.find_parent_run(uri, trials["a"])
    with pytest.raises(ValueError, match="no sweep named 'other'"):
        tracking.find_parent_run(uri, "other")


def test_the_tracking_module_imports_no_ray():
    import subprocess
    import sys

    code = "import sys, gmt_ray.tracking, gmt_ray.report; print(sorted(m for m in sys.modules if m.split('.')[0] == 'ray'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


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
    with pytest.raises(ValueError, match="there is no MLflow store at"):
        tracking.resolve_init_from(uri, "mlflow:best:sft-sweep")
    assert list(tmp_path.iterdir()) == []


def test_evaluation_rows_logged_again_replace_the_table_rather_than_append(store, tmp_path):
    import json

    uri, trials = store
    runs = _runs(uri, trials)
    (tmp_path / "eval").mkdir()
    rows = [{"task_id": str(i), "correct": i % 2 == 0} for i in range(3)]
    (tmp_path / "eval" / "step6-arithmetic.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for _ in range(2):  # a retried upload, or a restarted trial reporting the same step
        assert runs.log_eval_rows(trials["d"], tmp_path) == ["eval/step6-arithmetic.jsonl"]
    table = runs.client.download_artifacts(trials["d"], "eval/step6-arithmetic.table.json", str(tmp_path / "out"))
    assert json.loads(open(table).read())["data"] == [["0", True], ["1", False], ["2", True]]
    listed = json.loads(runs.client.get_run(trials["d"]).data.tags["mlflow.loggedArtifacts"])
    assert listed == [{"path": "eval/step6-arithmetic.table.json", "type": "table"}]
