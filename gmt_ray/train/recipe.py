"""The training recipe: what every Ray Train worker runs for one configuration.

Read it top to bottom: ``train_loop_per_worker`` sets up model, optimizer, mask and data,
restores a checkpoint if there is one, then runs the loop

    N x (forward, backward)  ->  mask.apply()  ->  clip  ->  optimizer.step()

reporting metrics through ``ray.train.report``. It knows Ray Train, not Tune or MLflow.
"""

from __future__ import annotations

import json
import math
import random
import resource
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from gmt_ray.config import Experiment
from gmt_ray.data.sources import load_records
from gmt_ray.data.tokens import (
    IGNORE_INDEX,
    PreferenceSplit,
    TokenizedSplit,
    collate,
    collate_pairs,
    format_prompt,
    tokenize_preference,
    tokenize_sft,
    train_tiny_tokenizer,
)
from gmt_ray.eval.suite import evaluate_model
from gmt_ray.masking import GradientMask, drop_delta
from gmt_ray.models import build_model, init_tokenizer_dir, load_initial_weights, load_tokenizer
from gmt_ray.train.dpo import FrozenReference, PrecomputedReference, dpo_batch_loss

__all__ = ["Prepared", "check_eval_data", "latest_checkpoint", "prepare", "train_loop_per_worker"]


class InjectedFailure(RuntimeError):
    """Raised once at ``train.fail_at_step`` to exercise fault tolerance."""


# ----------------------------------------------------------------------------- data, once per run


@dataclass
class Prepared:
    """Tokenizer and tokenised splits: built once in the driver, shared with every worker."""

    tokenizer: Any
    train: TokenizedSplit | PreferenceSplit  # preference pairs for the dpo objective
    validation: TokenizedSplit | PreferenceSplit
    test_records: list[dict] | None = None


def prepare(config: Experiment) -> Prepared:
    """Records, tokenizer and tokenised splits.

    ``train.init_from`` must already be a directory here (the CLIs resolve ``mlflow:``).
    """
    dpo = config.train.objective == "dpo"
    records = load_records(config.data, "preference" if dpo else "sft")
    test_records = records.get("test")
    if dpo and config.data.source == "arithmetic":
        test_records = load_records(config.data)["test"]  # problems with answers, for evaluation
    tokenizer_dir = init_tokenizer_dir(config.train.init_from) if config.train.init_from else None
    if tokenizer_dir is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)  # the one the weights were trained with
    elif config.model.name == "tiny":
        # The tokenizer learns the training text as the model will see it, template included.
        responses = ("chosen", "rejected") if dpo else ("response",)
        texts = [format_prompt(r["prompt"], None, "alpaca") + r[k] for r in records["train"] for k in responses]
        tokenizer = train_tiny_tokenizer(texts, config.model.tiny.vocab_size)
    else:
        tokenizer = load_tokenizer(config.model)
    length, template = config.data.max_length, config.data.template
    tokenize = tokenize_preference if dpo else tokenize_sft
    return Prepared(
        tokenizer=tokenizer,
        train=tokenize(records["train"], tokenizer, length, template),
        validation=tokenize(records["validation"], tokenizer, length, template),
        test_records=test_records,
    )


def check_eval_data(config: Experiment, raise_errors: bool = True) -> list[str]:
    """Loads every evaluation file now, so a missing or broken one stops the run before
    training rather than after it; returns the problems when not raising."""
    from gmt_ray.eval.tasks import load_items

    problems = []
    for benchmark in config.eval.benchmarks:
        if benchmark == "arithmetic":
            continue
        try:
            load_items(benchmark, config.eval.data.get(benchmark), limit=1)
        except (ValueError, FileNotFoundError) as error:
            if raise_errors:
                raise ValueError(f"eval.data.{benchmark}: {error}") from None
            problems.append(f"eval.data.{benchmark}: {error}")
    return problems


