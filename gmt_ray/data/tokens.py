"""Prompt templates, tokenisation with response-only labels, and padded batches."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "ALPACA_TEMPLATE",
    "PreferenceSplit",
    "TokenizedSplit",
    "collate",
    "collate_pairs",
    "format_prompt",
    "prompt_text",
    "tokenize_preference",
    "tokenize_sft",
    "train_tiny_tokenizer",
]

ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{prompt}\n\n### Response: Let's think step by step.\n"
)
IGNORE_INDEX = -100  # label of tokens that carry no loss (prompt, padding)


def format_prompt(prompt: str | list[dict], tokenizer, template: str = "auto") -> str:
    """The text the model sees before its response.

    ``auto`` uses the tokenizer's chat template when it has one, else Alpaca's.
    """
    if _has_chat(tokenizer, template):
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if isinstance(prompt, list):
        prompt = "\n\n".join(m["content"] for m in prompt)
    return ALPACA_TEMPLATE.format(prompt=prompt)


def prompt_text(prompt: str | list[dict], tokenizer, template: str = "auto") -> str:
    """The exact prompt text seen in training (BOS included), for generation."""
    bos = tokenizer.bos_token if tokenizer.bos_token_id is not None and not _has_chat(tokenizer, template) else ""
    return (bos or "") + format_prompt(prompt, tokenizer, template)


@dataclass
class TokenizedSplit(torch.utils.data.Dataset):
    """Token ids per example; labels are the ids from ``response_start`` on.

    All examples' ids lie end to end in one int32 array: 4 bytes a token where Python
    lists of ints take ~36, and Ray's object store ships NumPy buffers without pickling
    them element by element (workers read them zero-copy, read-only).

    Attributes:
        ids: int32, every example's tokens end to end.
        offsets: int64, ``len(self) + 1`` entries; example i is ``ids[offsets[i]:offsets[i + 1]]``.
        response_start: int32, per example, where its response begins (relative to the example).
    """

    ids: np.ndarray
    offsets: np.ndarray
    response_start: np.ndarray

    @classmethod
    def from_lists(cls, input_ids: list[list[int]], response_start: list[int]) -> TokenizedSplit:
        """From per-example lists (small splits, tests)."""
        lengths = np.fromiter((len(ids) for ids in input_ids), dtype=np.int64, count=len(input_ids))
        flat = np.fromiter(itertools.chain.from_iterable(input_ids), dtype=np.int32, count=int(lengths.sum()))
        return cls(flat, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                   np.asarray(response_start, dtype=np.int32))

    @classmethod
    def concatenate(cls, parts: list[TokenizedSplit]) -> TokenizedSplit:
        """The examples of ``parts``, in order, as one split."""
        ends = np.cumsum([0] + [len(p.ids) for p in parts])
        offsets = [np.zeros(1, dtype=np.int64)] + [p.offsets[1:] + end for p, end in zip(parts, ends)]
        return cls(np.concatenate([np.zeros(0, np.int32)] + [p.ids for p in parts]), np.concatenate(offsets),
                   np.concatenate([np.zeros(0, np.int32)] + [p.response_start for p in parts]))

    def __len__(self) -> int:
        return len(self.response_start)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        """(a view of the example's ids, where its response starts)."""
        return self.ids[self.offsets[index] : self.offsets[index + 1]], int(self.response_start[index])

    def num_tokens(self) -> int:
        return len(self.ids)


def tokenize_sft(records: list[dict[str, Any]], tokenizer, max_length: int, template: str = "auto",
                 chunk_size: int = 4096) -> TokenizedSplit:
    """Prompt and response tokens, at most ``max_length``; the response ends with EOS.

    Too long an example loses the start of its prompt first (the question's end and the
    response matter most), then the end of its response; it always keeps at least half
    of ``max_length`` for the response, so no example is left without loss tokens.

    Records are tokenised ``chunk_size`` at a time: the tokenizer returns Python lists,
    which for a whole MetaMathQA-sized split would take GBs before becoming an array.
    """
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None and not _has_chat(tokenizer, template) else []
    parts = []
    for first in range(0, len(records), chunk_size):
        chunk = records[first : first + chunk_size]
        prompts = [format_prompt(r["prompt"], tokenizer, template) for r in chunk]
        prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        response_ids = tokenizer([r["response"] for r in chunk], add_special_tokens=False)["input_ids"]
        input_ids, starts = [], []
        for p, r in zip(prompt_ids, response_ids):
            r = r + [tokenizer.eos_token_id]
            p = bos + p
            if len(p) + len(r) > max_length:
                keep_prompt = max(max_length - len(r), max_length // 2)
                p = bos + p[len(p) - keep_prompt + len(bos) :] if keep_prompt > len(bos) else p[:keep_prompt]
                r = r[: max_length - len(p)]
            input_ids.append(p + r)
            starts.append(len(p))
        parts.append(TokenizedSplit.from_lists(input_ids, starts))
    return TokenizedSplit.concatenate(parts)


@dataclass
class PreferenceSplit(torch.utils.data.Dataset):
    """Chosen and rejected sequences of the same prompts, pair by pair."""

    chosen: TokenizedSplit
    rejected: TokenizedSplit

    def __len__(self) -> int:
        return len(self.chosen)

    def __getitem__(self, index: int) -> tuple[tuple[np.ndarray, int], tuple[np.ndarray, int], int]:
        return self.chosen[index], self.rejected[index], index

    def num_tokens(self) -> int:
        return self.chosen.num_tokens() + self.rejected.num_tokens()


def tokenize_preference(records: list[dict[str, Any]], tokenizer, max_length: int, template: str = "auto") -> PreferenceSplit:
    """prompt + chosen and prompt + rejected, each tokenised (and truncated) as in SFT."""
    chosen = tokenize_sft([{"prompt": r["prompt"], "response": r["chosen"]} for r in records], tokenizer, max_length, template)
    rejected = tokenize_sft([{"prompt": r["prompt"], "response": r["rejected"]} for r in records], tokenizer, max_length,
                            template)
    return PreferenceSplit(chosen, rejected)


def collate_pairs(pairs: list[tuple[tuple[np.ndarray, int], tuple[np.ndarray, int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """One padded batch: the B chosen sequences, then the B rejected ones; ``pair_index``
    holds the pairs' positions in their split."""
    batch = collate([chosen for chosen, _, _ in pairs] + [rejected for _, rejected, _ in pairs], pad_id)
    batch["pair_index"] = torch.tensor([index for _, _, index in pairs], dtype=torch.long)
    return batch


def _has_chat(tokenizer, template: str) -> bool:
    return template == "chat" or (template == "auto" and bool(getattr(tokenizer, "chat_template", None)))


def collate(examples: list[tuple[Sequence[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch with attention mask; labels ignore prompt and padding.

    ``examples``: (ids, response start) pairs; ids a NumPy array (a split's view) or a list.
    """
    length = max(len(ids) for ids, _ in examples)
    input_ids = np.full((len(examples), length), pad_id, dtype=np.int64)
    labels = np.full((len(examples), length), IGNORE_INDEX, dtype=np.int64)
    attention_mask = np.zeros((len(examples), length), dtype=np.int64)
    for row, (ids, start) in enumerate(examples):
        input_ids[row, : len(ids)] = ids
        labels[row, start : len(ids)] = ids[start:]
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": torch.from_numpy(input_ids), "labels": torch.from_numpy(labels),
            "attention_mask": torch.from_numpy(attention_mask)}


def train_tiny_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on ``texts``, as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|pad|>", "<|bos|>", "<|eos|>"]
    tokenizer = Tokenizer(models.BPE())
    # Single digits, so that a small model sees numbers digit by digit, as in arithmetic.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<|pad|>", bos_token="<|bos|>", eos_token="<|eos|>",
    )
