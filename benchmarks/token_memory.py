"""Bytes per token of a tokenised split as a Ray worker holds it: flat int32 arrays against
the Python lists of ints they replaced, side by side in one run.

    python benchmarks/token_memory.py [--rows 395000] [--list-rows 50000] [--vocab 8000]

MetaMathQA-sized data (its ~395K rows of a query and a worked response, ~250 tokens each
with the prompt template) is generated from gmt_ray.data.arithmetic with a long-winded
solution template, tokenised by ``tokenize_sft`` with a byte-level BPE trained here, put
into Ray's object store and fetched by a fresh worker actor, which reports:

* held: the deserialised object's own memory (array nbytes and object headers; for lists,
  list objects plus one int object for every id above 256, CPython's cached small ints);
* RSS and USS growth of the worker after it has read every token. Arrays arrive zero-copy,
  mapped from the object store's shared memory: they count in RSS, not in USS.

The list-of-lists layout is measured on the first ``--list-rows`` rows (it takes ~36 bytes a
token in the worker and as much again to build in this process); bytes per token do not
depend on the number of rows.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import psutil
import ray

from gmt_ray.data.arithmetic import generate_arithmetic
from gmt_ray.data.tokens import TokenizedSplit, format_prompt, tokenize_sft, train_tiny_tokenizer

_OPENERS = ["Let's work through the problem carefully, one quantity at a time.",
            "We track the number of items after every event in the story.",
            "To answer the question we follow each change in order and keep a running total."]
_LINKS = ["After that event, the running total is found from {step}",
          "Next, the story changes the count, and we compute {step}",
          "Following the next sentence of the problem, we calculate {step}"]


@dataclass
class ListSplit:
    """The layout before the flat arrays: per-example Python lists of ints."""

    input_ids: list[list[int]]
    response_start: list[int]


def metamath_like(rows: int, seed: int = 0) -> list[dict[str, str]]:
    """``rows`` query/response records of MetaMathQA's length, the response a verbose chain of steps."""
    rng = random.Random(seed)
    records = generate_arithmetic(rows, 0, 0, min_ops=3, max_ops=4, max_number=400, seed=seed)["train"]
    for record in records:
        work, answer = record["response"].rsplit("\n#### ", 1)
        steps = [s.strip() + "." for s in work.split(".") if s.strip()]
        lines = [rng.choice(_OPENERS), f"At the start of the story, {steps[0]}"]
        lines += [rng.choice(_LINKS).format(step=s) + " That is the new count." for s in steps[1:]]
        lines.append(f"So after every step is applied, the final count is {answer}.\n#### {answer}\n"
                     f"The answer is: {answer}")
        record["response"] = "\n".join(lines)
    return records


@ray.remote(num_cpus=0)
class Holder:
    """A fresh worker process: fetches the split, reads every token, reports its memory."""

    def __init__(self):
        import gmt_ray.data.tokens  # noqa: F401  (torch: imported before measuring, not during)

    def measure(self, boxed: list) -> dict[str, float]:
        process = psutil.Process()
        before = process.memory_full_info()
        split = ray.get(boxed[0])
        if isinstance(split, ListSplit):
            tokens = sum(sum(ids) * 0 + len(ids) for ids in split.input_ids)  # touches every int
        else:
            tokens = len(split.ids) + 0 * int(split.ids.sum(dtype=np.int64))  # reads every id, no temporaries
        after = process.memory_full_info()
        return {"tokens": tokens, "held": held_bytes(split), "rss": after.rss - before.rss,
                "uss": after.uss - before.uss, "zero_copy": not getattr(split, "ids", np.ones(1)).flags.writeable}


def held_bytes(split: TokenizedSplit | ListSplit) -> int:
    """The object's own memory in this process."""
    if isinstance(split, ListSplit):
        ints = sys.getsizeof(1000)  # every id above 256 is its own int object after unpickling
        lists = sys.getsizeof(split.input_ids) + sum(sys.getsizeof(ids) for ids in split.input_ids)
        big = sum(1 for ids in split.input_ids for i in ids if not -5 <= i <= 256)
        starts = sys.getsizeof(split.response_start) + ints * sum(1 for s in split.response_start if s > 256)
        return lists + big * ints + starts
    arrays = (split.ids, split.offsets, split.response_start)
    return sys.getsizeof(split) + sys.getsizeof(split.__dict__) + sum(a.nbytes + sys.getsizeof(a[:0]) for a in arrays)


def measure(split) -> dict[str, float]:
    ref = ray.put(split)
    holder = Holder.remote()
    result = ray.get(holder.measure.remote([ref]))
    ray.kill(holder)
    del ref
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=395_000, help="rows of the array layout (MetaMathQA: ~395K)")
    parser.add_argument("--list-rows", type=int, default=50_000, help="rows of the list-of-lists layout")
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--max-length", type=int, default=512)
    args = parser.parse_args()

    start = time.perf_counter()
    records = metamath_like(args.rows)
    tokenizer = train_tiny_tokenizer([format_prompt(r["prompt"], None, "alpaca") + r["response"] for r in records[:20_000]],
                                     args.vocab)
    generated = time.perf_counter()
    split = tokenize_sft(records, tokenizer, args.max_length, "alpaca")
    tokenised = time.perf_counter()
    del records
    n_list = min(args.list_rows, len(split))
    as_lists = ListSplit([split[i][0].tolist() for i in range(n_list)], split.response_start[:n_list].tolist())
    small = TokenizedSplit(split.ids[: split.offsets[n_list]], split.offsets[: n_list + 1], split.response_start[:n_list])
    print(f"{len(split):,} rows, {split.num_tokens():,} tokens ({split.num_tokens() / len(split):.0f} a row, "
          f"vocab {len(tokenizer)}, {np.mean(split.ids > 256):.0%} of ids above 256); generated + tokenizer "
          f"{generated - start:.0f} s, tokenize_sft {tokenised - generated:.0f} s "
          f"({split.num_tokens() / (tokenised - generated) / 1e6:.2f} M tokens/s)")

    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="token-memory-ray-"))
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    print(f"{'layout':<28}{'rows':>9}{'tokens':>13}{'held B/tok':>12}{'RSS B/tok':>11}{'USS B/tok':>11}  zero-copy")
    for name, data in (("int32 arrays (new)", split), ("int32 arrays (new), subset", small),
                       ("lists of ints (old)", as_lists)):
        m = measure(data)
        rows = len(data.response_start)
        print(f"{name:<28}{rows:>9,}{m['tokens']:>13,}{m['held'] / m['tokens']:>12.2f}{m['rss'] / m['tokens']:>11.2f}"
              f"{m['uss'] / m['tokens']:>11.2f}  {m['zero_copy']}")
    ray.shutdown()
    # Llama-2's and Mistral's vocabularies put bytes and digits above 256 too, so there
    # nearly every id of the old layout was its own int object.
    print(f"old layout with every id above 256 (Llama-2, Mistral): {8 + sys.getsizeof(1000)} B/token held, "
          f"against {8 + sys.getsizeof(1000) * np.mean(split.ids > 256):.1f} with this tokenizer")


if __name__ == "__main__":
    main()
