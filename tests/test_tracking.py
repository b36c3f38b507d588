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



# ----------------------------------------------------------------------------- what the MLflow UI shows


def _model_dir(path):
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return str(path)


@pytest.fixture
def sweep_with_models(tmp_path):
    """A sweep of four finished trials (two gmt, two sft), each with an exported model directory."""
    from gmt_ray.data.catalog import DatasetRef

    uri = tracking.resolve_tracking_uri(None, base=tmp_path)
    runs = SweepRuns.start(uri, "exp", "ui-sweep", {}, "name: ui-sweep\n")
    datasets = [DatasetRef("arithmetic-train", "0123456789abcdef", "code", {"tags": {"mlflow.source.name": "gen"}},
                           "train", "train", 256, ("prompt", "response")),
                DatasetRef("arithmetic-test", "fedcba9876543210", "code", {"tags": {}}, "eval", "test", 8)]
    run_ids = {}
    for trial_id, method, loss in [("a", "gmt", 0.9), ("b", "gmt", 0.7), ("c", "sft", 0.5), ("d", "sft", 0.6)]:
        run_id = runs.open_trial(trial_id, f"{method} lr=1.0e-03 s0", {"mask.method": method}, datasets)
        runs.log_step(run_id, {"val_loss": loss, "step": 6}, step=6)
        runs.finish_trial(run_id, objective="val_loss", value=loss, checkpoint=f"/ckpt/{trial_id}",
                          model=_model_dir(tmp_path / "models" / trial_id))
        run_ids[trial_id] = run_id
    return uri, runs, run_ids, tmp_path


def test_a_sweep_experiment_is_a_training_experiment_new_or_reused(tmp_path):
    uri = tracking.resolve_tracking_uri(None, base=tmp_path)
    mlflow_client = tracking.client(uri)
    reused = mlflow_client.create_experiment("exp")
    runs = SweepRuns.start(uri, "exp", "s", {}, "")
    assert runs.experiment_id == reused
    assert mlflow_client.get_experiment(reused).tags[Tags.EXPERIMENT_KIND] == tracking.EXPERIMENT_KIND
    assert tracking.experiment_url(uri, reused) == (
        f"http://127.0.0.1:5000/#/experiments/{reused}/runs?workflowType=machine_learning")
    assert tracking.experiment_url("http://head:5000/", "7").startswith("http://head:5000/#/experiments/7/runs?")


def test_trial_runs_have_their_datasets_as_inputs_once(sweep_with_models):
    _, runs, run_ids, _ = sweep_with_models
    inputs = runs.client.get_run(run_ids["a"]).inputs.dataset_inputs
    seen = {(i.dataset.name, i.dataset.digest, i.dataset.source_type): [t.value for t in i.tags if t.key == Tags.DATASET_CONTEXT]
            for i in inputs}
    assert seen == {("arithmetic-train", "0123456789abcdef", "code"): ["train"],
                    ("arithmetic-test", "fedcba9876543210", "code"): ["eval"]}
    assert runs.open_trial("a", "again", {}, []) == run_ids["a"]  # a restarted trial: reused, not logged twice
    assert len(runs.client.get_run(run_ids["a"]).inputs.dataset_inputs) == 2


def test_every_finished_trial_has_an_external_logged_model_of_its_run(sweep_with_models):
    _, runs, run_ids, tmp_path = sweep_with_models
    run = runs.client.get_run(run_ids["b"])
    model_id = run.data.tags[Tags.MODEL_ID]
    assert [o.model_id for o in run.outputs.model_outputs] == [model_id]
    model = runs.client.get_logged_model(model_id)
    assert model.source_run_id == run_ids["b"] and str(model.status) in ("READY", "LoggedModelStatus.READY")
    assert model.tags[Tags.MODEL] == str(tmp_path / "models" / "b") and model.tags[Tags.MODEL_IS_EXTERNAL] == "true"
    assert model.name == "ui-sweep-gmt-b" and model.params["mask.method"] == "gmt"
    # Only the MLmodel stub went to the artifact store, not the weights.
    stored = [a.path for a in runs.client.list_logged_model_artifacts(model_id)]
    assert stored == ["MLmodel"]
    assert runs.log_model(run_ids["b"], "/elsewhere") == model_id  # once per run


