"""The sweep driver through whole sweeps: on a simulated multi-node cluster
(ray.cluster_utils.Cluster, one machine) that loses a node, logging through an MLflow server on
PostgreSQL; stopped by Ctrl-C, killed and resumed.

What stays untested here: real machines and networks (NCCL across hosts, shared storage
on EFS/S3, the autoscaler adding nodes); cluster.yaml is validated offline in
tests/test_cluster_yaml.py.
"""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import mlflow_client, rest, runs, runs_or_empty, sweep, wait_for, write_experiment

pytestmark = pytest.mark.e2e  # every test here runs a whole sweep


def _start(cwd: Path, *args: str):
    return subprocess.Popen([sys.executable, "-m", "gmt_ray.sweep", *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.fixture
def tracking_server(request, mlflow_server):
    """An `mlflow server` behind MLflow's basic auth, as cluster.yaml runs it: on PostgreSQL
    where it runs here (its SQLAlchemy URL second), else on SQLite (None second)."""
    try:
        url = request.getfixturevalue("postgres_url")
    except pytest.skip.Exception:
        return mlflow_server(auth=True), None
    return mlflow_server(url, auth=True), url


def test_a_sweep_on_a_cluster_survives_losing_a_node_and_logs_through_the_tracking_server(
        tmp_path, tracking_server, request):
    # As a cluster runs it: two worker nodes (ray.cluster_utils, one machine), a node lost while
    # both trials train, and every write through `mlflow server` (on PostgreSQL where it runs)
    # behind basic auth, the admin's login in the sweep's environment; read back as a person (or
    # the UI) reads it, through MLflow's REST API.
    from ray.cluster_utils import Cluster

    server, postgres_url = tracking_server
    uri = server.url
    # The head takes no trials; each worker node fits exactly one (1 CPU worker + 0.01 driver).
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [cluster.add_node(num_cpus=2, resources={f"node_{i}": 1}) for i in range(2)]
    cluster.wait_for_nodes()
    client = mlflow_client(tmp_path, uri)
    try:
        path = write_experiment(tmp_path, **{
            "name": "multi", "train.max_steps": 30, "train.checkpoint_every": 3, "train.eval_every": 10,
            "train.log_every": 1, "search.num_samples": 2, "search.methods": ["gmt"],
            "search.max_concurrent_trials": 2, "resources.max_failures": 2, "mlflow.tracking_uri": uri,
            "mlflow.system_metrics_interval_s": 1,
        })
        sweep = _start(tmp_path, str(path), "--address", cluster.address)
        deadline = time.time() + 300
        while time.time() < deadline:  # both trials are under way, with checkpoints behind them
            assert sweep.poll() is None, sweep.stdout.read()
            trials = runs_or_empty(client, "trial")
            logged = [len(client.get_metric_history(t.info.run_id, "loss")) for t in trials]
            if len(logged) == 2 and min(logged) >= 7:
                break
            time.sleep(0.5)
        else:
            pytest.fail("the trials did not get under way within 300 s")
        cluster.remove_node(nodes[0])  # a node (and the trial on it) is lost
        cluster.add_node(num_cpus=2)  # the autoscaler's replacement
        output, _ = sweep.communicate(timeout=600)
        assert sweep.returncode == 0, output
        # Each node fits one trial and the head none: the two ran at once, so on both nodes.
        lines = [line.split()[0] for line in output.splitlines() if line.startswith("  ") and line.split()[0] in
                 ("start", "done")]
        assert lines[:2] == ["start", "start"], output
    finally:
        cluster.shutdown()

    trials = runs(client, "trial")
    assert len(trials) == 2 and all(t.info.status == "FINISHED" for t in trials), [t.info.status for t in trials]
    for trial in trials:  # every step reported, and the run finished at the last one
        steps = sorted({m.step for m in client.get_metric_history(trial.info.run_id, "loss")})
        assert steps == list(range(1, 31)), steps
    resumed = [max(m.value for m in client.get_metric_history(t.info.run_id, "resumed_from_step")) for t in trials]
    # The trial on the lost node continued from a checkpoint (a multiple of 3), not from 0.
    assert any(r > 0 and r % 3 == 0 for r in resumed), resumed
    (parent,) = runs(client, "sweep")
    assert parent.info.status == "FINISHED"

    # Everything went to the server, none to a local store; in PostgreSQL itself where it ran.
    assert "config.yaml" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert not (tmp_path / "mlflow.db").exists()
    if postgres_url is not None:
        postgres = request.getfixturevalue("postgres")
        database = postgres_url.rsplit("/", 1)[1]
        assert postgres.sql("SELECT count(*) FROM runs", database=database).strip() == "3"
    assert f"{uri}/#/experiments/{parent.info.experiment_id}/runs?workflowType=machine_learning" in output
    experiment = rest(uri, "experiments/get-by-name?experiment_name=multi")["experiment"]
    assert {"key": "mlflow.experimentKind", "value": "custom_model_development"} in experiment["tags"]
    found = rest(uri, "runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
    models = rest(uri, "logged-models/search", {"experiment_ids": [experiment["experiment_id"]]})["models"]
    for child in trials:
        (trial,) = [r for r in found if r["info"]["run_id"] == child.info.run_id]
        assert trial["info"]["run_name"].startswith("gmt ")
        assert {d["dataset"]["name"] for d in trial["inputs"]["dataset_inputs"]} == {"arithmetic-train",
                                                                                      "arithmetic-validation"}
        assert any(m["key"].startswith("system/") for m in trial["data"]["metrics"])
        (model,) = [m for m in models if m["info"]["source_run_id"] == child.info.run_id]
        assert [o["model_id"] for o in trial["outputs"]["model_outputs"]] == [model["info"]["model_id"]]
    version = rest(uri, "registered-models/alias?name=multi-gmt&alias=best")["model_version"]
    assert version["run_id"] in {t.info.run_id for t in trials}


def _finished_trials(client):
    return [r for r in runs_or_empty(client, "trial") if r.info.status == "FINISHED"]


def _configurations(client, sweep_name: str) -> list[tuple]:
    """What each trial of a sweep ran: (stage, method, lr, mask ratio, seed)."""
    return sorted((r.data.tags["gmt_ray.stage"], r.data.params["mask.method"], r.data.params.get("train.lr"),
                   r.data.params.get("mask.mask_ratio"), r.data.params.get("train.seed", "0"))
                  for r in runs(client, "trial", sweep_name))


def test_a_sweep_stopped_then_killed_resumes_to_what_an_uninterrupted_one_runs(tmp_path, shared_sweep):
    # The shared sweep's experiment under another name: its uninterrupted run is the reference.
    from tests.helpers import SHARED_SWEEP

    path = write_experiment(tmp_path, **{**SHARED_SWEEP, "name": "resumed", "wandb.project": None,
                                         "mlflow.system_metrics": False})
    client = mlflow_client(tmp_path)

    # 1. Ctrl-C once a trial has finished: trials stop, their runs KILLED, the command says --resume.
    process = subprocess.Popen([sys.executable, "-m", "gmt_ray.sweep", str(path)], cwd=tmp_path, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: _finished_trials(client), 300, "a finished trial")
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, output
    assert "--resume" in output
    every = runs(client, "trial") + runs(client, "sweep")
    assert every and not [r for r in every if r.info.status == "RUNNING"]
    (parent,) = runs(client, "sweep")
    assert parent.info.status == "KILLED"

    # 2. --resume, then SIGKILL mid-sweep: the driver and the Ray it started die at once.
    before = len(_finished_trials(client))
    process = subprocess.Popen([sys.executable, "-m", "gmt_ray.sweep", str(path), "--resume"], cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: len(_finished_trials(client)) >= before + 2, 300, "two more finished trials")
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    finished_before = {r.data.tags["gmt_ray.trial_id"]: r.info.run_id for r in _finished_trials(client)}
    # A trial that started after Tune's last state save: the resumed sweep never continues it,
    # so its run must not stay beside the real ones.
    from gmt_ray.tracking import SweepRuns

    stray = SweepRuns(f"sqlite:///{tmp_path / 'mlflow.db'}", parent.info.run_id).open_trial("0000dead", "stray", {})

    # 3. --resume to the end.
    result = sweep(tmp_path, str(path), "--resume")
    assert result.returncode == 0, result.stdout + result.stderr
    # ours, and a real one when the kill landed within a second of a trial's start
    assert re.search(r"resume: deleted [12] MLflow run\(s\)", result.stdout), result.stdout
    assert client.get_run(stray).info.lifecycle_stage == "deleted"
    children = runs(client, "trial", "resumed")
    trial_ids = [c.data.tags["gmt_ray.trial_id"] for c in children]
    assert len(trial_ids) == len(set(trial_ids)) == 8  # every trial once: no duplicate runs
    assert all(c.info.status == "FINISHED" for c in children)
    for child in children:  # every step once, whether it ran straight, continued or replayed
        assert sorted(m.step for m in client.get_metric_history(child.info.run_id, "loss")) == [1, 2, 3, 4, 5, 6]
    for trial_id, run_id in finished_before.items():  # finished before the kill: not rerun
        assert client.get_run(run_id).data.tags["gmt_ray.trial_id"] == trial_id
    # The same configurations as the uninterrupted sweep: no repeat, none missing, the sampler
    # continued where it stopped (a Sobol design: each proposal follows from its number).
    assert _configurations(client, "resumed") == _configurations(shared_sweep.client(), "tiny-sweep")
    import optuna

    from gmt_ray.sweep.study_storage import journal_storage

    assert not (tmp_path / "runs" / "resumed" / "optuna.db").exists()  # the journal, safe on NFS, holds them
    storage = journal_storage(tmp_path / "runs" / "resumed" / "optuna.journal")
    for group in ("method=sft,mask_ratio=0.0", "method=gmt"):
        study = optuna.load_study(study_name=f"resumed/{group}", storage=storage)
        assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) == 2
    (parent,) = runs(client, "sweep")
    assert parent.info.status == "FINISHED"
