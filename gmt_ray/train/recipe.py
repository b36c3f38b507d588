"""The training recipe: what every worker runs for one configuration.

Read it top to bottom: ``train`` sets up model, optimizer, mask and data, restores a
checkpoint if there is one, then runs the loop

    N x (forward, backward)  ->  mask.apply()  ->  clip  ->  optimizer.step()

and hands metrics (with a checkpoint directory where one is due) to ``report``. It is plain
PyTorch: the process group, if any, is already up, and ``report`` says where results go.
``train_loop_per_worker`` is Ray Train's entry point: it builds the ``Worker`` from Ray
Train's context and reports through ``ray.train.report``. Nothing here knows Tune or MLflow.
"""

from __future__ import annotations

import json
import math
import random
import resource
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist

from gmt_ray.config import Experiment, MaskConfig
from gmt_ray.data.batches import ShardBatches
from gmt_ray.data.packing import PackedSteps
from gmt_ray.data.prepare import Prepared
from gmt_ray.data.tokens import IGNORE_INDEX, collate, collate_pairs
from gmt_ray.eval.suite import evaluate_model
from gmt_ray.masking import GradientMask, ProcessGroupReducer, drop_delta
from gmt_ray.masking.scores import stable_seed
from gmt_ray.models import build_model, load_initial_weights, weight_source
from gmt_ray.train.checkpoint import TrainState
from gmt_ray.train.dpo import FrozenReference, PrecomputedReference, dpo_batch_loss
from gmt_ray.train.parallel import (
    autocast,
    load_sharded_weights_,
    local_tensor,
    no_sync,
    parallelize,
    synchronize,
)
from gmt_ray.train.validation import validation_dpo, validation_loss

__all__ = ["Report", "Worker", "compute_dtype", "mask_seed", "train", "train_loop_per_worker"]

# Where a report goes: its metrics, and the directory of a checkpoint taken with it (or
# None). The directory is temporary: a report that keeps the checkpoint copies it.
Report = Callable[[dict[str, Any], "Path | None"], None]


@dataclass(frozen=True)
class Worker:
    """Which of the run's processes this is, and what it computes on."""

    rank: int  # 0 .. world - 1
    world: int  # data-parallel processes of the run
    device: torch.device
    dtype: torch.dtype  # compute dtype: bf16 autocast on a GPU, the weights' own on a CPU

    @classmethod
    def single(cls, config: Experiment, device: torch.device | str = "cpu") -> Worker:
        """The only worker of a run in this process (no process group)."""
        device = torch.device(device)
        return cls(rank=0, world=1, device=device, dtype=compute_dtype(config, device))


class InjectedFailure(RuntimeError):
    """Raised once at ``train.fail_at_step`` to exercise fault tolerance."""