class ShardBatches:
    """This rank's micro-batches in a deterministic order; (epoch, offset) is all its state.

    Shuffling and sharding come from torch's DistributedSampler with Ray Train's rank and
    world size, so every rank sees a disjoint shard and a resumed run the same order.
    """

    def __init__(self, dataset, batch_size: int, rank: int, world: int, seed: int, pad_id: int, collate_fn=collate):
        self.dataset, self.batch_size, self.pad_id, self.collate_fn = dataset, batch_size, pad_id, collate_fn
        self.sampler = torch.utils.data.DistributedSampler(
            dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.batches_per_epoch = len(self.sampler) // batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"{len(dataset)} training examples are too few for micro_batch_size={batch_size} "
                f"on {world} workers"
            )
        self.epoch, self.offset = 0, 0
        self._order: list[int] | None = None

    def next(self) -> dict[str, torch.Tensor]:
        if self.offset == self.batches_per_epoch:
            self.epoch, self.offset, self._order = self.epoch + 1, 0, None
        if self._order is None:
            self.sampler.set_epoch(self.epoch)
            self._order = list(self.sampler)
        start = self.offset * self.batch_size
        batch = self.collate_fn([self.dataset[i] for i in self._order[start : start + self.batch_size]], self.pad_id)
        self.offset += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.offset, self._order = state["epoch"], state["offset"], None


