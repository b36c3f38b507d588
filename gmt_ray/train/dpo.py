"""Direct Preference Optimization (Rafailov et al., 2023), sigmoid loss, in plain PyTorch.

A batch holds B chosen sequences followed by their B rejected ones (``collate_pairs``);
log-probabilities are summed over response tokens only. The reference log-probabilities
come either from a frozen copy of the initial model, evaluated alongside the policy, or
from a table computed once before training (half the memory: no second model).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from gmt_ray.data.tokens import IGNORE_INDEX, PreferenceSplit, collate_pairs

__all__ = ["FrozenReference", "PrecomputedReference", "dpo_batch_loss", "dpo_loss", "sequence_logps"]


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum over each row's labelled tokens of log p(token | prefix); shape [rows]."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    mask = labels != IGNORE_INDEX
    targets = labels.clamp_min(0).unsqueeze(-1)
    token_logps = logits.gather(-1, targets).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    return (token_logps * mask).sum(-1)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
             reference_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses -log sigmoid(beta * ((pc - rc) - (pr - rr))), and the implicit
    rewards beta * (pc - rc) and beta * (pr - rr)."""
    chosen_rewards = beta * (policy_chosen - reference_chosen)
    rejected_rewards = beta * (policy_rejected - reference_rejected)
    return -F.logsigmoid(chosen_rewards - rejected_rewards), chosen_rewards.detach(), rejected_rewards.detach()


def _split(logps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    half = logps.shape[0] // 2
    return logps[:half], logps[half:]


def dpo_batch_loss(model, reference, batch: dict[str, torch.Tensor], beta: float,
                   split: str = "train") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The batch's summed DPO loss (to be divided by the step's pairs) and sums of the
    pair metrics: reward accuracy and margin, policy log-probs, implicit rewards."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    chosen, rejected = _split(sequence_logps(logits, batch["labels"]))
    reference_chosen, reference_rejected = reference.logps(batch, split)
    losses, chosen_rewards, rejected_rewards = dpo_loss(chosen, rejected, reference_chosen, reference_rejected, beta)
    # 0-dim tensors, not floats: reading them back would stall a GPU once per micro-batch.
    stats = {
        "reward_accuracy": (chosen_rewards > rejected_rewards).float().sum(),
        "reward_margin": (chosen_rewards - rejected_rewards).sum(),
        "logps_chosen": chosen.detach().sum(),
        "logps_rejected": rejected.detach().sum(),
        "rewards_chosen": chosen_rewards.sum(),
        "rewards_rejected": rejected_rewards.sum(),
    }
    return losses.sum(), stats


class FrozenReference:
    """The initial model, frozen, evaluated on every batch."""

    def __init__(self, model: torch.nn.Module):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def to(self, device) -> FrozenReference:
        self.model.to(device)
        return self

    @torch.no_grad()
    def logps(self, batch: dict[str, torch.Tensor], split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return _split(sequence_logps(logits, batch["labels"]))


class PrecomputedReference:
    """Reference log-probabilities of every pair, computed once with the initial model.

    Each rank scores an interleaved shard and the shards are all-gathered, so every rank
    holds the whole table. Ranks run the same number of forwards (a collective under
    FSDP): a shorter shard repeats its last pair.
    """

    def __init__(self, forward: Callable[[dict], torch.Tensor], splits: dict[str, PreferenceSplit], *,
                 batch_size: int, pad_id: int, device: torch.device, rank: int = 0, world: int = 1):
        self.tables: dict[str, torch.Tensor] = {}
        for name, split in splits.items():
            self.tables[name] = self._table(forward, split, batch_size, pad_id, device, rank, world)

    @staticmethod
    @torch.no_grad()
    def _table(forward, split, batch_size, pad_id, device, rank, world) -> torch.Tensor:
        count = len(split)
        per_rank = -(-count // world)
        mine = list(range(rank, count, world))
        mine += [mine[-1] if mine else 0] * (per_rank - len(mine))
        table = torch.zeros(count, 2, dtype=torch.float32, device=device)
        for start in range(0, per_rank, batch_size):
            indices = mine[start : start + batch_size]
            batch = {k: v.to(device) for k, v in collate_pairs([split[i] for i in indices], pad_id).items()}
            chosen, rejected = _split(sequence_logps(forward(batch), batch["labels"]))
            table[batch["pair_index"]] = torch.stack([chosen, rejected], dim=1).float()
        if world > 1:  # each entry was filled by exactly one rank; the others hold zeros
            dist.all_reduce(table)
        return table

    def logps(self, batch: dict[str, torch.Tensor], split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.tables[split][batch["pair_index"]]
        return rows[:, 0], rows[:, 1]