def test_the_best_trial_of_each_method_is_registered_with_an_alias(sweep_with_models):
    uri, runs, run_ids, tmp_path = sweep_with_models
    assert runs.register_best("val_loss", "min") == {"gmt": "models:/ui-sweep-gmt@best",
                                                     "sft": "models:/ui-sweep-sft@best"}
    assert tracking.resolve_model_uri(uri, "models:/ui-sweep-gmt@best") == str(tmp_path / "models" / "b")
    assert tracking.resolve_model_uri(uri, "models:/ui-sweep-sft@best") == str(tmp_path / "models" / "c")
    assert tracking.resolve_model_uri(uri, "models:/ui-sweep-sft/1") == str(tmp_path / "models" / "c")
    model_id = runs.client.get_run(run_ids["c"]).data.tags[Tags.MODEL_ID]
    assert tracking.resolve_model_uri(uri, f"models:/{model_id}") == str(tmp_path / "models" / "c")
    # Registering again adds no version; a better trial moves the alias to a new version.
    runs.register_best("val_loss", "min")
    assert len(runs.client.search_model_versions("name = 'ui-sweep-gmt'")) == 1
    better = runs.open_trial("e", "gmt lr=2.0e-03 s1", {"mask.method": "gmt"})
    runs.log_step(better, {"val_loss": 0.2}, step=6)
    runs.finish_trial(better, objective="val_loss", value=0.2, checkpoint=None,
                      model=_model_dir(tmp_path / "models" / "e"))
    runs.register_best("val_loss", "min")
    assert str(runs.client.get_model_version_by_alias("ui-sweep-gmt", "best").version) == "2"
    assert tracking.resolve_init_from(uri, "models:/ui-sweep-gmt@best") == str(tmp_path / "models" / "e")


def test_an_experiment_with_a_registered_model_gets_its_directory(sweep_with_models):
    from gmt_ray.config import load_experiment

    uri, runs, _, tmp_path = sweep_with_models
    runs.register_best("val_loss", "min")
    config = load_experiment(None, [f"mlflow.tracking_uri={uri}", "train.init_from=models:/ui-sweep-sft@best"])
    assert tracking.init_from_by_method(config) == {"gmt": str(tmp_path / "models" / "c")}


@pytest.mark.parametrize("uri, message", [
    ("models:/nope@best", "no such registered model version"),
    ("models:/ui-sweep-gmt@worst", "no such registered model version"),
    ("models:/m-0000", "no logged model 'm-0000'"),
])
def test_unknown_models_are_named(sweep_with_models, uri, message):
    store, runs, _, _ = sweep_with_models
    runs.register_best("val_loss", "min")
    with pytest.raises(ValueError, match=message):
        tracking.resolve_model_uri(store, uri)


def test_system_metrics_reach_a_run_even_when_it_is_shorter_than_one_interval(store):
    import time

    uri, trials = store
    metrics = tracking.SystemMetrics(uri, trials["d"], interval_s=60).start()
    time.sleep(0.5)
    metrics.stop()
    logged = tracking.client(uri).get_run(trials["d"]).data.metrics
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(logged)
    node = tracking.SystemMetrics(uri, trials["d"], node_id="node1", interval_s=0.2).start()
    time.sleep(1.0)
    node.stop()
    history = tracking.client(uri).get_metric_history(trials["d"], "system/node1/cpu_utilization_percentage")
    assert len(history) >= 2  # sampled every interval, not only at the end


def test_the_comparison_view_is_a_saved_view_of_the_experiment(sweep_with_models):
    import json

    uri, runs, _, _ = sweep_with_models
    view = runs.save_comparison_view("val_loss", "min", ["mask.method", "train.lr", "mask.mask_ratio"])
    assert runs.save_comparison_view("val_loss", "min", ["mask.method", "train.lr"]) == view  # rewritten in place
    tags = runs.client.get_experiment(runs.experiment_id).tags
    envelope = json.loads(tags[f"mlflow.sharedViewState.{view}"])
    assert envelope["name"] == "ui-sweep: trials by val_loss"
    state = json.loads(envelope["state"])
    (parallel, scatter) = state["compareRunCharts"]
    assert parallel["selectedParams"] == ["mask.method", "train.lr"] and parallel["selectedMetrics"] == ["val_loss"]
    assert scatter["xaxis"] == {"key": "train.lr", "type": "PARAM"}
    assert state["searchFilter"] == "tags.`gmt_ray.sweep` = 'ui-sweep' AND tags.`gmt_ray.role` = 'trial'"
    assert tracking.experiment_url(uri, runs.experiment_id, view=view).endswith(
        f"/runs?viewStateShareKey={view}&compareRunsMode=CHART&workflowType=machine_learning")