# ----------------------------------------------------------------------------- the loop


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    config = Experiment.model_validate(loop_config["experiment"])
    prepared = loop_config.get("prepared")
    if prepared is None:
        prepared = prepare(config)
    elif not isinstance(prepared, Prepared):  # an ObjectRef from the driver
        import ray

        prepared = ray.get(prepared)
    metrics_path = loop_config.get("metrics_path")

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    on_gpu = device.type == "cuda"
    dtype = torch.bfloat16 if (config.model.dtype == "bf16" or (config.model.dtype == "auto" and on_gpu)) else torch.float32
    tc = config.train
    _seed_everything(tc.seed + rank)

    # --- model, optimizer, schedule, mask
    model = build_model(config.model, prepared.tokenizer, dtype=torch.float32 if on_gpu else dtype, seed=tc.seed)
    if tc.init_from:
        load_initial_weights(model, tc.init_from)
    dpo = tc.objective == "dpo"
    reference = FrozenReference(model).to(device) if dpo and tc.dpo.reference == "model" else None
    m = config.mask
    if config.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model, inner = _parallelize(model, tc.parallelism, device, dtype if on_gpu else None)
    # Drop trains as sft and resets deltas to these weights at the end (this rank's
    # shards under FSDP, kept on the CPU).
    base_weights = {n: _local(p).detach().to("cpu", copy=True) for n, p in inner.named_parameters()} \
        if m.method == "drop" else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = _cosine_with_warmup(optimizer, tc.max_steps, tc.warmup_ratio)
    mask = GradientMask(
        inner, method="sft" if m.method == "drop" else m.method, mask_ratio=m.mask_ratio, scope=m.scope, apply_to=m.apply_to,
        optimizer=optimizer if m.apply_to == "update" else None,
        include=m.include or None, exclude=m.exclude, seed=m.seed,
    )
    pad_id = prepared.tokenizer.pad_token_id
    batches = ShardBatches(prepared.train, tc.micro_batch_size, rank, world, tc.seed, pad_id,
                           collate_pairs if dpo else collate)
    if dpo and tc.dpo.reference == "precomputed":  # from the initial weights: before any resume
        with _autocast(device, dtype):
            reference = PrecomputedReference(
                lambda b: inner(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits,
                {"train": prepared.train, "validation": prepared.validation}, batch_size=tc.micro_batch_size,
                pad_id=pad_id, device=device, rank=rank, world=world,
            )

    # --- resume: Ray Train's latest checkpoint (after a failure), else train.resume_from
    step = 0
    checkpoint = ray.train.get_checkpoint()
    restored = checkpoint is not None or tc.resume_from is not None
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            step = _load_checkpoint(Path(directory), model, inner, optimizer, scheduler, mask, batches, rank, tc.parallelism)
    elif tc.resume_from is not None:
        step = _load_checkpoint(Path(tc.resume_from), model, inner, optimizer, scheduler, mask, batches, rank, tc.parallelism)

    # --- loop
    resumed_from_step = step
    ev = config.eval
    model.train()
    last_step = min(tc.max_steps, tc.stop_after_steps or tc.max_steps)
    window = _Window()
    while step < last_step:
        step += 1
        micro_batches = [{k: v.to(device) for k, v in batches.next().items()} for _ in range(tc.grad_accum)]
        # Normalise by the response tokens (sft) or pairs (dpo) of the whole accumulated
        # step, not per micro-batch.
        step_tokens = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in micro_batches)
        step_pairs = sum(len(b["pair_index"]) for b in micro_batches) if dpo else 0

        start = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        pair_sums: dict[str, torch.Tensor] = {}
        for index, batch in enumerate(micro_batches):
            last = index == len(micro_batches) - 1
            with _no_sync(model, tc.parallelism, last), _autocast(device, dtype):
                if dpo:
                    losses, pair_stats = dpo_batch_loss(model, reference, batch, tc.dpo.beta)
                    loss = losses / step_pairs
                    for key, value in pair_stats.items():
                        pair_sums[key] = pair_sums[key] + value if key in pair_sums else value
                else:
                    loss = model(**batch, num_items_in_batch=max(step_tokens, 1)).loss
                loss.backward()
            loss_sum += loss.detach()
        _sync(device)
        masked = time.perf_counter()
        stats = mask.apply()
        _sync(device)
        stepped = time.perf_counter()
        grad_norm = (
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.max_grad_norm)
            if tc.max_grad_norm is not None
            else _grad_norm(model)
        )
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        done = time.perf_counter()

        if tc.fail_at_step == step and not restored:
            raise InjectedFailure(f"injected failure at step {step} (train.fail_at_step)")

        window.add(
            loss=float(loss_sum), tokens=sum(int(b["attention_mask"].sum()) for b in micro_batches) * world,
            samples=sum(len(b["input_ids"]) for b in micro_batches) * world,
            fwd_bwd=masked - start, mask=stats.seconds, optim=done - stepped, kept=stats.kept_fraction,
            grad_norm=float(grad_norm), pairs=step_pairs, **{f"dpo_{k}": float(v) for k, v in pair_sums.items()},
        )
        if step == tc.max_steps and base_weights is not None:
            _drop_deltas(inner, base_weights, m)
        is_last = step == last_step
        validate = step % tc.eval_every == 0 or step == tc.max_steps
        benchmark = bool(ev.benchmarks or ev.lm_eval.tasks) and (step == tc.max_steps or (ev.every and step % ev.every == 0))
        save = step % tc.checkpoint_every == 0 or is_last or benchmark  # per-sample results travel in it
        if step % tc.log_every == 0 or validate or save:
            metrics = {"step": step, "epoch": batches.epoch, "lr": scheduler.get_last_lr()[0], **window.summary(),
                       "resumed_from_step": resumed_from_step}
            metrics["peak_memory_mb"] = _peak_memory_mb(device)
            if validate and dpo:
                metrics.update(_validation_dpo(inner, reference, prepared.validation, tc, rank, world, device, dtype, pad_id))
            elif validate:
                metrics["val_loss"] = _validation_loss(model, prepared.validation, tc, rank, world, device, dtype, pad_id)
            window = _Window()
            with tempfile.TemporaryDirectory() as directory:
                if benchmark:
                    metrics.update(evaluate_model(
                        inner, prepared.tokenizer, ev, test_records=prepared.test_records, template=config.data.template,
                        rank=rank, world=world, out_dir=Path(directory) / "eval", step=step,
                        synced_gpus=tc.parallelism == "fsdp",
                    ))
                if rank == 0 and metrics_path:
                    with open(metrics_path, "a") as log:
                        log.write(json.dumps(metrics) + "\n")
                if save:
                    _save_checkpoint(Path(directory), step, model, inner, optimizer, scheduler, mask, batches, rank,
                                     tc.parallelism, prepared.tokenizer)
                    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))
                else:
                    ray.train.report(metrics)

    if loop_config.get("export_dir"):
        _export(inner, prepared.tokenizer, Path(loop_config["export_dir"]), rank, tc.parallelism)


