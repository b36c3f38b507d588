"""Per-trial start-up cost: gmt_ray.sweep against transformers' hyperparameter_search(backend="ray").

    pip install accelerate   # transformers.Trainer needs it; gmt-ray does not
    python benchmarks/sweep_overhead.py [--trials 4] [--steps 5] [--concurrent 2]

Both run the same tiny trials (the same tiny Llama, the same tokenised arithmetic data,
`--steps` optimizer steps, learning rate searched by Optuna-compatible samplers), on
one local Ray instance started before either clock starts, and the script prints
both wall times and their ratio. gmt_ray's trials keep their TorchTrainer workers and
log every step to MLflow; the peer's trials train inside the Tune trial itself.

A third clock bounds what any sweep built on TorchTrainer can reach here: the same
number of TorchTrainer fits, as many at a time, of a function that only reports (no
model, no Tune, no MLflow). Each fit starts its own Ray Train controller, worker and
helper actors, each a fresh Python process.
"""

from __future__ import annotations

import argparse
import collections
import os
import tempfile
import threading
import time
from pathlib import Path

import torch


def gmt_ray_sweep(args, workdir: Path) -> float:
    from gmt_ray.config import load_experiment
    from gmt_ray.data.prepare import prepare
    from gmt_ray.sweep.console import SweepConsole
    from gmt_ray.sweep.driver import run_sweep

    config = load_experiment(None, {
        "name": "overhead", "storage_path": str(workdir / "runs"),
        "mlflow.tracking_uri": f"sqlite:///{workdir / 'mlflow.db'}",
        **TINY, "train.max_steps": args.steps, "train.eval_every": args.steps, "train.log_every": 1,
        "train.checkpoint_every": args.steps,
        "search.methods": ["gmt"], "search.num_samples": args.trials,
        "search.max_concurrent_trials": args.concurrent,
        "search.space": {"train.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
    })
    prepared = prepare(config)
    start = time.perf_counter()
    result = run_sweep(config, prepared, console=SweepConsole())
    elapsed = time.perf_counter() - start
    assert len(result.rows) == args.trials and not result.interrupted, result
    return elapsed


def transformers_search(args, workdir: Path) -> float:
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

    from gmt_ray.config import load_experiment
    from gmt_ray.data.prepare import prepare
    from gmt_ray.data.tokens import collate

    config = load_experiment(None, TINY)
    prepared = prepare(config)
    tokenizer = prepared.tokenizer
    t = config.model.tiny

    def model_init(trial=None):
        return LlamaForCausalLM(LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
            num_hidden_layers=t.num_layers, num_attention_heads=t.num_heads, num_key_value_heads=t.num_heads,
            max_position_embeddings=t.max_position_embeddings, pad_token_id=tokenizer.pad_token_id))

    class Rows(torch.utils.data.Dataset):
        def __init__(self, split):
            self.split = split

        def __len__(self):
            return len(self.split)

        def __getitem__(self, i):
            return self.split[i]

    trainer = Trainer(
        model_init=model_init,
        args=TrainingArguments(output_dir=str(workdir / "hf"), max_steps=args.steps, per_device_train_batch_size=16,
                               report_to=[], save_strategy="no", eval_strategy="no", use_cpu=True,
                               disable_tqdm=True, logging_strategy="no"),
        train_dataset=Rows(prepared.train), eval_dataset=Rows(prepared.validation),
        data_collator=lambda rows: collate(rows, tokenizer.pad_token_id),
    )
    from ray import tune

    start = time.perf_counter()
    trainer.hyperparameter_search(
        hp_space=lambda _: {"learning_rate": tune.loguniform(1e-4, 1e-2)}, backend="ray", n_trials=args.trials,
        resources_per_trial={"cpu": 1}, max_concurrent_trials=args.concurrent,
        storage_path=str(workdir / "hf-ray"), compute_objective=lambda metrics: metrics["eval_loss"],
    )
    return time.perf_counter() - start


def torchtrainer_floor(args, workdir: Path) -> float:
    from concurrent.futures import ThreadPoolExecutor

    import ray.train
    from ray.train.torch import TorchTrainer

    def fit(i: int) -> None:
        TorchTrainer(
            _report_once, scaling_config=ray.train.ScalingConfig(num_workers=1),
            run_config=ray.train.RunConfig(name=f"floor-{i}", storage_path=str(workdir / "floor")),
        ).fit()

    start = time.perf_counter()
    with ThreadPoolExecutor(args.concurrent) as pool:
        list(pool.map(fit, range(args.trials)))
    return time.perf_counter() - start


def _report_once(config) -> None:
    import ray.train

    ray.train.report({"step": 1})


