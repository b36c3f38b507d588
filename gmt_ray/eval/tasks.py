"""Benchmarks as lists of items, and the scoring of completions against them.

A benchmark is one of

- ``arithmetic``: the built-in generator's test split (GSM8K-style answers);
- ``gsm8k``: JSONL in GSM8K's format (``question``, ``answer`` ending in ``#### N``);
- ``math``: JSONL in MATH's format (``problem``, ``solution`` with a ``\\boxed{}`` answer);
- ``humaneval`` / ``mbpp``: code problems (``gmt_ray.eval.code``), executed in the sandbox.

Math records may carry a ``task_id``; it defaults to the 0-based row index.
Every score comes with a 95% Wilson interval (``eval.stats``); every sample with its own row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

from gmt_ray.config import Benchmark
from gmt_ray.eval.code import load_code_problems, pass_at_k_table, score_code
from gmt_ray.eval.math import extract_boxed, extract_gsm8k_answer, is_correct
from gmt_ray.eval.records import read_jsonl
from gmt_ray.eval.stats import rate_interval

__all__ = ["BENCHMARKS", "EvalItem", "generate_samples", "load_items", "prompts_for", "score", "summarize"]

BENCHMARKS = get_args(Benchmark)  # the config schema names them
CODE_BENCHMARKS = ("humaneval", "mbpp")
# Base models continuing a code prompt stop where the function ends (EvalPlus's stops).
CODE_STOP_STRINGS = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert "]


@dataclass(frozen=True)
class EvalItem:
    task_id: str
    prompt: str  # the question (math) or the code prompt the model continues (code)
    gold: str | None  # the reference answer (math); None for code, whose checks decide


def load_items(benchmark: str, path: str | Path | None = None, records: Sequence[dict] | None = None,
               limit: int | None = None) -> list[EvalItem]:
    """The benchmark's items, from ``path`` (or built-in ``records`` for ``arithmetic``).

    Raises:
        ValueError / FileNotFoundError: naming the benchmark, file and row that are wrong.
    """
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; choose one of {', '.join(BENCHMARKS)}")
    if benchmark in CODE_BENCHMARKS:
        problems = load_code_problems(benchmark, path)
        items = [EvalItem(p.task_id, p.prompt, None) for p in problems.values()]
    elif benchmark == "arithmetic":
        if records is None:
            raise ValueError("benchmark 'arithmetic' evaluates the generated data's test split: no records given")
        items = [EvalItem(str(i), r["prompt"], r["answer"]) for i, r in enumerate(records)]
    else:
        items = _math_items(benchmark, path)
    return items[:limit] if limit is not None else items


def _math_items(benchmark: str, path: str | Path | None) -> list[EvalItem]:
    if path is None:
        raise ValueError(f"benchmark {benchmark!r} needs a data file (JSONL in its own format): none given")
    question, answer = ("question", "answer") if benchmark == "gsm8k" else ("problem", "solution")
    items = []
    for number, record in read_jsonl(path):
        missing = [k for k in (question, answer) if not isinstance(record, dict) or not isinstance(record.get(k), str)]
        if missing:
            raise ValueError(f"{path}:{number}: a {benchmark} record needs string field(s) {missing}")
        gold = extract_gsm8k_answer(record[answer]) if benchmark == "gsm8k" else extract_boxed(record[answer])
        if gold is None:
            shape = "end in '#### N'" if benchmark == "gsm8k" else "contain a \\boxed{} answer"
            raise ValueError(f"{path}:{number}: the {answer!r} field does not {shape}")
        # The default task id is the 0-based row index (the line number of the row, less one).
        items.append(EvalItem(str(record.get("task_id", number - 1)), record[question], gold))
    if not items:
        raise ValueError(f"{path}: no records")
    return items


def score(benchmark: str, items: Sequence[EvalItem], samples: Sequence[dict], *, sandbox=None,
          data_path: str | Path | None = None) -> list[dict]:
    """One row per sample: task, prompt, completion, extracted answer, gold, correct.

    Args:
        samples: ``{"task_id", "completion" | "solution"}`` records; several per task for pass@k.
        sandbox: a ``Sandbox`` to run code in (code benchmarks only).

    Raises:
        ValueError: a sample for a task the benchmark does not have.
    """
    by_id = {item.task_id: item for item in items}
    if benchmark in CODE_BENCHMARKS:
        if sandbox is None:
            raise ValueError(f"benchmark {benchmark!r} executes code: a sandbox is needed")
        problems = load_code_problems(benchmark, data_path)
        rows = score_code(samples, problems, sandbox)
        for row in rows:
            row["prompt"] = problems[row["task_id"]].prompt
        return rows
    style = "math" if benchmark == "math" else "gsm8k"
    rows = []
    for index, sample in enumerate(samples):
        task_id = str(sample.get("task_id"))
        if task_id not in by_id:
            raise ValueError(f"sample {index}: unknown task_id {task_id!r} for benchmark {benchmark!r}")
        completion = sample.get("completion", sample.get("solution"))
        if not isinstance(completion, str):
            raise ValueError(f"sample {index} ({task_id}): needs a string 'completion' or 'solution'")
        extracted = extract_boxed(completion) if style == "math" else extract_gsm8k_answer(completion)
        if style == "math" and extracted is None:  # "The answer is ..." when nothing is boxed
            extracted = extract_gsm8k_answer(completion)
        item = by_id[task_id]
        rows.append({
            "task_id": task_id, "prompt": item.prompt, "completion": completion, "extracted": extracted,
            "gold": item.gold, "correct": is_correct(extracted, item.gold, style=style),
        })
    return rows


def summarize(benchmark: str, rows: Sequence[dict], ks: Sequence[int] = (1,)) -> dict[str, float]:
    """The benchmark's score(s) with 95% Wilson intervals, keyed ``accuracy`` (math) or
    ``pass@k`` (code), plus ``_low`` / ``_high`` bounds and ``n``."""
    if not rows:
        raise ValueError("no results to summarise")
    if benchmark in CODE_BENCHMARKS:
        table = pass_at_k_table(rows, ks)
        per_task: dict[str, list[bool]] = {}
        for row in rows:
            per_task.setdefault(row["task_id"], []).append(bool(row["correct"]))
        # The interval of pass@1 is over tasks, each scored by its fraction of passing samples.
        _, low, high = rate_interval([sum(v) / len(v) for v in per_task.values()])
        summary = dict(table)
        summary.update({"pass@1_low": low, "pass@1_high": high, "n": len(per_task)})
        return summary
    mean, low, high = rate_interval([float(row["correct"]) for row in rows])
    return {"accuracy": mean, "accuracy_low": low, "accuracy_high": high, "n": len(rows)}


def prompts_for(benchmark: str, items: Sequence[EvalItem], tokenizer, template: str = "auto") -> list[str]:
    """What the model is given: math questions in the training template (Alpaca's ends in
    "Let's think step by step."), code prompts as they are, to be continued."""
    from gmt_ray.data.tokens import prompt_text

    if benchmark in CODE_BENCHMARKS:
        return [item.prompt for item in items]
    return [prompt_text(item.prompt, tokenizer, template) for item in items]


def generate_samples(model, tokenizer, benchmark: str, items: Sequence[EvalItem], *, n: int = 1,
                     temperature: float = 0.0, max_new_tokens: int = 256, batch_size: int = 16,
                     template: str = "auto", seed: int = 0, synced_gpus: bool = False) -> list[dict]:
    """``n`` completions per item (greedy when ``temperature`` is 0) as sample records."""
    from gmt_ray.eval.generate import generate

    prompts = prompts_for(benchmark, items, tokenizer, template)
    stops = CODE_STOP_STRINGS if benchmark in CODE_BENCHMARKS else None
    samples = []
    for draw in range(n):
        completions = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                               temperature=temperature, stop_strings=stops, seed=seed + draw, synced_gpus=synced_gpus)
        samples += [{"task_id": item.task_id, "completion": c} for item, c in zip(items, completions, strict=True)]
    return samples
