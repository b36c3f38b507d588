"""A sweep on a simulated multi-node cluster (ray.cluster_utils.Cluster, one machine).

What stays untested here: real machines and networks (NCCL across hosts, shared storage
on EFS/S3, the autoscaler adding nodes); cluster.yaml is validated offline in
tests/test_cluster_yaml.py.
"""

import time
from pathlib import Path

import pytest

from tests.helpers import mlflow_client, runs, write_experiment

pytestmark = pytest.mark.e2e


def _start(cwd: Path, *args: str):
    import os
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "gmt_ray.sweep", *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_trials_spread_over_nodes_and_survive_losing_one(tmp_path):
    from ray.cluster_utils import Cluster

    # The head takes no trials; each worker node fits exactly one (1 CPU worker + 0.01 driver).
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [cluster.add_node(num_cpus=2, resources={f"node_{i}": 1}) for i in range(2)]
    cluster.wait_for_nodes()
    try:
        path = write_experiment(tmp_path, **{
            "name": "multi", "train.max_steps": 30, "mlflow.system_metrics": False, "train.checkpoint_every": 3, "train.eval_every": 10,
            "train.log_every": 1, "search.num_samples": 2, "search.methods": ["gmt"],
            "search.max_concurrent_trials": 2, "resources.max_failures": 2,
        })
        sweep = _start(tmp_path, str(path), "--address", cluster.address)
        deadline = time.time() + 300
        client = mlflow_client(tmp_path)
        while time.time() < deadline:  # both trials are under way, with checkpoints behind them
            assert sweep.poll() is None, sweep.stdout.read()
            trials = runs(client, "trial") if (tmp_path / "mlflow.db").exists() else []
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

    client = mlflow_client(tmp_path)
    trials = runs(client, "trial")
    print(output)
    assert len(trials) == 2 and all(t.info.status == "FINISHED" for t in trials), [t.info.status for t in trials]
    for trial in trials:  # every step reported, and the run finished at the last one
        steps = sorted({m.step for m in client.get_metric_history(trial.info.run_id, "loss")})
        assert steps == list(range(1, 31)), steps
    resumed = [max(m.value for m in client.get_metric_history(t.info.run_id, "resumed_from_step")) for t in trials]
    # The trial on the lost node continued from a checkpoint (a multiple of 3), not from 0.
    assert any(r > 0 and r % 3 == 0 for r in resumed), resumed
    (parent,) = runs(client, "sweep")
    assert parent.info.status == "FINISHED"
