"""Prompt templates, tokenisation with response-only labels, and padded batches.

Single-turn records (a prompt and a response) take Alpaca's template or the tokenizer's chat
template. A conversation (a list of messages) takes a chat format only, and every assistant
turn in it is trained: labels cover exactly the assistant turns as the chat template renders
them (their text and the end-of-turn marker it gives them), while system and user turns and the
role headers are prompt. Tulu v2's format is installed as the chat template of a tokenizer
that has none (``data.template: tulu``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "ALPACA_TEMPLATE",
    "TULU_CHAT_TEMPLATE",
    "PreferenceSplit",
    "TokenizedSplit",
    "assistant_spans",
    "collate",
    "example_labels",
    "collate_pairs",
    "format_prompt",
    "has_chat_template",
    "install_chat_format",
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
# Tulu v2's chat format, as open-instruct's encode_with_messages_format trained Tulu 2 (its
# finetune.py): each turn after a role line, contents stripped, the assistant's ending in EOS;
# turns separated by a newline; BOS first (Llama's tokenizer adds it there). The generation
# prompt opens an assistant turn.
TULU_CHAT_TEMPLATE = (
    "{{ bos_token if bos_token else '' }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\\n' + message['content'] | trim + '\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\\n' + message['content'] | trim + '\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\\n' + message['content'] | trim + eos_token }}"
    "{% if not loop.last %}{{ '\\n' }}{% endif %}"
    "{% else %}{{ raise_exception('Tulu v2 has no role ' + message['role']) }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def install_chat_format(tokenizer, template: str):
    """``tokenizer`` ready for ``template``: ``tulu`` gives a tokenizer without a chat template
    Tulu v2's (kept by ``save_pretrained``, so the exported model carries its format); the
    tokenizer's own chat template always wins. Returns the tokenizer."""
    if template == "tulu" and not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = TULU_CHAT_TEMPLATE
    return tokenizer


def has_chat_template(tokenizer, template: str) -> bool:
    """Whether ``template`` renders prompts with the tokenizer's chat template.

    Raises:
        ValueError: ``chat`` or ``tulu`` for a tokenizer without one (``tulu``: see ``install_chat_format``).
    """
    if template in ("chat", "tulu"):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"data.template={template!r} needs a chat template, and the tokenizer has none"
                             + (" (install_chat_format gives it Tulu's)" if template == "tulu" else
                                ": use template 'tulu' (Tulu v2's format) or 'alpaca'"))
        return True
    return template == "auto" and bool(getattr(tokenizer, "chat_template", None))


def format_prompt(prompt: str | list[dict], tokenizer, template: str = "auto") -> str:
    """The text the model sees before its response.

    ``auto`` uses the tokenizer's chat template when it has one, else Alpaca's.
    """
    if has_chat_template(tokenizer, template):
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if isinstance(prompt, list):
        prompt = "\n\n".join(m["content"] for m in prompt)
    return ALPACA_TEMPLATE.format(prompt=prompt)


def prompt_text(prompt: str | list[dict], tokenizer, template: str = "auto") -> str:
    """The exact prompt text seen in training (BOS included), for generation."""
    chat = has_chat_template(tokenizer, template)
    bos = tokenizer.bos_token if tokenizer.bos_token_id is not None and not chat else ""
    return (bos or "") + format_prompt(prompt, tokenizer, template)


