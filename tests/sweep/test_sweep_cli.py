"""python -m gmt_ray.sweep as a user runs it: real subprocesses, real Ray, real MLflow."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

GSM8K = Path(__file__).parents[1] / "eval" / "data" / "gsm8k_sample.jsonl"

TINY = {
    "name": "tiny-sweep",
    "model": {"tiny": {"vocab_size": 256, "hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 2}},
    "data": {"max_length": 128, "arithmetic": {"train_size": 256, "validation_size": 32, "test_size": 8}},
    "train": {"max_steps": 6, "micro_batch_size": 8, "log_every": 1, "eval_every": 2, "checkpoint_every": 6},
    "search": {
        "methods": ["sft", "gmt"],
        "space": {"train.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2}},
        "num_samples": 1,
        "max_concurrent_trials": 2,
    },
}


def write_experiment(directory: Path, **changes) -> Path:
    config = yaml.safe_load(yaml.safe_dump(TINY))
    for dotted, value in changes.items():
        node = config
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    path = directory / "experiment.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def sweep(cwd: Path, *args: str, timeout: float = 600):
    command = [sys.executable, "-m", "gmt_ray.sweep", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def mlflow_client(cwd: Path, uri: str | None = None):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri or f"sqlite:///{cwd / 'mlflow.db'}")


def runs(client, role: str):
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, filter_string=f"tags.`gmt_ray.role` = '{role}'")


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
    result = sweep(tmp_path, str(path), *args, timeout=120)
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
    result = sweep(tmp_path, str(path), timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and result.stderr.count("error:") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiment.yaml", "rows.jsonl"]


def test_an_empty_experiment_file_starts_nothing(tmp_path):
    (tmp_path / "experiment.yaml").write_text("\n")
    result = sweep(tmp_path, "experiment.yaml", timeout=120)
    assert result.returncode == 2 and "experiment.yaml: the experiment file is empty" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiment.yaml"]


def test_missing_experiment_file(tmp_path):
    result = sweep(tmp_path, "nope.yaml", timeout=120)
    assert result.returncode == 2 and "nope.yaml: experiment file not found" in result.stderr


def test_dry_run_prints_the_plan_and_starts_nothing(tmp_path):
    path = write_experiment(tmp_path, **{"search.mask_ratios": [0.5, 0.9], "search.methods": ["sft", "gmt", "rmt"]})
    result = sweep(tmp_path, str(path), "--dry-run", timeout=120)
    assert result.returncode == 0, result.stderr
    assert '"trials": 5' in result.stdout and '"concurrent_trials": 2' in result.stdout
    assert "method=gmt,mask_ratio=0.9" in result.stdout and '"CPU": 1.01' in result.stdout
    assert "mask_ratio: 0.0" in result.stdout  # the resolved config, every default written out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiment.yaml"]


# ----------------------------------------------------------------------------- real sweeps


@pytest.mark.slow
def test_sweep_logs_nested_runs_to_mlflow(tmp_path):
    # Accuracy on the generated test split is the objective; per-sample rows are artifacts.
    path = write_experiment(tmp_path, **{"eval.benchmarks": ["arithmetic"], "eval.max_new_tokens": 8,
                                         "search.metric": "arithmetic_accuracy", "search.mode": "max",
                                         "mlflow.system_metrics_interval_s": 1})
    result = sweep(tmp_path, str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "mlflow ui --backend-store-uri sqlite:///" in result.stdout
    assert "/runs?workflowType=machine_learning" in result.stdout  # the page of the runs table
    assert result.stdout.count("  start  ") == 2 and result.stdout.count("  done   ") == 2
    # Piped, the console shows each trial's progress as step N/TOTAL (TOTAL: train.max_steps) before its end.
    for trial_id in re.findall(r"  start  (\w+)", result.stdout):
        before_end = result.stdout[: result.stdout.index(f"  done   {trial_id}")]
        assert re.search(rf"  step   {trial_id}  step [1-6]/6  loss \d", before_end), result.stdout

    client = mlflow_client(tmp_path)
    (parent,) = runs(client, "sweep")
    children = runs(client, "trial")
    assert parent.info.status == "FINISHED"
    assert parent.data.params["mask.method"] == "gmt" and parent.data.params["train.max_steps"] == "6"
    assert parent.data.tags["version.torch"].startswith("2.") and "mlflow.source.git.commit" in parent.data.tags
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert "config.yaml" in artifacts
    assert len(children) == 2
    methods = sorted(c.data.params["mask.method"] for c in children)
    assert methods == ["gmt", "sft"]
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
        rows = client.download_artifacts(child.info.run_id, "eval/step6-arithmetic.jsonl", str(tmp_path))
        assert len(Path(rows).read_text().splitlines()) == 8
    accuracies = {c.info.run_id: c.data.metrics["arithmetic_accuracy"] for c in children}
    assert parent.data.metrics["best_arithmetic_accuracy"] == pytest.approx(max(accuracies.values()))
    assert accuracies[parent.data.tags["gmt_ray.best_run_id"]] == max(accuracies.values())
    # What the MLflow UI shows: a training experiment, runs named for what they are, their
    # datasets, models and system metrics, and each method's best model in the registry.
    assert client.get_experiment(parent.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert parent.info.run_name == "tiny-sweep"
    for child in children:
        method = child.data.params["mask.method"]
        assert re.fullmatch(rf"{method}( r=0\.00)? lr=\d\.\de-0\d s0", child.info.run_name), child.info.run_name
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
        version = client.get_model_version_by_alias(f"tiny-sweep-{method}", "best")  # one trial per method
        assert version.run_id == child.info.run_id and version.source == f"models:/{output.model_id}"
        assert f"best {method} model: models:/tiny-sweep-{method}@best" in result.stdout
    # The registered model is what evaluation takes (progress on stderr, the score on stdout).
    evaluation = subprocess.run(
        [sys.executable, "-m", "gmt_ray.evaluate", "--benchmark", "gsm8k", "--data", str(GSM8K), "--model",
         "models:/tiny-sweep-gmt@best", "--max-new-tokens", "4", "--out", str(tmp_path / "eval")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert evaluation.returncode == 0, evaluation.stderr
    assert "generate gsm8k  samples 3/3" in evaluation.stderr and "gsm8k: accuracy" in evaluation.stdout
    # The report reads the same runs back and logs itself to the parent run.
    report = subprocess.run([sys.executable, "-m", "gmt_ray.report", str(path)], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert report.returncode == 0, report.stderr
    markdown = (tmp_path / "reports" / "tiny-sweep" / "report.md").read_text()
    for child in children:
        accuracy = child.data.metrics["arithmetic_accuracy"]
        assert f"| {child.data.params['mask.method']} |" in markdown and f"{accuracy:.4f}" in markdown
    assert "report/report.md" in {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    # The same name again without --resume is refused rather than mixed in.
    again = sweep(tmp_path, str(path), timeout=120)
    assert again.returncode == 2 and "already exists" in again.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_sweep_through_an_mlflow_server_on_postgresql(tmp_path, postgres, postgres_url, mlflow_server):
    # As cluster.yaml runs it: `mlflow server` on PostgreSQL behind MLflow's basic auth, the
    # admin's login in the sweep's environment. Skips with the reason where PostgreSQL cannot run.
    server = mlflow_server(postgres_url, auth=True)
    path = write_experiment(tmp_path, **{"search.methods": ["gmt"], "mlflow.tracking_uri": server.url})
    result = sweep(tmp_path, str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    client = mlflow_client(tmp_path, server.url)
    (parent,) = runs(client, "sweep")
    (child,) = runs(client, "trial")
    assert parent.info.status == child.info.status == "FINISHED"
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id and "val_loss" in child.data.metrics
    assert sorted(m.step for m in client.get_metric_history(child.info.run_id, "loss")) == [1, 2, 3, 4, 5, 6]
    assert "config.yaml" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    database = postgres_url.rsplit("/", 1)[1]
    assert postgres.sql("SELECT count(*) FROM runs", database=database).strip() == "2"  # in PostgreSQL itself
    assert not (tmp_path / "mlflow.db").exists()
def test_sweep_through_a_real_mlflow_server(tmp_path):
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--workers", "1",
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        import urllib.request

        for _ in range(120):
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        path = write_experiment(tmp_path, **{"search.methods": ["gmt"], "mlflow.tracking_uri": uri,
                                             "mlflow.system_metrics_interval_s": 1})
        result = sweep(tmp_path, str(path))
        assert result.returncode == 0, result.stdout + result.stderr
        client = mlflow_client(tmp_path, uri)
        (parent,) = runs(client, "sweep")
        (child,) = runs(client, "trial")
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.status == "FINISHED" and "val_loss" in child.data.metrics
        assert "config.yaml" in {a.path for a in client.list_artifacts(parent.info.run_id)}
        assert not (tmp_path / "mlflow.db").exists()  # nothing went to a local store
        assert f"{uri}/#/experiments/{parent.info.experiment_id}/runs?workflowType=machine_learning" in result.stdout
        # What a person (or the UI) reads back through MLflow's REST API.
        experiment = _rest(uri, "experiments/get-by-name?experiment_name=tiny-sweep")["experiment"]
        assert {"key": "mlflow.experimentKind", "value": "custom_model_development"} in experiment["tags"]
        found = _rest(uri, "runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
        (trial,) = [r for r in found if r["info"]["run_id"] == child.info.run_id]
        assert trial["info"]["run_name"].startswith("gmt ")
        assert {d["dataset"]["name"] for d in trial["inputs"]["dataset_inputs"]} == {"arithmetic-train",
                                                                                      "arithmetic-validation"}
        assert any(m["key"].startswith("system/") for m in trial["data"]["metrics"])
        (model,) = _rest(uri, "logged-models/search", {"experiment_ids": [experiment["experiment_id"]]})["models"]
        assert model["info"]["source_run_id"] == child.info.run_id
        assert [o["model_id"] for o in trial["outputs"]["model_outputs"]] == [model["info"]["model_id"]]
        version = _rest(uri, "registered-models/alias?name=tiny-sweep-gmt&alias=best")["model_version"]
        assert version["run_id"] == child.info.run_id and version["source"] == f"models:/{model['info']['model_id']}"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:  # a loaded machine: uvicorn may not finish its shutdown in time
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)


def _rest(uri: str, endpoint: str, body: dict | None = None) -> dict:
    """One call to MLflow's REST API (GET, or POST with a JSON body)."""
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{uri}/api/2.0/mlflow/{endpoint}", data=data,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def _finished_trials(client):
    try:
        return [r for r in runs(client, "trial") if r.info.status == "FINISHED"]
    except Exception:  # the store may not exist yet
        return []


