"""The training state and its checkpoint layout.

A checkpoint directory holds everything a bit-identical continuation needs:

    rank{R}.pt    every rank: step, data position, mask and scheduler state, RNG streams
    model.pt      ddp (rank 0): model and optimizer state dicts
    sharded/      fsdp: model and optimizer shards (torch.distributed.checkpoint)
    tokenizer/    rank 0: the tokenizer, so that a later stage (DPO after SFT) starts here

Each rank writes its own files into the same directory; Ray Train merges the ranks'
directories into one checkpoint. Exported models (``TrainState.export``) are Hugging
Face directories instead: what ``init_from``, evaluation and users consume.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gmt_ray.data.batches import ShardBatches
from gmt_ray.masking import GradientMask

__all__ = ["TrainState", "latest_checkpoint"]


@dataclass
class TrainState:
    """What one rank trains: the model, how it steps, and where it is.

    Attributes:
        model: what the loop calls forward on (DDP's wrapper, or the FSDP-sharded model).
        module: the bare model whose parameters the mask, checkpoints and export see.
    """

    model: torch.nn.Module
    module: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    mask: GradientMask
    batches: ShardBatches
    rank: int
    parallelism: str  # ddp | fsdp
    step: int = 0

    def save(self, directory: Path, tokenizer=None) -> None:
        """This rank's part of a checkpoint of the current step, into ``directory``."""
        progress = {"step": self.step, "data": self.batches.state_dict(), "mask": self.mask.state_dict(),
                    "scheduler": self.scheduler.state_dict(), "rng": _rng_state()}
        torch.save(progress, directory / f"rank{self.rank}.pt")
        if self.parallelism == "fsdp":
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_state_dict

            model_state, optim_state = get_state_dict(self.module, self.optimizer)
            dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(directory / "sharded"))
        elif self.rank == 0:
            torch.save({"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict()},
                       directory / "model.pt")
        if self.rank == 0 and tokenizer is not None:
            tokenizer.save_pretrained(directory / "tokenizer")

    def load(self, directory: Path) -> None:
        """Continues from a checkpoint directory written by ``save``."""
        own = directory / f"rank{self.rank}.pt"
        progress = torch.load(own if own.exists() else directory / "rank0.pt", weights_only=False)
        if self.parallelism == "fsdp":
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint import DefaultLoadPlanner
            from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

            model_state, optim_state = get_state_dict(self.module, self.optimizer)
            state = {"model": model_state, "optimizer": optim_state}
            # Partial: a parameter that never had a gradient (hft's frozen matrices) has no
            # optimizer state in the checkpoint, while the fresh optimizer's template has one.
            dcp.load(state, checkpoint_id=str(directory / "sharded"), planner=DefaultLoadPlanner(allow_partial_load=True))
            set_state_dict(self.module, self.optimizer, model_state_dict=state["model"],
                           optim_state_dict=state["optimizer"])
        else:
            weights = torch.load(directory / "model.pt", map_location="cpu", weights_only=False)
            self.module.load_state_dict(weights["model"])
            self.optimizer.load_state_dict(weights["optimizer"])
        self.scheduler.load_state_dict(progress["scheduler"])
        self.mask.load_state_dict(progress["mask"])
        self.batches.load_state_dict(progress["data"])
        if own.exists():  # same world size: continue this rank's random streams exactly
            _set_rng_state(progress["rng"])
        self.step = int(progress["step"])

    def export(self, directory: Path, tokenizer) -> None:
        """The model in Hugging Face format (rank 0 writes; under FSDP every rank must call it)."""
        state = None
        if self.parallelism == "fsdp":  # gathering the full state dict is collective
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            state = get_model_state_dict(self.module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.rank == 0:
            directory.mkdir(parents=True, exist_ok=True)
            self.module.save_pretrained(directory, state_dict=state)
            tokenizer.save_pretrained(directory)


def latest_checkpoint(run_dir: str | Path, max_step: int | None = None) -> Path | None:
    """The checkpoint of a run directory with the highest step, at most ``max_step``
    (None: there is none).

    For a run restarted from scratch by its caller (a sweep trial whose driver died with
    its node): Ray Train restores by itself only within one ``fit``. Only checkpoints that
    Ray Train registered count: their reports, and every report before them, reached the
    controller and its callbacks, so continuing after them repeats no step and loses none.
    Where Ray Train's registry cannot be read, the complete checkpoint directories are taken.
    """
    from gmt_ray.ray_compat import registered_checkpoints

    run_dir = Path(run_dir)
    candidates = registered_checkpoints(run_dir)
    if candidates is None:
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
