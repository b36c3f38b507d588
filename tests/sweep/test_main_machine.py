"""The quick start survives the machine it lands on: a stale or live local Ray, a cluster
address nobody answers at, a hub it cannot reach. Real commands (python -m gmt_ray.sweep /
gmt_ray.train), a real `ray start --head` (the ``ray_head`` fixture), each in a Ray temp dir
of its own; no test downloads anything (the hub is offline or points at a dead port)."""

import os
from pathlib import Path

import pytest

from tests.helpers import free_port, mlflow_client, run_module, runs, write_experiment

ONE_TRIAL = {"search.methods": ["sft"]}
HUB_MODEL = "gmt-ray-tests/no-such-model"  # in no cache, and never fetched


def ray_tmpdir_env(root: Path, **changes: str) -> dict:
    """This environment with a Ray temp dir of its own (``root``), no RAY_ADDRESS."""
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    return {**env, "RAY_TMPDIR": str(root), **changes}


def assert_refused(result, cwd: Path, *messages: str) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count("error:") == 1 and "Traceback" not in result.stderr, result.stderr
    for message in messages:
        assert message in result.stderr, result.stderr
    assert sorted(p.name for p in cwd.iterdir()) == ["experiment.yaml"]  # no mlflow.db, no runs/
    return result.stderr


# ----------------------------------------------------------------------------- refused at once


@pytest.fixture
def cwd(tmp_path):
    """Where the command runs (apart from the Ray temp dir, tmp_path / "ray")."""
    (tmp_path / "run").mkdir()
    return tmp_path / "run"


@pytest.mark.parametrize("module", ["gmt_ray.sweep", "gmt_ray.train"])
def test_an_address_nobody_listens_on_exits_2_within_seconds(tmp_path, cwd, module):
    path = write_experiment(cwd, **ONE_TRIAL)
    address = f"127.0.0.1:{free_port()}"
    result = run_module(module, str(path), "--address", address, cwd=cwd, env=ray_tmpdir_env(tmp_path / "ray"),
                        timeout=120)
    assert_refused(result, cwd, f"cannot reach a Ray cluster at --address {address}", "connection refused",
                   "waiting up to 5 s", "--address auto")
    assert not (tmp_path / "ray").exists()  # no Ray started