class Restorable(Protocol):
    """A checkpoint that may need fetching first (``ray.train.Checkpoint`` is one)."""

    def as_directory(self) -> AbstractContextManager[str]: ...


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train's entry point: one configuration on this Ray Train worker.

    ``loop_config``: ``experiment`` (an ``Experiment``), ``prepared`` (``Prepared`` or an
    ObjectRef to it; None: prepared here), ``metrics_path`` (rank 0 appends every report
    there as JSONL) and ``export_dir`` (the final model in Hugging Face format). A restarted
    run (after a worker failure) continues from Ray Train's latest checkpoint.
    """
    import ray.train
    import ray.train.torch

    config: Experiment = loop_config["experiment"]
    context = ray.train.get_context()
    device = ray.train.torch.get_device()
    worker = Worker(rank=context.get_world_rank(), world=context.get_world_size(), device=device,
                    dtype=compute_dtype(config, device))

    def report(metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir is not None else None
        ray.train.report(metrics, checkpoint=checkpoint)

    # The checkpoint (downloaded first where storage is remote) is open only while it loads.
    train(config, _prepared(loop_config.get("prepared"), config), worker, report=report,
          restore_from=ray.train.get_checkpoint(), metrics_path=loop_config.get("metrics_path"),
          export_dir=loop_config.get("export_dir"))


def train(config: Experiment, prepared: Prepared, worker: Worker, *, report: Report,
          restore_from: Path | Restorable | None = None, metrics_path: str | None = None,
          export_dir: str | None = None) -> None:
    """Trains one configuration on this worker (every rank of a run calls it alike).

    Args:
        report: takes each report (metrics every ``train.log_every`` steps, with a
            checkpoint directory when one is due).
        restore_from: a checkpoint to continue from (the run's own, after a failure): a
            directory, or something with ``as_directory()`` (a ``ray.train.Checkpoint``), opened
            only while it loads; else ``train.resume_from``, else the initial weights.
        metrics_path: rank 0 appends every report there as JSONL.
        export_dir: rank 0 saves the final model there in Hugging Face format.
    """
    training, evaluation = config.train, config.eval
    _seed_everything(training.seed + worker.rank)

    # --- model, optimizer, schedule, mask, data
    state = _setup_state(config=config, prepared=prepared, worker=worker)
    reference = _setup_reference(config=config, state=state, prepared=prepared, worker=worker)
    # Drop trains as sft, then resets deltas to these weights (this rank's shards under FSDP).
    base_weights = _weights_on_cpu(state.module) if config.mask.method == "drop" else None

    # --- resume: the run's own checkpoint (after a failure), else train.resume_from
    resume = restore_from or (Path(training.resume_from) if training.resume_from is not None else None)
    if isinstance(resume, Path):
        state.load(resume)
    elif resume is not None:
        with resume.as_directory() as directory:
            state.load(Path(directory))
    resumed_from_step = state.step

    # --- loop
    dpo = training.objective == "dpo"
    last_step = min(training.max_steps, training.stop_after_steps or training.max_steps)
    device = worker.device
    window = _Window()
    state.model.train()
    while state.step < last_step:
        state.step += 1
        step = state.batches.next_step(training.grad_accum)  # padded, or the same sequences packed (data.packing)
        micro_batches = [_on_device(batch, device) for batch in step.micro_batches]
        # Normalise by the response tokens (sft) or pairs (dpo) of the whole accumulated
        # step, not per micro-batch.
        step_tokens = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in micro_batches)
        step_pairs = sum(len(b["pair_index"]) for b in micro_batches) if dpo else 0

        start = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        pair_sums: dict[str, torch.Tensor] = {}  # tensors: reading them per micro-batch would stall a GPU
        for index, batch in enumerate(micro_batches):
            with (no_sync(state.model, training.parallelism, last=index == len(micro_batches) - 1),
                  autocast(device, worker.dtype)):
                if dpo:
                    losses, pair_stats = dpo_batch_loss(state.model, reference, batch, training.dpo.beta)
                    loss = losses / step_pairs
                    pair_sums = {k: pair_sums.get(k, 0) + v for k, v in pair_stats.items()}
                else:
                    # No cache: with one, transformers would not see packed sequences and let them attend to each other.
                    loss = state.model(**batch, use_cache=False, num_items_in_batch=max(step_tokens, 1)).loss
                loss.backward()
            loss_sum += loss.detach()
        synchronize(device)
        backward_done = time.perf_counter()
        stats = state.mask.apply()  # once per step, on the fully accumulated gradient
        synchronize(device)
        mask_done = time.perf_counter()
        grad_norm = (torch.nn.utils.clip_grad_norm_(state.model.parameters(), training.max_grad_norm)
                     if training.max_grad_norm is not None else _grad_norm(state.model))
        state.optimizer.step()
        state.scheduler.step()
        state.optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        step_done = time.perf_counter()

        if training.fail_at_step == state.step and resume is None:
            raise InjectedFailure(f"injected failure at step {state.step} (train.fail_at_step)")
        window.add(
            loss=float(loss_sum), tokens=step.tokens * worker.world, samples=step.sequences * worker.world,
            fwd_bwd=backward_done - start, mask=stats.seconds, optim=step_done - mask_done, kept=stats.kept_fraction,
            grad_norm=float(grad_norm), pairs=step_pairs, **{f"dpo_{k}": float(v) for k, v in pair_sums.items()},
        )
        if state.step == training.max_steps and base_weights is not None:
            _drop_deltas(state.module, base_weights, config.mask, training.seed)

        # --- report: metrics every log interval; validation, benchmarks and checkpoints when due
        due = _due(config, state.step, last_step)
        if not due.report:
            continue
        metrics = {"step": state.step, "epoch": state.batches.epoch, "lr": state.scheduler.get_last_lr()[0],
                   **window.summary(), "resumed_from_step": resumed_from_step, "peak_memory_mb": _peak_memory_mb(device)}
        window = _Window()
        shard = dict(rank=worker.rank, world=worker.world, device=device, dtype=worker.dtype,
                     pad_id=prepared.tokenizer.pad_token_id)
        if due.validate and dpo:
            metrics.update(validation_dpo(state.module, reference, prepared.validation, training, **shard))
        elif due.validate:
            metrics["val_loss"] = validation_loss(state.model, prepared.validation, training, **shard)
        with tempfile.TemporaryDirectory() as directory:
            if due.benchmark:  # per-sample rows go into the checkpoint, which carries them to the driver
                metrics.update(evaluate_model(
                    state.module, prepared.tokenizer, evaluation, test_records=prepared.test_records,
                    validation_records=prepared.validation_records, chosen_on=config.chosen_on(),
                    template=config.data.template, rank=worker.rank, world=worker.world,
                    out_dir=Path(directory) / "eval", step=state.step, synced_gpus=training.parallelism == "fsdp",
                ))
            if worker.rank == 0 and metrics_path:
                with open(metrics_path, "a") as log:
                    log.write(json.dumps(metrics) + "\n")
            if due.save:
                state.save(Path(directory), prepared.tokenizer)
            report(metrics, Path(directory) if due.save else None)

    if export_dir:
        state.export(Path(export_dir), prepared.tokenizer)


# ----------------------------------------------------------------------------- setup


def _prepared(prepared, config: Experiment) -> Prepared:
    if prepared is None:
        from gmt_ray.data.prepare import prepare

        return prepare(config)
    if isinstance(prepared, Prepared):
        return prepared
    import ray

    return ray.get(prepared)  # an ObjectRef from the driver


def compute_dtype(config: Experiment, device: torch.device) -> torch.dtype:
    """bf16 on a GPU (``model.dtype: auto``) or where asked; fp32 otherwise."""
    bf16 = config.model.dtype == "bf16" or (config.model.dtype == "auto" and device.type == "cuda")
    return torch.bfloat16 if bf16 else torch.float32


def _setup_state(*, config: Experiment, prepared: Prepared, worker: Worker) -> TrainState:
    training, mask_config = config.train, config.mask
    model, module = _setup_model(config=config, prepared=prepared, worker=worker)
    optimizer = torch.optim.AdamW(model.parameters(), lr=training.lr, weight_decay=training.weight_decay)
    mask = GradientMask(
        module, method="sft" if mask_config.method == "drop" else mask_config.method,
        mask_ratio=mask_config.mask_ratio, scope=mask_config.scope, apply_to=mask_config.apply_to,
        optimizer=optimizer if mask_config.apply_to == "update" else None, include=mask_config.include or None,
        exclude=mask_config.exclude, seed=mask_seed(mask_config, training.seed),
    )
    # Packed rows for sdpa and eager; one flattened row per micro-batch for flash attention's varlen kernel.
    packing = (PackedSteps(config.data.max_length, flatten=module.config._attn_implementation.startswith("flash_attention"))
               if config.data.packing else None)
    batches = ShardBatches(prepared.train, training.micro_batch_size, worker.rank, worker.world, training.seed,
                           prepared.tokenizer.pad_token_id, collate_pairs if training.objective == "dpo" else collate,
                           packing=packing)
    return TrainState(model=model, module=module, optimizer=optimizer,
                      scheduler=_cosine_with_warmup(optimizer, training.max_steps, training.warmup_ratio), mask=mask,
                      batches=batches, rank=worker.rank, parallelism=training.parallelism)


def _setup_model(*, config: Experiment, prepared: Prepared, worker: Worker) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the model to call, its bare module), initial weights loaded."""
    training = config.train
    device = worker.device
    on_gpu = device.type == "cuda"
    # On a GPU the weights stay fp32 and autocast computes in bf16; on a CPU bf16 is the weights' dtype.
    weights_dtype, gpu_dtype = (torch.float32, worker.dtype) if on_gpu else (worker.dtype, None)
    # FSDP with weights from files: built on the meta device, sharded, then filled layer by
    # layer from rank 0, so that no rank ever holds the whole model (7B: ~29 GB in fp32).
    streamed = weight_source(config.model, training.init_from) if training.parallelism == "fsdp" else None
    model = build_model(config.model, prepared.tokenizer, dtype=weights_dtype, seed=training.seed, meta=streamed is not None)
    if training.init_from and streamed is None:
        load_initial_weights(model, training.init_from)
    if config.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model, module = parallelize(model, training.parallelism, device, gpu_dtype)
    if streamed is not None:
        load_sharded_weights_(module, streamed, device)
    return model, module


def mask_seed(mask: MaskConfig, train_seed: int) -> int:
    """rmt's draws, hft's choice and random drop follow both ``mask.seed`` and ``train.seed``,
    so that repeats over training seeds are independent draws of the mask too."""
    return stable_seed("mask", mask.seed, train_seed)


def _setup_reference(*, config: Experiment, state: TrainState, prepared: Prepared, worker: Worker):
    """DPO's reference log-probabilities: a frozen copy of the initial model, or a table
    computed now, from the initial weights (before any resume)."""
    training = config.train
    if training.objective != "dpo":
        return None
    if training.dpo.reference == "model":
        return FrozenReference(state.module).to(worker.device)
    with autocast(worker.device, worker.dtype):
        return PrecomputedReference(
            lambda b: state.module(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits,
            {"train": prepared.train, "validation": prepared.validation}, batch_size=training.micro_batch_size,
            pad_id=prepared.tokenizer.pad_token_id, device=worker.device, rank=worker.rank, world=worker.world,
        )


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _cosine_with_warmup(optimizer, total_steps: int, warmup_ratio: float):
    from transformers import get_cosine_schedule_with_warmup

    return get_cosine_schedule_with_warmup(optimizer, math.ceil(warmup_ratio * total_steps), total_steps)


# ----------------------------------------------------------------------------- the loop's helpers


@dataclass(frozen=True)
class _Due:
    """What the end of a step owes: a report, and with it validation, benchmarks, a checkpoint."""

    report: bool
    validate: bool
    benchmark: bool
    save: bool


def _due(config: Experiment, step: int, last_step: int) -> _Due:
    training, evaluation = config.train, config.eval
    final = step == training.max_steps
    validate = step % training.eval_every == 0 or final
    benchmark = bool(evaluation.benchmarks or evaluation.lm_eval.tasks) and (final or bool(evaluation.every and step % evaluation.every == 0))
    save = step % training.checkpoint_every == 0 or step == last_step or benchmark  # per-sample results travel in it
    return _Due(report=step % training.log_every == 0 or validate or save, validate=validate, benchmark=benchmark, save=save)


class _Window:
    """Sums of per-step figures between two reports."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.steps = 0

    def add(self, **values: float) -> None:
        self.steps += 1
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value

    def summary(self) -> dict[str, float]:
        s, n = self.sums, max(self.steps, 1)
        seconds = s.get("fwd_bwd", 0) + s.get("mask", 0) + s.get("optim", 0)
        # DPO: means per preference pair of accuracy, margin, log-probs and rewards.
        pairs = {key[4:]: value / s["pairs"] for key, value in s.items() if key.startswith("dpo_") and s.get("pairs")}
        return {
            **pairs,
            "loss": s.get("loss", math.nan) / n,
            "grad_norm": s.get("grad_norm", math.nan) / n,
            "kept_fraction": s.get("kept", math.nan) / n,
            "tokens_per_s": s.get("tokens", 0) / seconds if seconds else 0.0,
            "samples_per_s": s.get("samples", 0) / seconds if seconds else 0.0,
            "time_fwd_bwd_s": s.get("fwd_bwd", 0) / n,
            "time_mask_s": s.get("mask", 0) / n,
            "time_optim_s": s.get("optim", 0) / n,
        }


def _on_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Tensors onto ``device``; plain values (flash attention's ``max_length_q``) as they are."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _grad_norm(model) -> torch.Tensor:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _weights_on_cpu(module) -> dict[str, torch.Tensor]:
    return {n: local_tensor(p).detach().to("cpu", copy=True) for n, p in module.named_parameters()}


@torch.no_grad()
def _drop_deltas(module, base_weights: dict[str, torch.Tensor], mask: MaskConfig, train_seed: int) -> None:
    """The Drop baseline: reset ``mask_ratio`` of the fine-tuning deltas to the base weights.

    Under FSDP each rank holds shards; the thresholds come from counts all-reduced over the
    ranks, so the dropped set is the one of the full tensors.
    """
    named = dict(module.named_parameters())
    params = {n: local_tensor(p) for n, p in named.items()}
    tuned = {n: p.detach().to("cpu") for n, p in params.items()}
    sharded = any(p is not named[n] for n, p in params.items())
    dropped = drop_delta(
        base_weights, tuned, mask.mask_ratio, strategy=mask.drop_strategy, rescale=mask.drop_rescale,
        seed=mask_seed(mask, train_seed), reducer=ProcessGroupReducer() if sharded else None,
        full_numels={n: p.numel() for n, p in named.items()}, shard=dist.get_rank() if sharded else 0,
    )
    for name, value in dropped.items():
        params[name].copy_(value.to(params[name].device))