@dataclass
class TokenizedSplit(torch.utils.data.Dataset):
    """Token ids per example; labels are the ids from ``response_start`` on, less its holes.

    All examples' ids lie end to end in one int32 array: 4 bytes a token where Python
    lists of ints take ~36, and Ray's object store ships NumPy buffers without pickling
    them element by element (workers read them zero-copy, read-only).

    Attributes:
        ids: int32, every example's tokens end to end.
        offsets: int64, ``len(self) + 1`` entries; example i is ``ids[offsets[i]:offsets[i + 1]]``.
        response_start: int32, per example, where its response begins (relative to the example).
        holes: conversations only (else None): int32 ``[start, end)`` pairs after ``response_start``
            that carry no loss (the user turns between assistant turns), relative to their example;
            example i's are ``holes[hole_offsets[i]:hole_offsets[i + 1]]``.
        hole_offsets: int64, ``len(self) + 1`` entries (None with ``holes``).
    """

    ids: np.ndarray
    offsets: np.ndarray
    response_start: np.ndarray
    holes: np.ndarray | None = None
    hole_offsets: np.ndarray | None = None

    @classmethod
    def from_lists(cls, input_ids: list[list[int]], response_start: list[int],
                   holes: list[list[tuple[int, int]]] | None = None) -> TokenizedSplit:
        """From per-example lists (small splits, tests); ``holes``: per example, its untrained spans."""
        lengths = np.fromiter((len(ids) for ids in input_ids), dtype=np.int64, count=len(input_ids))
        flat = np.fromiter(itertools.chain.from_iterable(input_ids), dtype=np.int32, count=int(lengths.sum()))
        split = cls(flat, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                    np.asarray(response_start, dtype=np.int32))
        if holes is not None:
            counts = np.fromiter((len(h) for h in holes), dtype=np.int64, count=len(holes))
            split.holes = np.asarray([pair for h in holes for pair in h], dtype=np.int32).reshape(-1, 2)
            split.hole_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return split

    @classmethod
    def concatenate(cls, parts: list[TokenizedSplit]) -> TokenizedSplit:
        """The examples of ``parts``, in order, as one split."""
        ends = np.cumsum([0] + [len(p.ids) for p in parts])
        offsets = [np.zeros(1, dtype=np.int64)] + [p.offsets[1:] + end for p, end in zip(parts, ends)]
        split = cls(np.concatenate([np.zeros(0, np.int32)] + [p.ids for p in parts]), np.concatenate(offsets),
                    np.concatenate([np.zeros(0, np.int32)] + [p.response_start for p in parts]))
        if any(p.holes is not None for p in parts):
            holes = [p.holes if p.holes is not None else np.zeros((0, 2), np.int32) for p in parts]
            counts = [np.diff(p.hole_offsets) if p.hole_offsets is not None else np.zeros(len(p), np.int64)
                      for p in parts]
            split.holes = np.concatenate([np.zeros((0, 2), np.int32)] + holes)
            split.hole_offsets = np.concatenate([[0], np.cumsum(np.concatenate([np.zeros(0, np.int64)] + counts))]
                                                ).astype(np.int64)
        return split

    def __len__(self) -> int:
        return len(self.response_start)

    def __getitem__(self, index: int) -> tuple:
        """(a view of the example's ids, where its response starts), and for a split of
        conversations a third item: its holes, an (n, 2) array."""
        ids = self.ids[self.offsets[index] : self.offsets[index + 1]]
        if self.holes is None:
            return ids, int(self.response_start[index])
        return ids, int(self.response_start[index]), self.holes[self.hole_offsets[index] : self.hole_offsets[index + 1]]

    def num_tokens(self) -> int:
        return len(self.ids)


