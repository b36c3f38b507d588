"""Prompt templates, tokenisation with response-only labels, and padded batches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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

    Plain lists of ints: cheap to pickle into Ray's object store once per sweep.
    """

    input_ids: list[list[int]]
    response_start: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> tuple[list[int], int]:
        return self.input_ids[index], self.response_start[index]

    def num_tokens(self) -> int:
        return sum(len(ids) for ids in self.input_ids)


def tokenize_sft(records: list[dict[str, Any]], tokenizer, max_length: int, template: str = "auto") -> TokenizedSplit:
    """Prompt and response tokens, at most ``max_length``; the response ends with EOS.

    Too long an example loses the start of its prompt first (the question's end and the
    response matter most), then the end of its response; it always keeps at least half
    of ``max_length`` for the response, so no example is left without loss tokens.
    """
    prompts = [format_prompt(r["prompt"], tokenizer, template) for r in records]
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer([r["response"] for r in records], add_special_tokens=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None and not _has_chat(tokenizer, template) else []
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
    return TokenizedSplit(input_ids, starts)


@dataclass
class PreferenceSplit(torch.utils.data.Dataset):
    """Chosen and rejected sequences of the same prompts, pair by pair."""

    chosen: TokenizedSplit
    rejected: TokenizedSplit

    def __len__(self) -> int:
        return len(self.chosen)

    def __getitem__(self, index: int) -> tuple[tuple[list[int], int], tuple[list[int], int], int]:
        return self.chosen[index], self.rejected[index], index

    def num_tokens(self) -> int:
        return self.chosen.num_tokens() + self.rejected.num_tokens()


def tokenize_preference(records: list[dict[str, Any]], tokenizer, max_length: int, template: str = "auto") -> PreferenceSplit:
    """prompt + chosen and prompt + rejected, each tokenised (and truncated) as in SFT."""
    chosen = tokenize_sft([{"prompt": r["prompt"], "response": r["chosen"]} for r in records], tokenizer, max_length, template)
    rejected = tokenize_sft([{"prompt": r["prompt"], "response": r["rejected"]} for r in records], tokenizer, max_length,
                            template)
    return PreferenceSplit(chosen, rejected)


def collate_pairs(pairs: list[tuple[tuple[list[int], int], tuple[list[int], int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """One padded batch: the B chosen sequences, then the B rejected ones; ``pair_index``
    holds the pairs' positions in their split."""
    batch = collate([chosen for chosen, _, _ in pairs] + [rejected for _, rejected, _ in pairs], pad_id)
    batch["pair_index"] = torch.tensor([index for _, _, index in pairs], dtype=torch.long)
    return batch


def _has_chat(tokenizer, template: str) -> bool:
    return template == "chat" or (template == "auto" and bool(getattr(tokenizer, "chat_template", None)))


def collate(examples: list[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch with attention mask; labels ignore prompt and padding."""
    length = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, (ids, start) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, start : len(ids)] = torch.tensor(ids[start:], dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


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