TINY = {
    "model.tiny.hidden_size": 64, "model.tiny.intermediate_size": 172, "model.tiny.num_layers": 2,
    "model.tiny.vocab_size": 384, "data.arithmetic.train_size": 512, "data.arithmetic.validation_size": 64,
    "train.micro_batch_size": 16,
}


class ProcessCpu:
    """CPU seconds of the processes this process starts while it runs (its descendants: a
    command, the Ray it starts and Ray's workers; not whatever else the machine runs
    meanwhile), grouped by Ray's process title (``ray::TrainController`` ...), sampled from
    /proc every 0.1 s (Linux only; elsewhere it records nothing). A process's CPU after its
    last sample (<= 0.1 s) is missed, and so is a process orphaned before its first sample."""

    def __init__(self):
        self.cpu: dict[str, float] = {}
        self.name: dict[str, str] = {}
        self.parent: dict[str, str] = {}  # each process's parent when first seen (orphans go to init)
        self._root = str(os.getpid())
        self._stop = threading.Event()
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def __enter__(self):
        self._before = set(self._pids())
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @staticmethod
    def _pids() -> list[str]:
        return [p for p in os.listdir("/proc") if p.isdigit()] if os.path.isdir("/proc") else []

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            for pid in self._pids():
                if pid in self._before:
                    continue
                try:
                    with open(f"/proc/{pid}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                    with open(f"/proc/{pid}/cmdline") as f:
                        argv = f.read().split("\0")
                except OSError:
                    continue
                self.cpu[pid] = (int(fields[11]) + int(fields[12])) / self._tick
                self.parent.setdefault(pid, fields[1])
                title = argv[0]
                # Ray workers start as ray::IDLE, then take their actor's name: keep that.
                if title.startswith("ray::") and "IDLE" not in title:
                    self.name[pid] = title.split(".")[0].split(" ")[0]
                else:
                    self.name.setdefault(pid, _program(argv))

    def _descends(self, pid: str) -> bool:
        seen = set()
        while pid in self.parent and pid not in seen:
            seen.add(pid)
            pid = self.parent[pid]
            if pid == self._root:
                return True
        return False

    def table(self) -> tuple[float, dict[str, tuple[int, float]]]:
        """(CPU seconds in all, {group: (processes, CPU seconds)}) of this process's descendants."""
        groups: dict[str, list] = collections.defaultdict(lambda: [0, 0.0])
        mine = {pid: seconds for pid, seconds in self.cpu.items() if self._descends(pid)}
        for pid, seconds in mine.items():
            groups[self.name[pid]][0] += 1
            groups[self.name[pid]][1] += seconds
        return sum(mine.values()), {k: (n, c) for k, (n, c) in groups.items()}


def _program(argv: list[str]) -> str:
    """A process's name for the table: a Python module or script, else the program."""
    program = os.path.basename(argv[0].split(" ")[0]) or "other"
    if program.startswith("python"):
        for flag, value in zip(argv, argv[1:]):
            if flag == "-m":
                return value
        script = next((a for a in argv[1:] if a.endswith(".py")), None)
        return os.path.basename(script) if script else program
    return program


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--concurrent", type=int, default=2)
    args = parser.parse_args()
    from gmt_ray.cluster import init_ray

    init_ray()
    meters = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        with ProcessCpu() as meters["gmt_ray.sweep"]:
            ours = gmt_ray_sweep(args, Path(tmp))
        with ProcessCpu() as meters["transformers"]:
            peer = transformers_search(args, Path(tmp))
        with ProcessCpu() as meters["bare fits"]:
            floor = torchtrainer_floor(args, Path(tmp))
    print(f"{args.trials} trials x {args.steps} steps, {args.concurrent} at a time, Ray already running")
    print(f"gmt_ray.sweep (TorchTrainer per trial, MLflow logging): {ours:7.1f} s")
    print(f"transformers hyperparameter_search(backend='ray'):       {peer:7.1f} s")
    print(f"{args.trials} bare TorchTrainer fits (report only, no Tune): {floor:7.1f} s")
    print(f"ratio gmt_ray / transformers: {ours / peer:.2f}")
    print(f"ratio bare TorchTrainer fits / transformers: {floor / peer:.2f} "
          "(the least any sweep with one TorchTrainer fit per trial can reach here)")
    print(f"CPU seconds per trial in the processes each run started ({os.cpu_count()} cores):")
    for label, meter in meters.items():
        total, groups = meter.table()
        top = sorted(groups.items(), key=lambda kv: -kv[1][1])
        shown = ", ".join(f"{name.removeprefix('ray::')} {cpu / args.trials:.1f}" for name, (_, cpu) in top[:7])
        print(f"  {label:14s} {total / args.trials:5.1f}  ({shown})")


if __name__ == "__main__":
    main()