@pytest.mark.slow
def test_resume_after_sigkill_continues_the_same_sweep(tmp_path):
    path = write_experiment(tmp_path, **{"search.methods": ["gmt"], "search.num_samples": 3,
                                         "search.max_concurrent_trials": 1})
    process = subprocess.Popen(
        [sys.executable, "-m", "gmt_ray.sweep", str(path)], cwd=tmp_path, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )
    client = mlflow_client(tmp_path)
    try:
        first = _wait_for(lambda: _finished_trials(client), 300, "a finished trial")
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

    from gmt_ray.sweep.study_storage import journal_storage

    assert not (tmp_path / "runs" / "tiny-sweep" / "optuna.db").exists()  # the journal, safe on NFS, holds them
    study = optuna.load_study(study_name="tiny-sweep/method=gmt",
                              storage=journal_storage(tmp_path / "runs" / "tiny-sweep" / "optuna.journal"))
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3  # Optuna's history spans both halves of the sweep
    (parent,) = runs(client, "sweep")
    assert parent.info.status == "FINISHED"


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_leaves_no_running_runs(tmp_path):
    path = write_experiment(tmp_path, **{"train.max_steps": 200, "train.eval_every": 50,
                                         "search.methods": ["gmt"], "search.num_samples": 2})
    process = subprocess.Popen(
        [sys.executable, "-m", "gmt_ray.sweep", str(path)], cwd=tmp_path, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    client = mlflow_client(tmp_path)
    try:
        _wait_for(lambda: [r for r in runs_or_empty(client) if r.data.metrics.get("loss")], 300, "a training trial")
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


def runs_or_empty(client):
    try:
        return runs(client, "trial")
    except Exception:
        return []


@pytest.mark.slow
def test_asha_trains_fewer_steps_than_the_same_sweep_without_it(tmp_path):
    common = {
        "train.max_steps": 12, "train.eval_every": 2, "train.checkpoint_every": 12,
        "search.methods": ["gmt"], "search.num_samples": 4, "search.max_concurrent_trials": 2,
        "search.space": {"train.lr": {"type": "choice", "values": [3e-3, 1e-7]}},
        "search.asha": {"grace_period": 2, "reduction_factor": 2},
    }
    totals = {}
    for scheduler in ("none", "asha"):
        directory = tmp_path / scheduler
        directory.mkdir()
        path = write_experiment(directory, **{**common, "search.scheduler": scheduler})
        result = sweep(directory, str(path))
        assert result.returncode == 0, result.stdout + result.stderr
        client = mlflow_client(directory)
        trials = runs(client, "trial")
        assert len(trials) == 4 and all(r.info.status == "FINISHED" for r in trials)
        totals[scheduler] = sum(
            max(m.step for m in client.get_metric_history(r.info.run_id, "loss")) for r in trials
        )
        stopped = [r for r in trials if "gmt_ray.early_stopped" in r.data.tags]
        assert (len(stopped) > 0) == (scheduler == "asha")
        if scheduler == "none":  # a finished trial's driver process takes the next trial
            results = (directory / "runs" / "tiny-sweep").glob("train_trial_*_*/result.json")
            pids = {json.loads(f.read_text().splitlines()[0])["pid"] for f in results}
            assert 1 <= len(pids) < 4
    assert totals["none"] == 4 * 12
    assert totals["asha"] < totals["none"]


@pytest.mark.parametrize("name", ["math", "code", "general", "dpo"])
def test_paper_experiments_dry_run_against_the_cluster_file(tmp_path, name):
    root = Path(__file__).resolve().parents[2]
    result = sweep(tmp_path, str(root / "experiments" / f"{name}.yaml"), "--dry-run", "--cluster",
                   str(root / "cluster.yaml"), timeout=120)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout[result.stdout.index("\n{") + 1:])
    assert plan["concurrent_trials"] == 4 and plan["per_trial"]["GPU"] == 8
    assert plan["estimate"]["gpu_hours_total"] > 10
    assert any("loaded at run time" in note for note in plan["not_checked"])
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing started, nothing written
