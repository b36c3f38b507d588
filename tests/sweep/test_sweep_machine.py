"""The quick start survives the machine it lands on: a stale or live local Ray, a cluster
address nobody answers at, a hub it cannot reach. Real commands (python -m gmt_ray.sweep /
gmt_ray.train), a real `ray start --head` (the ``ray_head`` fixture), each in a Ray temp dir
of its own; no test downloads anything (the hub is offline or points at a dead port)."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.servers import free_port
from tests.sweep.test_sweep_cli import write_experiment

ONE_TRIAL = {"search.methods": ["sft"]}
HUB_MODEL = "gmt-ray-tests/no-such-model"  # in no cache, and never fetched


def command(module: str, cwd: Path, *args: str, env: dict | None = None, timeout: float = 600):
    env = {**(env or os.environ), "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          check=False, timeout=timeout)


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
    result = command(module, cwd, str(path), "--address", address, env=ray_tmpdir_env(tmp_path / "ray"), timeout=120)
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
    result = command("gmt_ray.sweep", cwd, str(path), env=env, timeout=120)
    stderr = assert_refused(result, cwd, f"model.name='{HUB_MODEL}'", "could not be reached",
                            "machine with hub access", "local copies", "--rehearse")
    assert ("offline mode is on" in stderr) == (hub == "offline")
    assert not (tmp_path / "ray").exists()


def test_the_hub_is_checked_before_evaluation_files_and_not_by_the_dry_run(tmp_path, cwd):
    path = write_experiment(cwd, **ONE_TRIAL, **{
        "model.name": HUB_MODEL, "data.source": "hub", "data.path": "gmt-ray-tests/no-such-data",
        "eval.benchmarks": ["gsm8k"], "eval.data": {"gsm8k": str(tmp_path / "missing.jsonl")}})
    env = ray_tmpdir_env(tmp_path / "ray", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    result = command("gmt_ray.sweep", cwd, str(path), env=env, timeout=120)
    stderr = assert_refused(result, cwd, f"model.name='{HUB_MODEL}' and data.path='gmt-ray-tests/no-such-data'")
    assert "missing.jsonl" not in stderr
    dry = command("gmt_ray.sweep", cwd, str(path), "--dry-run", env=env, timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert '"not_checked"' in dry.stdout and "missing here: eval.data.gsm8k" in dry.stdout


# ----------------------------------------------------------------------------- real sweeps


@pytest.mark.slow
def test_a_stale_bootstrap_file_is_ignored_and_the_sweep_runs(tmp_path):
    root = Path(tempfile.mkdtemp(prefix="gmtray-stale-", dir="/tmp"))  # short: Ray's socket paths under it
    try:
        dead = f"127.0.0.1:{free_port()}"  # what a killed `ray start --head` leaves behind
        (root / "ray").mkdir()
        (root / "ray" / "ray_current_cluster").write_text(dead)
        path = write_experiment(tmp_path, **ONE_TRIAL)
        result = command("gmt_ray.sweep", tmp_path, str(path), env=ray_tmpdir_env(root))
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"Ray: ignoring {root / 'ray' / 'ray_current_cluster'}: the cluster it names ({dead}) is not " \
               "running" in result.stdout
        assert "  done   " in result.stdout and "Traceback" not in result.stderr
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_a_live_local_head_is_used_by_the_sweep_the_train_cli_and_the_dry_run(tmp_path, ray_head):
    logs = ray_head.temp_root / "ray" / "session_latest" / "logs"
    workers_before = len(list(logs.glob("worker-*")))
    connected = f"Ray: connected to the local cluster running at {ray_head.address} (1 node, 2 CPU, 0 GPU)"

    path = write_experiment(tmp_path, **ONE_TRIAL)
    dry = command("gmt_ray.sweep", tmp_path, str(path), "--dry-run", env=ray_head.env, timeout=180)
    assert dry.returncode == 0, dry.stderr
    assert f"the local cluster running at {ray_head.address}" in dry.stdout and '"concurrent_trials": 1' in dry.stdout

    result = command("gmt_ray.sweep", tmp_path, str(path), env=ray_head.env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert connected in result.stdout and "--address local starts a fresh local Ray" in result.stdout
    assert result.stdout.index(connected) < result.stdout.index("  start  ")
    assert "  done   " in result.stdout
    assert len(list(logs.glob("worker-*"))) > workers_before  # the trials ran on the head's workers

    train = command("gmt_ray.train", tmp_path, str(path), "--run-name", "on-head", "--set", "train.max_steps=2",
                    env=ray_head.env)
    assert train.returncode == 0, train.stdout + train.stderr
    assert connected in train.stdout and "step 2, loss" in train.stdout
    assert ray_head.processes(), "a command stopped the head it connected to"
