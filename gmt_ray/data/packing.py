"""Padding-free micro-batches: an optimizer step's sequences packed whole into rows, each
sequence attending only to itself (``data.packing: true``).

The step keeps its sequences: the ``micro_batch_size x grad_accum`` examples that padded
micro-batches would hold are packed together, so the step's tokens, loss and accumulated
gradient are the padded step's (the loss is normalised by the step's response tokens
either way) and GMT ranks the same gradient. Only the layout changes:

* rows: first-fit decreasing into rows of at most ``capacity`` (``data.max_length``) tokens;
  no sequence is split across rows;
* micro-batches: the rows, longest first, cut into the step's ``grad_accum`` micro-batches
  (every rank runs the same number of forwards, as FSDP's collectives need);
* each row is built by transformers' ``DataCollatorWithFlattening``: ids end to end,
  position ids restarting at 0 for every sequence, and the first label of every sequence
  ignored, so that no label crosses a boundary. A micro-batch's rows are right-padded to the
  longest; the padding gets position ids of its own (0, 1, ...), a block that attends only to
  itself and carries no label.

The model is then called with these position ids, no attention mask and no cache
(``use_cache=False``: with a cache, transformers skips packed-sequence detection and the
sequences of a row see each other). transformers finds the sequences from the position ids
(``masking_utils.find_packed_sequence_indices``) and builds a block-diagonal causal mask for
sdpa and eager. Flash attention's varlen kernel needs one row per micro-batch instead
(``flatten=True``): the micro-batch is one flattened row with its boundaries
(``cu_seq_lens_*``), and nothing is padded at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from gmt_ray.data.tokens import IGNORE_INDEX, example_labels

__all__ = ["PackedSteps", "collate_flat", "collate_rows", "plan_step", "token_slots"]

# (ids, where the response starts), or for conversations (ids, response start, holes: the
# untrained [start, end) spans between assistant turns), as TokenizedSplit gives them.
Example = tuple


def plan_step(lengths: Sequence[int], micro_batches: int, capacity: int) -> list[list[list[int]]]:
    """Where each sequence of a step goes: ``plan[micro_batch][row]`` lists indices into ``lengths``.

    Rows are filled first-fit decreasing (the longest sequence first, each into the first row
    with room; equal lengths in index order), so the plan depends on the lengths alone. A step
    with fewer rows than ``micro_batches`` moves single sequences out of the fullest rows until
    every micro-batch has a row. Rows are sorted longest first and cut into ``micro_batches``
    contiguous groups as equal in size as possible: rows of like length pad least.

    Raises:
        ValueError: a sequence longer than ``capacity``, or fewer sequences than micro-batches.
    """
    if len(lengths) < micro_batches:
        raise ValueError(f"{len(lengths)} sequences cannot fill {micro_batches} micro-batches")
    too_long = [length for length in lengths if length > capacity]
    if too_long:
        raise ValueError(f"sequences of {max(too_long)} tokens do not fit rows of {capacity}")
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        row = next((r for r, free in enumerate(room) if free >= lengths[index]), None)
        if row is None:
            rows.append([index])
            room.append(capacity - lengths[index])
        else:
            rows[row].append(index)
            room[row] -= lengths[index]
    while len(rows) < micro_batches:
        fullest = max(range(len(rows)), key=lambda r: (len(rows[r]), -r))
        rows.append([rows[fullest].pop()])  # its shortest: rows fill longest first
    rows = [sorted(row) for row in rows]
    rows.sort(key=lambda row: (-sum(lengths[i] for i in row), row[0]))
    per, extra = divmod(len(rows), micro_batches)
    plan, start = [], 0
    for m in range(micro_batches):
        size = per + (m < extra)
        plan.append(rows[start : start + size])
        start += size
    return plan


def _features(example: Example) -> dict[str, list[int]]:
    # The padded collate's labels (prompt and a conversation's holes ignored).
    return {"input_ids": np.asarray(example[0], dtype=np.int64).tolist(), "labels": example_labels(example).tolist()}


def _flattening(**options):
    from transformers import DataCollatorWithFlattening

    # separator_id: the label of every sequence's first token, which would otherwise be the
    # target of the previous sequence's last token.
    return DataCollatorWithFlattening(return_tensors="pt", separator_id=IGNORE_INDEX, **options)


def collate_rows(examples: Sequence[Example], rows: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """One micro-batch of packed rows (``rows``: indices into ``examples``), right-padded to the
    longest row: ``input_ids``, ``labels`` and ``position_ids``, all ``[rows, length]``, and no
    ``attention_mask`` (see the module docstring)."""
    flatten = _flattening()
    built = [flatten([_features(examples[i]) for i in row]) for row in rows]
    length = max(b["input_ids"].shape[1] for b in built)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    # Padding numbered 0, 1, ... is a sequence of its own: it attends to nothing real.
    position_ids = torch.arange(length, dtype=torch.long).repeat(len(rows), 1)
    for r, b in enumerate(built):
        used = b["input_ids"].shape[1]
        input_ids[r, :used] = b["input_ids"][0]
        labels[r, :used] = b["labels"][0]
        position_ids[r, :used] = b["position_ids"][0]
        position_ids[r, used:] -= used
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}


def collate_flat(examples: Sequence[Example], rows: list[list[int]]) -> dict:
    """One micro-batch as a single flattened row with no padding, plus the sequence boundaries
    flash attention's varlen kernel takes (``cu_seq_lens_q/k``, ``max_length_q/k``)."""
    return _flattening(return_flash_attn_kwargs=True)([_features(examples[i]) for row in rows for i in row])


@dataclass(frozen=True)
class PackedSteps:
    """Packs a step's examples into its micro-batches (``ShardBatches.next_step``).

    Attributes:
        capacity: tokens per row at most (``data.max_length``).
        flatten: one flattened row per micro-batch, for flash attention's varlen kernel.
    """

    capacity: int
    flatten: bool = False

    def __call__(self, examples: Sequence[Example], micro_batches: int, pad_id: int) -> list[dict]:
        plan = plan_step([len(example[0]) for example in examples], micro_batches, self.capacity)
        if self.flatten:
            return [collate_flat(examples, rows) for rows in plan]
        return [collate_rows(examples, rows, pad_id) for rows in plan]


def token_slots(lengths: Sequence[int], micro_batches: int, capacity: int, layout: str) -> int:
    """Tokens one step computes, padding included, for a step of sequences of ``lengths`` (in
    their sampled order): ``padded`` (``micro_batches`` micro-batches of consecutive sequences,
    each padded to its longest), ``rows`` (packed, each micro-batch padded to its longest row)
    or ``flat`` (packed, one row per micro-batch: no padding)."""
    if layout == "flat":
        return int(sum(lengths))
    if layout == "padded":
        size = len(lengths) // micro_batches
        return sum(size * max(lengths[m * size : (m + 1) * size]) for m in range(micro_batches))
    if layout == "rows":
        total = 0
        for rows in plan_step(lengths, micro_batches, capacity):
            totals = [sum(lengths[i] for i in row) for row in rows]
            total += len(totals) * max(totals)
        return total
    raise ValueError(f"unknown layout {layout!r}: padded, rows or flat")
