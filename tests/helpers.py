"""What many test modules share: ports, spawned process groups, tiny experiments, commands
run as a user runs them (or in this process where a subprocess adds nothing), MLflow look-ups,
and the recipe run without Ray. Servers (PostgreSQL, mlflow server, a Ray head) live in
tests/servers.py."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
EVAL_DATA = Path(__file__).resolve().parent / "eval" / "data"

# A sweep of a tiny random-init Llama on generated arithmetic: seconds per trial.
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 1.0):
    """``predicate()``'s first truthy value, polled every ``interval`` s; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# ----------------------------------------------------------------------------- experiments


def experiment(**changes: Any) -> dict:
    """TINY with dotted changes (``{"train.max_steps": 4}``), as a plain dict."""
    config = yaml.safe_load(yaml.safe_dump(TINY))
    for dotted, value in changes.items():
        node = config
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return config


def write_experiment(directory: Path, **changes: Any) -> Path:
    """TINY with dotted changes, written to ``directory/experiment.yaml``."""
    path = directory / "experiment.yaml"
    path.write_text(yaml.safe_dump(experiment(**changes)))
    return path


# ----------------------------------------------------------------------------- commands


def run_module(module: str, *args: str, cwd: Path, env: dict | None = None, timeout: float = 600):
    """``python -m MODULE ARGS`` as a user runs it: a fresh process, output captured."""
    env = {**(env if env is not None else os.environ), "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def sweep(cwd: Path, *args: str, timeout: float = 600):
    """``python -m gmt_ray.sweep ARGS`` in ``cwd``."""
    return run_module("gmt_ray.sweep", *args, cwd=cwd, timeout=timeout)


@dataclass
class Ran:
    """What a command run in this process returned and printed."""

    returncode: int
    stdout: str
    stderr: str


def run_main(main: Callable[[list[str]], int], *args: str, cwd: Path) -> Ran:
    """A command's ``main(argv)`` in this process, in ``cwd``, its output captured: for checks
    where a fresh interpreter adds nothing (bad input, dry runs), at a fraction of the cost."""
    out, err = io.StringIO(), io.StringIO()
    previous = Path.cwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as exit_:  # argparse's own errors
                code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        os.chdir(previous)
    return Ran(code, out.getvalue(), err.getvalue())


def sweep_in_process(cwd: Path, *args: str) -> Ran:
    """``python -m gmt_ray.sweep ARGS`` as ``run_main``."""
    from gmt_ray.sweep.__main__ import main

    return run_main(main, *args, cwd=cwd)


# ----------------------------------------------------------------------------- MLflow


def mlflow_client(cwd: Path, uri: str | None = None):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri or f"sqlite:///{cwd / 'mlflow.db'}")


def runs(client, role: str, sweep_name: str | None = None) -> list:
    """Every run with ``gmt_ray.role`` = role (``sweep`` or ``trial``), of one sweep if named."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    condition = f"tags.`gmt_ray.role` = '{role}'"
    if sweep_name is not None:
        condition += f" and tags.`gmt_ray.sweep` = '{sweep_name}'"
    return client.search_runs(experiments, filter_string=condition, max_results=1000) if experiments else []


def runs_or_empty(client, role: str) -> list:
    """``runs``, or nothing while the store is not there yet."""
    try:
        return runs(client, role)
    except Exception:  # noqa: BLE001 - the store is created by the command under test
        return []


def rest(uri: str, endpoint: str, body: dict | None = None) -> dict:
    """One call to MLflow's REST API (GET, or POST with a JSON body), logged in as the
    environment's MLFLOW_TRACKING_USERNAME where it is set."""
    import base64
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if os.environ.get("MLFLOW_TRACKING_USERNAME"):
        login = f"{os.environ['MLFLOW_TRACKING_USERNAME']}:{os.environ.get('MLFLOW_TRACKING_PASSWORD', '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(login.encode()).decode()
    request = urllib.request.Request(f"{uri}/api/2.0/mlflow/{endpoint}", data=data, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def sweep_of(tracking_uri: str, trial_run_id: str):
    """The ``SweepRuns`` of the sweep a trial run belongs to."""
    from gmt_ray.tracking import SweepRuns, Tags, client

    return SweepRuns(tracking_uri, client(tracking_uri).get_run(trial_run_id).data.tags[Tags.PARENT])


def model_dir(path: Path) -> str:
    """A directory that looks like an exported model (its config.json), for the registry's tests."""
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return str(path)


# ----------------------------------------------------------------------------- process groups


def spawn(worker: Callable, tmp_path: Path, *args: Any, world: int = 2, timeout: float = 600) -> list:
    """Runs ``worker(rank, port, str(tmp_path), *args)`` on ``world`` fresh processes (torch's
    spawn); returns what each rank saved as ``tmp_path/rank{R}.pt``. A hang (a rank alone in a
    collective) fails the test after ``timeout`` seconds."""
    import pytest
    import torch
    import torch.multiprocessing as mp

    context = mp.start_processes(worker, args=(free_port(), str(tmp_path), *args), nprocs=world,
                                 start_method="spawn", join=False)
    deadline = time.monotonic() + timeout
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"{worker.__name__} did not finish within {timeout:.0f} s: a rank is stuck in a collective")
    return [torch.load(Path(tmp_path) / f"rank{r}.pt", weights_only=False) for r in range(world)
            if (Path(tmp_path) / f"rank{r}.pt").exists()]


def init_process_group(rank: int, port: int, world: int = 2) -> None:
    """gloo on loopback, one thread per rank (two ranks share the two cores)."""
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)