def tokenize_sft(records: list[dict[str, Any]], tokenizer, max_length: int, template: str = "auto",
                 chunk_size: int = 4096, *, every_turn: bool = True) -> TokenizedSplit:
    """Prompt and response tokens, at most ``max_length``; the response ends with EOS.

    Too long an example loses the start of its prompt first (the question's end and the
    response matter most), then the end of its response; it always keeps at least half
    of ``max_length`` for the response, so no example is left without loss tokens.

    A record whose prompt is a conversation (a list of messages) is rendered whole by the
    chat template, and every assistant turn is trained (``every_turn``; False: only the last,
    as a preference pair's response); too long a one loses its end, or where its first
    assistant turn starts beyond half of ``max_length``, the start of it.

    Records are tokenised ``chunk_size`` at a time: the tokenizer returns Python lists,
    which for a whole MetaMathQA-sized split would take GBs before becoming an array.

    Raises:
        ValueError: a conversation of several assistant turns without a chat format (Alpaca's
            template is for single-turn data), or a chat template that renders a conversation's
            beginning differently from the whole of it.
    """
    chat = has_chat_template(tokenizer, template)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None and not chat else []
    parts = []
    for first in range(0, len(records), chunk_size):
        chunk = records[first : first + chunk_size]
        conversations = [i for i, r in enumerate(chunk) if isinstance(r["prompt"], list) and chat]
        if not chat:
            _refuse_multi_turn(chunk, first, template)
        single = sorted(set(range(len(chunk))) - set(conversations))
        input_ids: list[list[int]] = [[] for _ in chunk]
        starts, holes = [0] * len(chunk), [[] for _ in chunk]
        prompts = [format_prompt(chunk[i]["prompt"], tokenizer, template) for i in single]
        prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"] if single else []
        response_ids = tokenizer([chunk[i]["response"] for i in single], add_special_tokens=False)["input_ids"] \
            if single else []
        for i, p, r in zip(single, prompt_ids, response_ids):
            r = r + [tokenizer.eos_token_id]
            p = bos + p
            if len(p) + len(r) > max_length:
                keep_prompt = max(max_length - len(r), max_length // 2)
                p = bos + p[len(p) - keep_prompt + len(bos) :] if keep_prompt > len(bos) else p[:keep_prompt]
                r = r[: max_length - len(p)]
            input_ids[i], starts[i] = p + r, len(p)
        messages = [[*chunk[i]["prompt"], {"role": "assistant", "content": chunk[i]["response"]}]
                    for i in conversations]
        for i, (ids, start, gaps) in zip(conversations, _tokenize_conversations(messages, tokenizer, max_length,
                                                                                  every_turn)):
            input_ids[i], starts[i], holes[i] = ids, start, gaps
        parts.append(TokenizedSplit.from_lists(input_ids, starts, holes if conversations else None))
    return TokenizedSplit.concatenate(parts)


def _refuse_multi_turn(records: list[dict[str, Any]], first: int, template: str) -> None:
    for index, record in enumerate(records):
        if isinstance(record["prompt"], list) and any(m["role"] == "assistant" for m in record["prompt"]):
            raise ValueError(f"record {first + index}: a conversation of several assistant turns needs a chat format "
                             f"(data.template: tulu or chat), not {template!r}: Alpaca's template is for single-turn "
                             "data and would drop the roles")


def assistant_spans(messages: list[dict], tokenizer) -> tuple[str, list[tuple[int, int]]]:
    """The conversation as the chat template renders it, and the character span of each
    assistant turn in it: from the end of the generation prompt that opens the turn to the
    end of the turn as rendered (its end-of-turn marker included).

    Raises:
        ValueError: the template renders a conversation's beginning differently from the whole.
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        opened = tokenizer.apply_chat_template(messages[:index], tokenize=False, add_generation_prompt=True) \
            if index else ""
        closed = tokenizer.apply_chat_template(messages[: index + 1], tokenize=False)
        if not (text.startswith(opened) and text.startswith(closed) and len(opened) <= len(closed)):
            raise ValueError("the chat template renders the beginning of a conversation differently from the whole "
                             "conversation, so its assistant turns cannot be located for their labels "
                             f"(turn {index}: {closed[-80:]!r})")
        spans.append((len(opened), len(closed)))
    return text, spans


def _tokenize_conversations(conversations: list[list[dict]], tokenizer, max_length: int,
                            every_turn: bool) -> list[tuple[list[int], int, list[tuple[int, int]]]]:
    """(ids, response start, holes) per conversation: the trained tokens are those that start
    inside an assistant span (``assistant_spans``)."""
    if not conversations:
        return []
    rendered = [assistant_spans(messages, tokenizer) for messages in conversations]
    encoded = tokenizer([text for text, _ in rendered], add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for index, (ids, offsets, (_, spans)) in enumerate(zip(encoded["input_ids"], encoded["offset_mapping"], rendered)):
        spans = spans if every_turn else spans[-1:]
        trained = [end > begin and any(a <= begin < b for a, b in spans) for begin, end in offsets]
        if not any(trained):
            raise ValueError(f"conversation {index}: no assistant tokens to train on")
        ids, trained = _window(list(ids), trained, max_length, tokenizer.bos_token_id)
        start = trained.index(True)
        holes, gap = [], None
        for position in range(start, len(trained)):
            if not trained[position] and gap is None:
                gap = position
            elif trained[position] and gap is not None:
                holes.append((gap, position))
                gap = None
        if gap is not None:
            holes.append((gap, len(trained)))
        out.append((ids, start, holes))
    return out


def _window(ids: list[int], trained: list[bool], max_length: int, bos_id: int | None) -> tuple[list[int], list[bool]]:
    """At most ``max_length`` tokens: the start of the conversation, unless its first trained
    token lies beyond half of ``max_length``; then from half a window before that token (BOS kept)."""
    if len(ids) <= max_length:
        return ids, trained
    first = trained.index(True)
    begin = 0 if first <= max_length // 2 else first - max_length // 2
    if begin and bos_id is not None and ids[0] == bos_id:
        return [ids[0]] + ids[begin + 1 : begin + max_length], [False] + trained[begin + 1 : begin + max_length]
    return ids[begin : begin + max_length], trained[begin : begin + max_length]


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
    """prompt + chosen and prompt + rejected, each tokenised (and truncated) as in SFT; only the
    final response of each carries the loss (DPO compares the two responses, not the history)."""
    chosen = tokenize_sft([{"prompt": r["prompt"], "response": r["chosen"]} for r in records], tokenizer, max_length,
                          template, every_turn=False)
    rejected = tokenize_sft([{"prompt": r["prompt"], "response": r["rejected"]} for r in records], tokenizer, max_length,
                            template, every_turn=False)
    return PreferenceSplit(chosen, rejected)


def collate_pairs(pairs: list[tuple[tuple[np.ndarray, int], tuple[np.ndarray, int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """One padded batch: the B chosen sequences, then the B rejected ones; ``pair_index``
    holds the pairs' positions in their split."""
    batch = collate([chosen for chosen, _, _ in pairs] + [rejected for _, rejected, _ in pairs], pad_id)
    batch["pair_index"] = torch.tensor([index for _, _, index in pairs], dtype=torch.long)
    return batch


def example_labels(example: tuple) -> np.ndarray:
    """An example's labels: its ids from the response start on, less its holes (the untrained
    spans of a conversation), ``IGNORE_INDEX`` elsewhere. ``example``: (ids, response start)
    or (ids, response start, holes), as ``TokenizedSplit`` gives them."""
    ids, start, *holes = example
    labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int64)
    labels[start:] = np.asarray(ids[start:], dtype=np.int64)
    for begin, end in holes[0] if holes else ():
        labels[begin:end] = IGNORE_INDEX
    return labels


def collate(examples: list[tuple], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch with attention mask; labels ignore prompt, holes and padding.

    ``examples``: (ids, response start) pairs, or (ids, response start, holes) for
    conversations; ids a NumPy array (a split's view) or a list.
    """
    length = max(len(example[0]) for example in examples)
    input_ids = np.full((len(examples), length), pad_id, dtype=np.int64)
    labels = np.full((len(examples), length), IGNORE_INDEX, dtype=np.int64)
    attention_mask = np.zeros((len(examples), length), dtype=np.int64)
    for row, example in enumerate(examples):
        ids = example[0]
        input_ids[row, : len(ids)] = ids
        labels[row, : len(ids)] = example_labels(example)
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