@pytest.mark.parametrize("hub", ["offline", "no network"])
def test_a_hub_model_the_hub_cannot_serve_exits_2_before_anything_starts(tmp_path, cwd, hub):
    path = write_experiment(cwd, **ONE_TRIAL, **{"model.name": HUB_MODEL})
    if hub == "offline":
        env = ray_tmpdir_env(tmp_path / "ray", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    else:  # online, but the hub's address answers nothing: a machine without network
        env = {k: v for k, v in ray_tmpdir_env(tmp_path / "ray").items()
               if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")}
        env["HF_ENDPOINT"] = f"http://127.0.0.1:{free_port()}"
    result = run_module("gmt_ray.sweep", str(path), cwd=cwd, env=env, timeout=120)
    stderr = assert_refused(result, cwd, f"model.name='{HUB_MODEL}'", "could not be reached",
                            "machine with hub access", "local copies", "--rehearse")
    assert ("offline mode is on" in stderr) == (hub == "offline")
    assert not (tmp_path / "ray").exists()


def test_the_hub_is_checked_before_evaluation_files_and_not_by_the_dry_run(tmp_path, cwd):
    path = write_experiment(cwd, **ONE_TRIAL, **{
        "model.name": HUB_MODEL, "data.source": "hub", "data.path": "gmt-ray-tests/no-such-data",
        "eval.benchmarks": ["gsm8k"], "eval.data": {"gsm8k": str(tmp_path / "missing.jsonl")}})
    env = ray_tmpdir_env(tmp_path / "ray", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    result = run_module("gmt_ray.sweep", str(path), cwd=cwd, env=env, timeout=120)
    stderr = assert_refused(result, cwd, f"model.name='{HUB_MODEL}' and data.path='gmt-ray-tests/no-such-data'")
    assert "missing.jsonl" not in stderr
    dry = run_module("gmt_ray.sweep", str(path), "--dry-run", cwd=cwd, env=env, timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert '"not_checked"' in dry.stdout and "missing here: eval.data.gsm8k" in dry.stdout


# ----------------------------------------------------------------------------- real sweeps


def test_a_stale_bootstrap_file_is_ignored_and_removed_and_the_sweep_runs(shared_sweep):
    # The shared sweep started beside the bootstrap file of a head that is gone. Left there, Ray's
    # own lookups inside the trials (Ray Train's PlacementGroupCleaner) read it: each trial's end
    # waited ~10 s on the dead address (the sweep took 179 s instead of 147 s on 2 cores).
    bootstrap, dead = shared_sweep.stale_bootstrap
    assert f"Ray: ignoring {bootstrap}: the cluster it names ({dead}) is not running" in shared_sweep.stdout
    assert "removing that file as `ray stop` would" in shared_sweep.stdout
    assert not shared_sweep.stale_bootstrap_left
    assert shared_sweep.stdout.count("  done   ") == 8 and "Traceback" not in shared_sweep.stderr


@pytest.mark.e2e
def test_a_live_local_head_runs_an_asha_sweep_the_train_cli_and_the_dry_run(tmp_path, ray_head):
    # One sweep on the head serves two checks: the head is found and used (no --address), and
    # ASHA stops trials early (it needs the State API of the head's dashboard).
    logs = ray_head.temp_root / "ray" / "session_latest" / "logs"
    workers_before = len(list(logs.glob("worker-*")))
    connected = f"Ray: connected to the local cluster running at {ray_head.address} (1 node, 3 CPU, 0 GPU)"
    path = write_experiment(tmp_path, **{
        "train.max_steps": 8, "train.eval_every": 2, "train.checkpoint_every": 8, "search.methods": ["gmt"],
        "search.num_samples": 4, "search.max_concurrent_trials": 2, "mlflow.system_metrics": False,
        "search.space": {"train.lr": {"type": "choice", "values": [3e-3, 1e-7]}},
        "search.scheduler": "asha", "search.asha": {"grace_period": 2, "reduction_factor": 2},
    })
    dry = run_module("gmt_ray.sweep", str(path), "--dry-run", cwd=tmp_path, env=ray_head.env, timeout=180)
    assert dry.returncode == 0, dry.stderr
    assert f"the local cluster running at {ray_head.address}" in dry.stdout and '"concurrent_trials": 2' in dry.stdout

    result = run_module("gmt_ray.sweep", str(path), cwd=tmp_path, env=ray_head.env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert connected in result.stdout and "--address local starts a fresh local Ray" in result.stdout
    assert result.stdout.index(connected) < result.stdout.index("  start  ")
    assert len(list(logs.glob("worker-*"))) > workers_before  # the trials ran on the head's workers
    client = mlflow_client(tmp_path)
    trials = runs(client, "trial")
    assert len(trials) == 4 and all(r.info.status == "FINISHED" for r in trials)
    steps = {r.info.run_id: max(m.step for m in client.get_metric_history(r.info.run_id, "loss")) for r in trials}
    stopped = [r for r in trials if "gmt_ray.early_stopped" in r.data.tags]
    assert stopped and all(steps[r.info.run_id] < 8 for r in stopped)  # stopped at a rung, and said so
    assert all(steps[r.info.run_id] == 8 for r in trials if r not in stopped)
    assert sum(steps.values()) < 4 * 8

    # python -m gmt_ray.train on the same head: one configuration, its progress piped on stderr
    # (step N/max_steps and the loss), its model exported where it says.
    train = run_module("gmt_ray.train", str(path), "--run-name", "on-head", "--set", "train.max_steps=2",
                       cwd=tmp_path, env=ray_head.env)
    assert train.returncode == 0, train.stdout + train.stderr
    assert connected in train.stdout and "step 2, loss" in train.stdout and "val_loss" in train.stdout
    assert "train  step 0/2  starting" in train.stderr and "train  step 2/2  loss " in train.stderr, train.stderr
    model_dir = tmp_path / "runs" / "on-head" / "model"
    assert (model_dir / "config.json").exists() and (model_dir / "tokenizer.json").exists()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(model_dir)  # the exported model loads back
    AutoTokenizer.from_pretrained(model_dir)
    assert ray_head.processes(), "a command stopped the head it connected to"
