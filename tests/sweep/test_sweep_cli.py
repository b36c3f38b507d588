"""python -m gmt_ray.sweep as a user runs it: bad input and dry runs (in this process: the
command's own main), and real sweeps with real Ray and MLflow (fresh processes)."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import (EVAL_DATA, EXPERIMENTS, ROOT, mlflow_client, rest, run_main, run_module, runs,
                           runs_or_empty, sweep, sweep_in_process, wait_for, write_experiment)

# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "changes, args, message",
    [
        ({"mask.mask_ratio": 1.0}, [], "mask.mask_ratio"),
        ({"search.methods": ["sft", "dare"]}, [], "search.methods.1"),
        ({"train.epochs": 3}, [], "train.epochs: unknown key"),
        ({"train.lr": "fast"}, [], "train.lr"),
        ({"data.source": "file", "data.path": "missing.jsonl"}, [], "missing.jsonl: data file not found"),
        ({}, ["--set", "search.num_samples=0"], "--set: search.num_samples"),
        ({}, ["--resume"], "--resume: no sweep named"),
        ({}, ["--set", "storage_path=/proc/gmt-ray"], "storage_path='/proc/gmt-ray': cannot create directories in /proc"),
        ({"search.methods": ["sft", "gmt"]}, ["--set", "search.methods=[sft, foo]"], "--set: search.methods.1"),
        ({}, ["--cluster", "cluster.yaml"], "--cluster plans a sweep: it goes with --dry-run"),
    ],
)
def test_bad_input_exits_2_and_starts_nothing(tmp_path, changes, args, message):
    path = write_experiment(tmp_path, **changes)
    result = sweep_in_process(tmp_path, str(path), *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert result.stderr.count("error:") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiment.yaml"]  # no mlflow.db, no runs/


@pytest.mark.parametrize("changes, message", [
    ({"eval.benchmarks": ["gsm8k"], "eval.data": {"gsm8k": "/mnt/nowhere/gsm8k_test.jsonl"}},
     "eval.data.gsm8k: /mnt/nowhere/gsm8k_test.jsonl: no such file"),
    ({"data.source": "file", "data.path": "rows.jsonl", "data.prompt_column": "query"},
     "rows.jsonl: row 0: missing field 'query'"),
    ({"train.init_from": "mlflow:best:never-ran:{method}"}, "there is no MLflow store at"),
])
def test_what_only_a_real_run_loads_is_checked_before_anything_starts(tmp_path, changes, message):
    (tmp_path / "rows.jsonl").write_text('{"prompt": "p", "response": "r"}\n' * 20)
    path = write_experiment(tmp_path, **changes)
    result = sweep_in_process(tmp_path, str(path))
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and result.stderr.count("error:") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiment.yaml", "rows.jsonl"]


def test_an_empty_experiment_file_starts_nothing(tmp_path):
    (tmp_path / "experiment.yaml").write_text("\n")
    result = sweep_in_process(tmp_path, "experiment.yaml")
    assert result.returncode == 2 and "experiment.yaml: the experiment file is empty" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiment.yaml"]


def test_missing_experiment_file_in_a_fresh_process(tmp_path):
    # Once as a separate process: the exit code and stderr a shell sees.
    result = sweep(tmp_path, "nope.yaml", timeout=120)
    assert result.returncode == 2 and "nope.yaml: experiment file not found" in result.stderr
    assert "Traceback" not in result.stderr and list(tmp_path.iterdir()) == []


def test_dry_run_prints_the_plan_and_starts_nothing(tmp_path):
    path = write_experiment(tmp_path, **{"search.mask_ratios": [0.5, 0.9], "search.methods": ["sft", "gmt", "rmt"]})
    result = sweep_in_process(tmp_path, str(path), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert '"trials": 5' in result.stdout and '"concurrent_trials": 2' in result.stdout
    assert "method=gmt,mask_ratio=0.9" in result.stdout and '"CPU": 1.01' in result.stdout
    assert "mask_ratio: 0.0" in result.stdout  # the resolved config, every default written out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiment.yaml"]


@pytest.mark.parametrize("name", ["math", "code", "general", "dpo"])
def test_paper_experiments_dry_run_against_the_cluster_file(tmp_path, name):
    result = sweep_in_process(tmp_path, str(EXPERIMENTS / f"{name}.yaml"), "--dry-run", "--cluster",
                              str(ROOT / "cluster.yaml"))
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout[result.stdout.index("\n{") + 1:])
    assert plan["concurrent_trials"] == 4 and plan["per_trial"]["GPU"] == 8
    assert plan["estimate"]["gpu_hours_total"] > 10
    assert any("loaded at run time" in note for note in plan["not_checked"])
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing started, nothing written


# ----------------------------------------------------------------------------- the shared sweep


def test_a_sweep_logs_nested_runs_to_mlflow(shared_sweep):
    out = shared_sweep.stdout
    assert "mlflow ui --backend-store-uri sqlite:///" in out
    assert "/runs?workflowType=machine_learning" in out  # the page of the runs table
    assert out.count("  start  ") == 4 and out.count("  done   ") == 4
    # Piped, the console shows each trial's progress as step N/TOTAL (TOTAL: train.max_steps) before its end.
    for trial_id in re.findall(r"  start  (\w+)", out):
        before_end = out[: out.index(f"  done   {trial_id}")]
        assert re.search(rf"  step   {trial_id}  step [1-6]/6  loss \d", before_end), out

    client = shared_sweep.client()
    (parent,) = runs(client, "sweep")
    children = runs(client, "trial")
    assert parent.info.status == "FINISHED"
    assert parent.data.params["mask.method"] == "gmt" and parent.data.params["train.max_steps"] == "6"
    assert parent.data.tags["version.torch"].startswith("2.") and "mlflow.source.git.commit" in parent.data.tags
    assert "config.yaml" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert sorted(c.data.params["mask.method"] for c in children) == ["gmt", "gmt", "sft", "sft"]
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        history = client.get_metric_history(child.info.run_id, "loss")
        assert sorted(m.step for m in history) == [1, 2, 3, 4, 5, 6]
        assert len(client.get_metric_history(child.info.run_id, "val_loss")) == 3
        assert 0 <= child.data.metrics["arithmetic_accuracy"] <= 1
        assert "arithmetic_accuracy_low" in child.data.metrics
        eval_files = {a.path for a in client.list_artifacts(child.info.run_id, "eval")}
        assert eval_files == {"eval/step6-arithmetic.jsonl", "eval/step6-arithmetic.table.json"}
        rows = client.download_artifacts(child.info.run_id, "eval/step6-arithmetic.jsonl",
                                         str(shared_sweep.directory / f"download-{child.info.run_id}"))
        assert len(Path(rows).read_text().splitlines()) == 8
    losses = {c.info.run_id: c.data.metrics["val_loss"] for c in children}  # the objective (min)
    assert parent.data.metrics["best_val_loss"] == pytest.approx(min(losses.values()))
    assert losses[parent.data.tags["gmt_ray.best_run_id"]] == min(losses.values())
    # What the MLflow UI shows: a training experiment, runs named for what they are, their
    # datasets, models and system metrics, and each method's best model in the registry.
    assert client.get_experiment(parent.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert parent.info.run_name == "tiny-sweep"
    for child in children:
        method = child.data.params["mask.method"]
        assert re.fullmatch(rf"{method}( r=0\.\d\d)? lr=\d\.\de-0\d s0", child.info.run_name), child.info.run_name
        inputs = {i.dataset.name: [t.value for t in i.tags if t.key == "mlflow.data.context"]
                  for i in child.inputs.dataset_inputs}
        assert inputs == {"arithmetic-train": ["train"], "arithmetic-validation": ["validation"],
                          "arithmetic-test": ["eval"]}
        (output,) = child.outputs.model_outputs
        model = client.get_logged_model(output.model_id)
        assert model.source_run_id == child.info.run_id
        assert Path(model.tags["gmt_ray.model"], "config.json").is_file()
        assert model.tags["gmt_ray.model"] == child.data.tags["gmt_ray.model"]
        assert "system/cpu_utilization_percentage" in child.data.metrics
        assert "system/system_memory_usage_megabytes" in child.data.metrics
    for method in ("sft", "gmt"):
        best = min((c for c in children if c.data.params["mask.method"] == method),
                   key=lambda c: c.data.metrics["val_loss"])
        version = client.get_model_version_by_alias(f"tiny-sweep-{method}", "best")
        assert version.run_id == best.info.run_id
        assert version.source == f"models:/{best.outputs.model_outputs[0].model_id}"
        assert f"best {method} model: models:/tiny-sweep-{method}@best" in out


def test_finished_trial_drivers_take_the_next_trial(shared_sweep):
    # Without ASHA a finished trial's driver process (its imports, its MLflow client) takes the next trial.
    results = (shared_sweep.directory / "runs" / "tiny-sweep").glob("train_trial_*_*/result.json")
    pids = {json.loads(f.read_text().splitlines()[0])["pid"] for f in results}
    assert 1 <= len(pids) < 4


def test_the_registered_best_model_is_what_evaluation_takes(shared_sweep, tmp_path):
    # Progress on stderr, the score on stdout.
    evaluation = run_module("gmt_ray.evaluate", "--benchmark", "gsm8k", "--data", EVAL_DATA / "gsm8k_sample.jsonl",
                            "--model", "models:/tiny-sweep-gmt@best", "--max-new-tokens", "4", "--out",
                            tmp_path / "eval", cwd=shared_sweep.directory, timeout=300)
    assert evaluation.returncode == 0, evaluation.stderr
    assert "generate gsm8k  samples 3/3" in evaluation.stderr and "gsm8k: accuracy" in evaluation.stdout


def test_the_report_reads_the_runs_back_and_logs_itself_to_the_parent(shared_sweep, tmp_path):
    from gmt_ray.report.__main__ import main

    report = run_main(main, str(shared_sweep.experiment), "--out", str(tmp_path / "report"),
                      cwd=shared_sweep.directory)
    assert report.returncode == 0, report.stderr
    markdown = (tmp_path / "report" / "report.md").read_text()
    client = shared_sweep.client()
    for child in runs(client, "trial"):
        assert f"| {child.data.params['mask.method']} |" in markdown
    best = min(c.data.metrics["val_loss"] for c in runs(client, "trial"))
    assert f"{best:.4f}" in markdown
    (parent,) = runs(client, "sweep")
    assert "report/report.md" in {a.path for a in client.list_artifacts(parent.info.run_id, "report")}


def test_the_same_name_again_without_resume_is_refused(shared_sweep):
    again = sweep_in_process(shared_sweep.directory, str(shared_sweep.experiment))
    assert again.returncode == 2 and "already exists" in again.stderr


# ----------------------------------------------------------------------------- sweeps of their own


@pytest.mark.e2e
def test_sweep_through_an_mlflow_server_on_postgresql(tmp_path, postgres, postgres_url, mlflow_server):
    # As cluster.yaml runs it: `mlflow server` on PostgreSQL behind MLflow's basic auth, the
    # admin's login in the sweep's environment; read back as a person (or the UI) reads it,
    # through MLflow's REST API. Skips with the reason where PostgreSQL cannot run.
    server = mlflow_server(postgres_url, auth=True)
    uri = server.url
    path = write_experiment(tmp_path, **{"search.methods": ["gmt"], "mlflow.tracking_uri": uri,
                                         "mlflow.system_metrics_interval_s": 1})
    result = sweep(tmp_path, str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    client = mlflow_client(tmp_path, uri)
    (parent,) = runs(client, "sweep")
    (child,) = runs(client, "trial")
    assert parent.info.status == child.info.status == "FINISHED"
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id and "val_loss" in child.data.metrics
    assert sorted(m.step for m in client.get_metric_history(child.info.run_id, "loss")) == [1, 2, 3, 4, 5, 6]
    assert "config.yaml" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    database = postgres_url.rsplit("/", 1)[1]
    assert postgres.sql("SELECT count(*) FROM runs", database=database).strip() == "2"  # in PostgreSQL itself
    assert not (tmp_path / "mlflow.db").exists()  # nothing went to a local store
    assert f"{uri}/#/experiments/{parent.info.experiment_id}/runs?workflowType=machine_learning" in result.stdout
    experiment = rest(uri, "experiments/get-by-name?experiment_name=tiny-sweep")["experiment"]
    assert {"key": "mlflow.experimentKind", "value": "custom_model_development"} in experiment["tags"]
    found = rest(uri, "runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
    (trial,) = [r for r in found if r["info"]["run_id"] == child.info.run_id]
    assert trial["info"]["run_name"].startswith("gmt ")
    assert {d["dataset"]["name"] for d in trial["inputs"]["dataset_inputs"]} == {"arithmetic-train",
                                                                                  "arithmetic-validation"}
    assert any(m["key"].startswith("system/") for m in trial["data"]["metrics"])
    (model,) = rest(uri, "logged-models/search", {"experiment_ids": [experiment["experiment_id"]]})["models"]
    assert model["info"]["source_run_id"] == child.info.run_id
    assert [o["model_id"] for o in trial["outputs"]["model_outputs"]] == [model["info"]["model_id"]]
    version = rest(uri, "registered-models/alias?name=tiny-sweep-gmt&alias=best")["model_version"]
    assert version["run_id"] == child.info.run_id and version["source"] == f"models:/{model['info']['model_id']}"


def _finished_trials(client):
    return [r for r in runs_or_empty(client, "trial") if r.info.status == "FINISHED"]


@pytest.mark.e2e
def test_resume_after_sigkill_continues_the_same_sweep(tmp_path):
    path = write_experiment(tmp_path, **{"search.methods": ["gmt"], "search.num_samples": 3,
                                         "search.max_concurrent_trials": 1, "mlflow.system_metrics": False})
    process = subprocess.Popen(
        [sys.executable, "-m", "gmt_ray.sweep", str(path)], cwd=tmp_path, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )
    client = mlflow_client(tmp_path)
    try:
        first = wait_for(lambda: _finished_trials(client), 300, "a finished trial")
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the driver and the Ray it started, at once
        process.wait()
    done_before = {r.data.tags["gmt_ray.trial_id"]: r.info.run_id for r in first}
    # A trial that started after Tune's last state save: the resumed sweep never continues
    # it, so its run must not stay beside the real ones.
    from gmt_ray.tracking import SweepRuns

    (parent,) = runs(client, "sweep")
    stray = SweepRuns(f"sqlite:///{tmp_path / 'mlflow.db'}", parent.info.run_id).open_trial("0000dead", "stray", {})

    result = sweep(tmp_path, str(path), "--resume")
    assert result.returncode == 0, result.stdout + result.stderr
    # ours, and the real one when the kill landed within a second of a trial's start
    assert re.search(r"resume: deleted [12] MLflow run\(s\)", result.stdout), result.stdout
    assert client.get_run(stray).info.lifecycle_stage == "deleted"
    children = runs(client, "trial")
    trial_ids = [c.data.tags["gmt_ray.trial_id"] for c in children]
    assert len(trial_ids) == len(set(trial_ids)) == 3  # every trial once: no duplicate runs
    assert all(c.info.status == "FINISHED" for c in children)
    for trial_id, run_id in done_before.items():  # finished before the kill: not rerun
        run = client.get_run(run_id)
        assert run.data.tags["gmt_ray.trial_id"] == trial_id
        # Tune may restart a trial that finished after its last state save; the trial then
        # replays its logged result instead of training again: one value per step.
        assert sorted(m.step for m in client.get_metric_history(run_id, "loss")) == [1, 2, 3, 4, 5, 6]
    import optuna

    study = optuna.load_study(study_name="tiny-sweep/method=gmt",
                              storage=f"sqlite:///{tmp_path / 'runs' / 'tiny-sweep' / 'optuna.db'}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3  # Optuna's history spans both halves of the sweep
    (parent,) = runs(client, "sweep")
    assert parent.info.status == "FINISHED"


@pytest.mark.e2e
def test_ctrl_c_stops_cleanly_and_leaves_no_running_runs(tmp_path):
    path = write_experiment(tmp_path, **{"train.max_steps": 200, "train.eval_every": 50,
                                         "search.methods": ["gmt"], "search.num_samples": 2,
                                         "mlflow.system_metrics": False})
    process = subprocess.Popen(
        [sys.executable, "-m", "gmt_ray.sweep", str(path)], cwd=tmp_path, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    client = mlflow_client(tmp_path)
    try:
        wait_for(lambda: [r for r in runs_or_empty(client, "trial") if r.data.metrics.get("loss")], 300,
                 "a training trial")
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode != 0
    assert "--resume" in output
    every = runs(client, "trial") + runs(client, "sweep")
    assert every and not [r for r in every if r.info.status == "RUNNING"]
    (parent,) = runs(client, "sweep")
    assert parent.info.status == "KILLED"