# ----------------------------------------------------------------------------- helpers


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


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _parallelize(model, parallelism: str, device: torch.device, gpu_dtype: torch.dtype | None):
    """(the model to call, the module whose parameters the mask and checkpoints use)."""
    import ray.train.torch

    if parallelism == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        model.to(device)
        policy = MixedPrecisionPolicy(param_dtype=gpu_dtype) if gpu_dtype is not None else MixedPrecisionPolicy()
        for layer in _decoder_layers(model):
            fully_shard(layer, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        return model, model
    wrapped = ray.train.torch.prepare_model(model)  # DDP when there is more than one worker
    inner = wrapped.module if hasattr(wrapped, "module") else wrapped
    return wrapped, inner


def _decoder_layers(model) -> list[torch.nn.Module]:
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 0:
            return list(module)
    return []


def _no_sync(model, parallelism: str, last: bool):
    # DDP all-reduces on every backward unless told not to; only the last micro-batch needs it.
    if parallelism == "ddp" and not last and hasattr(model, "no_sync"):
        return model.no_sync()
    if parallelism == "fsdp" and hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(last)
    return nullcontext()


def _autocast(device: torch.device, dtype: torch.dtype):
    if device.type == "cuda" and dtype == torch.bfloat16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _grad_norm(model) -> torch.Tensor:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _cosine_with_warmup(optimizer, total_steps: int, warmup_ratio: float):
    from transformers import get_cosine_schedule_with_warmup

    return get_cosine_schedule_with_warmup(optimizer, math.ceil(warmup_ratio * total_steps), total_steps)


@torch.no_grad()
def _validation_loss(model, dataset: TokenizedSplit, tc, rank: int, world: int, device, dtype, pad_id: int) -> float:
    """Token-weighted loss over this rank's shard of the validation split, all-reduced."""
    model.eval()
    indices = list(range(rank, len(dataset), world))
    batches = [indices[i : i + tc.micro_batch_size] for i in range(0, len(indices), tc.micro_batch_size)]
    if tc.eval_batches is not None:
        batches = batches[: tc.eval_batches]
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # [loss sum, tokens]
    for chunk in batches:
        batch = {k: v.to(device) for k, v in collate([dataset[i] for i in chunk], pad_id).items()}
        tokens = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        with _autocast(device, dtype):
            loss = model(**batch, num_items_in_batch=max(tokens, 1)).loss
        totals += torch.tensor([float(loss) * tokens, tokens], dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(totals)
    model.train()
    return float(totals[0] / totals[1]) if totals[1] > 0 else math.nan


@torch.no_grad()
def _drop_deltas(inner, base_weights: dict[str, torch.Tensor], m) -> None:
    """The Drop baseline: reset ``mask_ratio`` of the fine-tuning deltas to the base weights.

    Under FSDP each rank drops within its own shards: for the random strategy (DARE) that
    is the same distribution; a magnitude threshold would differ, so config refuses it.
    """
    params = {n: _local(p) for n, p in inner.named_parameters()}
    tuned = {n: p.detach().to("cpu") for n, p in params.items()}
    dropped = drop_delta(base_weights, tuned, m.mask_ratio, strategy=m.drop_strategy, rescale=m.drop_rescale, seed=m.seed)
    for name, value in dropped.items():
        params[name].copy_(value.to(params[name].device))


def _local(parameter: torch.Tensor) -> torch.Tensor:
    """This rank's shard of an FSDP (DTensor) parameter; the parameter itself otherwise."""
    return parameter.to_local() if hasattr(parameter, "to_local") else parameter


@torch.no_grad()
def _validation_dpo(inner, reference, dataset: PreferenceSplit, tc, rank, world, device, dtype, pad_id) -> dict[str, float]:
    """DPO loss and pair metrics over the validation pairs, all-reduced, as ``val_*``."""
    inner.eval()
    indices = list(range(rank, len(dataset), world))
    batches = [indices[i : i + tc.micro_batch_size] for i in range(0, len(indices), tc.micro_batch_size)]
    if tc.eval_batches is not None:
        batches = batches[: tc.eval_batches]
    keys = ["loss", "reward_accuracy", "reward_margin", "logps_chosen", "logps_rejected", "rewards_chosen",
            "rewards_rejected"]
    totals = torch.zeros(len(keys) + 1, dtype=torch.float64, device=device)  # sums, then pairs
    for chunk in batches:
        batch = {k: v.to(device) for k, v in collate_pairs([dataset[i] for i in chunk], pad_id).items()}
        with _autocast(device, dtype):
            losses, stats = dpo_batch_loss(inner, reference, batch, tc.dpo.beta, split="validation")
        values = [float(losses)] + [float(stats[k]) for k in keys[1:]] + [len(chunk)]
        totals += torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(totals)
    inner.train()
    pairs = float(totals[-1])
    return {f"val_{k}": float(totals[i]) / pairs if pairs else math.nan for i, k in enumerate(keys)}


# ----------------------------------------------------------------------------- checkpoints


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_checkpoint(directory: Path, step, model, inner, optimizer, scheduler, mask, batches, rank, parallelism,
                     tokenizer=None) -> None:
    """Everything needed for a bit-identical continuation.

    Each rank writes its own files (RNG, and its shard under FSDP); Ray Train merges
    the ranks' directories into one checkpoint.
    """
    progress = {"step": step, "data": batches.state_dict(), "mask": mask.state_dict(), "scheduler": scheduler.state_dict()}
    torch.save({**progress, "rng": _rng_state()}, directory / f"rank{rank}.pt")
    if parallelism == "fsdp":
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optim_state = get_state_dict(inner, optimizer)
        dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(directory / "sharded"))
    elif rank == 0:
        torch.save({"model": inner.state_dict(), "optimizer": optimizer.state_dict()}, directory / "model.pt")
    if rank == 0 and tokenizer is not None:  # a later stage (DPO after SFT) starts from here
        tokenizer.save_pretrained(directory / "tokenizer")


def latest_checkpoint(run_dir: str | Path, max_step: int | None = None) -> Path | None:
    """The checkpoint of a run directory with the highest step, at most ``max_step``
    (None: there is none).

    For a run restarted from scratch by its caller (a sweep trial whose driver died with
    its node): Ray Train restores by itself only within one ``fit``. Only checkpoints that
    Ray Train registered (listed in its ``checkpoint_manager_snapshot.json``) count: their
    reports, and every report before them, reached the controller and its callbacks, so
    continuing after them repeats no step and loses none. Without that file (another Ray
    version), the complete checkpoint directories are taken.
    """
    run_dir = Path(run_dir)
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    if snapshot.exists():
        try:
            registered = json.loads(snapshot.read_text())["checkpoint_results"]
            candidates = [run_dir / entry["checkpoint_dir_name"] for entry in registered]
        except (ValueError, KeyError, TypeError):
            candidates = []
    else:
        candidates = list(run_dir.glob("checkpoint_*"))
    best, best_step = None, -1
    for candidate in candidates:
        try:
            step = int(torch.load(candidate / "rank0.pt", weights_only=False)["step"])
        except (OSError, KeyError, RuntimeError, EOFError):
            continue  # incomplete: the node died while writing it
        complete = (candidate / "model.pt").exists() or (candidate / "sharded").is_dir()
        if complete and step > best_step and (max_step is None or step <= max_step):
            best, best_step = candidate, step
    return best


def _load_checkpoint(directory: Path, model, inner, optimizer, scheduler, mask, batches, rank, parallelism) -> int:
    own = directory / f"rank{rank}.pt"
    progress = torch.load(own if own.exists() else directory / "rank0.pt", weights_only=False)
    if parallelism == "fsdp":
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_state, optim_state = get_state_dict(inner, optimizer)
        state = {"model": model_state, "optimizer": optim_state}
        dcp.load(state, checkpoint_id=str(directory / "sharded"))
        set_state_dict(inner, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    else:
        weights = torch.load(directory / "model.pt", map_location="cpu", weights_only=False)
        inner.load_state_dict(weights["model"])
        optimizer.load_state_dict(weights["optimizer"])
    scheduler.load_state_dict(progress["scheduler"])
    mask.load_state_dict(progress["mask"])
    batches.load_state_dict(progress["data"])
    if own.exists():  # same world size: continue this rank's random streams exactly
        _set_rng_state(progress["rng"])
    return int(progress["step"])


def _export(inner, tokenizer, directory: Path, rank: int, parallelism: str) -> None:
    """The final model in Hugging Face format (rank 0 writes), for evaluation and later stages."""
    state = None
    if parallelism == "fsdp":  # gathering the full state dict is collective: every rank joins
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(inner, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        directory.mkdir(parents=True, exist_ok=True)
        inner.save_pretrained(directory, state_dict=state)
        tokenizer.save_pretrained(directory)
