"""SweepRuns (gmt_ray.tracking.runs) against a real SQLite store: the parent run and its trials."""


from gmt_ray import tracking
from gmt_ray.tracking import SweepRuns, Tags
from tests.helpers import sweep_of


def test_runs_of_trials_the_resumed_sweep_does_not_know_are_soft_deleted(store):
    uri, trials = store
    runs = sweep_of(uri, trials["a"])
    assert runs.delete_unknown({"a", "b", "c"}) == 1
    assert runs.client.get_run(trials["d"]).info.lifecycle_stage == "deleted"
    assert {runs.client.get_run(trials[t]).info.lifecycle_stage for t in "abc"} == {"active"}
    assert runs.delete_unknown({"a", "b", "c"}) == 0


def test_a_trial_run_is_reopened_not_duplicated_and_closed_by_its_owner(store):
    uri, trials = store
    runs = sweep_of(uri, trials["a"])
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


def test_the_tracking_module_imports_no_ray():
    import subprocess
    import sys

    code = "import sys, gmt_ray.tracking, gmt_ray.report; print(sorted(m for m in sys.modules if m.split('.')[0] == 'ray'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_evaluation_rows_logged_again_replace_the_table_rather_than_append(store, tmp_path):
    import json

    uri, trials = store
    runs = sweep_of(uri, trials["a"])
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


def test_a_restarted_trial_whose_first_attempt_logged_nothing_gets_its_params_and_datasets(tmp_path):
    from gmt_ray.data.catalog import DatasetRef

    runs = SweepRuns.start(tracking.resolve_tracking_uri(None, base=tmp_path), "exp", "s", {}, "")
    first = runs.open_trial("a", "gmt", {})  # the first attempt died before logging what it is
    datasets = [DatasetRef("arithmetic-train", "0123456789abcdef", "code", {}, "train", "train", 256)]
    params = {"mask.method": "gmt", "train.lr": 0.01}
    assert runs.open_trial("a", "gmt", params, datasets) == first
    run = runs.client.get_run(first)
    assert run.data.params == {"mask.method": "gmt", "train.lr": "0.01"}
    assert [i.dataset.name for i in run.inputs.dataset_inputs] == ["arithmetic-train"]
    runs.open_trial("a", "gmt", {**params, "mask.mask_ratio": 0.5}, datasets)  # a third attempt adds only what is missing
    assert runs.client.get_run(first).data.params["mask.mask_ratio"] == "0.5"
    assert len(runs.client.get_run(first).inputs.dataset_inputs) == 1