# ----------------------------------------------------------------------------- the recipe without Ray


@dataclass
class RecipeRun:
    """What one run of ``gmt_ray.train.recipe.train`` reported (rank 0's view)."""

    reports: list[dict] = field(default_factory=list)
    checkpoints: dict[int, Path] = field(default_factory=dict)  # step -> a kept copy of its checkpoint

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints[max(self.checkpoints)]

    def steps(self) -> list[int]:
        return [r["step"] for r in self.reports]


def run_recipe(config, directory: Path, *, prepared=None, worker=None, restore_from: Path | None = None,
               export_dir: Path | None = None) -> RecipeRun:
    """One configuration through the recipe in this process (or in one rank of a spawned
    group: pass its ``worker``): every report collected, every checkpoint copied into
    ``directory/step{N}`` (the ranks of a group merge theirs there, as Ray Train does)."""
    from gmt_ray.data.prepare import prepare
    from gmt_ray.train.recipe import Worker, train

    run = RecipeRun()
    worker = worker or Worker.single(config)

    def report(metrics: dict, checkpoint_dir: Path | None) -> None:
        run.reports.append(metrics)
        if checkpoint_dir is not None:
            kept = Path(directory) / f"step{metrics['step']}"
            shutil.copytree(checkpoint_dir, kept, dirs_exist_ok=True)
            run.checkpoints[metrics["step"]] = kept

    train(config, prepared if prepared is not None else prepare(config), worker, report=report,
          restore_from=restore_from, export_dir=str(export_dir) if export_dir is not None else None)
    return run


def recipe_ranks(rank: int, port: int, tmp: str, prepared, runs_: list[tuple[str, Any, str | None]]) -> None:
    """A spawned rank (``spawn(recipe_ranks, tmp_path, prepared, runs)``): each
    ``(name, config, restore_from_name)`` of ``runs_`` in turn through the recipe, in one gloo
    group; a run's checkpoints go to ``tmp/name/step{N}`` and ``restore_from_name`` continues
    from the last checkpoint of that earlier run. Saves ``{name: reports}`` as ``rank{R}.pt``."""
    import torch

    from gmt_ray.train.recipe import Worker

    init_process_group(rank, port)
    done: dict[str, RecipeRun] = {}
    for name, config, restore_from_name in runs_:
        worker = Worker(rank=rank, world=2, device=torch.device("cpu"), dtype=torch.float32)
        restore = done[restore_from_name].last_checkpoint if restore_from_name else None
        export = Path(tmp) / name / "model"
        done[name] = run_recipe(config, Path(tmp) / name, prepared=prepared, worker=worker, restore_from=restore,
                                export_dir=export)
    torch.save({name: run.reports for name, run in done.items()}, Path(tmp) / f"rank{rank}.pt")


# ----------------------------------------------------------------------------- the shared sweep


# The sweep many e2e tests read (tests/conftest.py: shared_sweep): sft and gmt, learning rate
# and gmt's mask ratio searched (2 trials each, chosen on the validation loss), then each
# group's choice confirmed with 2 fresh seeds on 8 generated test problems; logged to W&B
# (offline) beside MLflow; run from Python in a fresh process.
SHARED_SWEEP = {
    "search.num_samples": 2,
    "search.space": {"train.lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2},
                     "mask.mask_ratio": {"type": "uniform", "low": 0.3, "high": 0.9}},
    "eval.benchmarks": ["arithmetic"],
    "eval.max_new_tokens": 8,
    "confirm.seeds": 2,
    "confirm.benchmark": "arithmetic",
    "train.checkpoint_every": 3,  # a trial interrupted mid-way continues from a checkpoint
    "mlflow.system_metrics_interval_s": 1,
    "wandb.project": "gmt-ray-test",
}


def api_sweep_main() -> None:
    """``python -c 'from tests.helpers import api_sweep_main; api_sweep_main()' EXPERIMENT``:
    a sweep through ``gmt_ray.sweep.run`` as a notebook runs it, its console on stdout; then
    a last line ``RESULT {json}``: the rows and best trial it returned, and whether Ray, the
    environment and the signal handlers are as they were before."""
    import signal

    import ray

    import gmt_ray.sweep
    from gmt_ray.config import load_experiment
    from gmt_ray.sweep.console import SweepConsole

    config = load_experiment(sys.argv[1])
    environ = dict(os.environ)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGUSR1)}
    ray_before = ray.is_initialized()
    console = SweepConsole()
    result = gmt_ray.sweep.run(sys.argv[1], console=console)
    console.summary(result, config.search.metric, config.search.mode)
    left = {"ray_before": ray_before, "ray_after": ray.is_initialized(),
            "environ_changed": sorted(k for k in {*environ, *os.environ} if environ.get(k) != os.environ.get(k)),
            "handlers_changed": [s.name for s in handlers if signal.getsignal(s) != handlers[s]]}
    print("RESULT " + json.dumps({"rows": result.rows, "best": result.best, "interrupted": result.interrupted,
                                  "failed": result.failed, "left": left}, default=str))


@dataclass
class SharedSweep:
    """A finished sweep in ``directory`` (its ./mlflow.db, runs/, experiment.yaml)."""

    directory: Path
    experiment: Path
    stdout: str
    stderr: str
    result: dict
    stale_bootstrap: tuple[Path, str]  # the bootstrap file of a dead head it was started beside, and its address
    stale_bootstrap_left: bool  # whether that file was still there when the sweep had ended

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.directory / 'mlflow.db'}"

    def client(self):
        return mlflow_client(self.directory)
