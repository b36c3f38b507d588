"""What a benchmark is: its items, what the model is given, how a sample scores, and its
score with a 95% interval. Each benchmark module of this package defines one
``BENCHMARK`` from these classes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gmt_ray.eval.stats import rate_interval

__all__ = ["Benchmark", "CodeBenchmark", "EvalItem", "GeneratedBenchmark", "MathBenchmark", "evalplus_prompt"]


@dataclass(frozen=True)
class EvalItem:
    task_id: str
    prompt: str  # the question (math) or the code prompt the model continues (code)
    gold: str | None  # the reference answer (math); None for code, whose checks decide


@dataclass(frozen=True)
class Benchmark:
    """One benchmark. Subclasses say where items come from and how a sample scores.

    Attributes:
        name: what configs and the evaluation CLI call it.
        score: ``accuracy`` or ``pass@1``; reported as the metric ``<name>_<score>``.
        needs_data: its problems come from a file the experiment names (``eval.data.<name>``).
        generated: it evaluates the generated data's held-out split instead.
        executes_code: its samples are programs, run in the sandbox.
        stop_strings: where generation stops (None: at the end of sequence).
    """

    name: str
    score: str = "accuracy"
    needs_data: bool = True
    generated: bool = False
    executes_code: bool = False
    stop_strings: tuple[str, ...] | None = None

    @property
    def metric(self) -> str:
        """The metric its score is reported as (MLflow allows no '@' in names)."""
        return f"{self.name}_{self.score.replace('@', '_at_')}"

    def load_items(self, path: str | Path | None = None, records: Sequence[dict] | None = None,
                   limit: int | None = None) -> list[EvalItem]:
        """The benchmark's problems, the first ``limit`` of them.

        Raises:
            ValueError / FileNotFoundError: naming the file and row that are wrong.
        """
        items = self._items(path, records)
        return items[:limit] if limit is not None else items

    def _items(self, path, records) -> list[EvalItem]:
        raise NotImplementedError

    def prompts(self, items: Sequence[EvalItem], tokenizer, template: str = "auto",
                code_prompt: str = "continue") -> list[str]:
        """What the model is given: questions in the training template (Alpaca's ends in
        "Let's think step by step."); code benchmarks override this (``code_prompt``)."""
        from gmt_ray.data.tokens import prompt_text

        return [prompt_text(item.prompt, tokenizer, template) for item in items]

    def stops(self, code_prompt: str = "continue") -> tuple[str, ...] | None:
        """Where generation stops (None: at the end of sequence)."""
        return self.stop_strings

    def sample_field(self, code_prompt: str = "continue") -> str:
        """What a generated text is in a sample record: ``completion`` (continues the prompt) or
        ``solution`` (a whole program, as EvalPlus's instruction prompt asks for)."""
        return "completion"

    def score_samples(self, items: Sequence[EvalItem], samples: Sequence[dict], *, sandbox=None,
                      data_path: str | Path | None = None) -> list[dict]:
        """One row per sample (task, prompt, completion, correct, ...).

        Args:
            samples: ``{"task_id", "completion" | "solution"}`` records; several per task for pass@k.
            sandbox: a ``Sandbox`` to run code in (code benchmarks only).

        Raises:
            ValueError: a sample for a task the benchmark does not have, or without a completion.
        """
        raise NotImplementedError

    def summarize(self, rows: Sequence[dict], ks: Sequence[int] = (1,)) -> dict[str, float]:
        """``accuracy`` with ``accuracy_low``/``_high`` (a Wilson interval) and ``n``."""
        if not rows:
            raise ValueError("no results to summarise")
        mean, low, high = rate_interval([float(row["correct"]) for row in rows])
        return {"accuracy": mean, "accuracy_low": low, "accuracy_high": high, "n": len(rows)}


@dataclass(frozen=True)
class MathBenchmark(Benchmark):
    """Word problems with one answer, from JSONL: GSM8K-style (``####``) or MATH-style (``\\boxed{}``).

    Records may carry a ``task_id``; it defaults to the 0-based row index.
    """

    question_field: str = "question"
    answer_field: str = "answer"
    # gsm8k: numbers after '####'; math: the boxed or "The answer is" answer whole, math-verify decides
    style: str = "gsm8k"

    def _items(self, path, records) -> list[EvalItem]:
        from gmt_ray.eval.records import read_jsonl

        if path is None:
            raise ValueError(f"benchmark {self.name!r} needs a data file (JSONL in its own format): none given")
        items = []
        for number, record in read_jsonl(path):
            fields = (self.question_field, self.answer_field)
            missing = [k for k in fields if not isinstance(record, dict) or not isinstance(record.get(k), str)]
            if missing:
                raise ValueError(f"{path}:{number}: a {self.name} record needs string field(s) {missing}")
            gold = self._gold(record[self.answer_field])
            if gold is None:
                shape = "end in '#### N'" if self.style == "gsm8k" else "contain a \\boxed{} answer"
                raise ValueError(f"{path}:{number}: the {self.answer_field!r} field does not {shape}")
            # The default task id is the 0-based row index (the line number of the row, less one).
            items.append(EvalItem(str(record.get("task_id", number - 1)), record[self.question_field], gold))
        if not items:
            raise ValueError(f"{path}: no records")
        return items

    def _gold(self, answer: str) -> str | None:
        from gmt_ray.eval.math import extract_boxed, extract_gsm8k_answer

        return extract_gsm8k_answer(answer) if self.style == "gsm8k" else extract_boxed(answer)

    def score_samples(self, items, samples, *, sandbox=None, data_path=None) -> list[dict]:
        from gmt_ray.eval.math import extract_gsm8k_answer, extract_math_answer, is_correct

        # MATH answers are read whole (a boxed one or a "The answer is" line); a number picked out of
        # "(1,2)" or "\frac{1}{2}" would score by accident, so MATH never falls back to one.
        extract = extract_math_answer if self.style == "math" else extract_gsm8k_answer
        by_id = {item.task_id: item for item in items}
        rows = []
        for index, sample in enumerate(samples):
            task_id = str(sample.get("task_id"))
            if task_id not in by_id:
                raise ValueError(f"sample {index}: unknown task_id {task_id!r} for benchmark {self.name!r}")
            completion = sample.get("completion", sample.get("solution"))
            if not isinstance(completion, str):
                raise ValueError(f"sample {index} ({task_id}): needs a string 'completion' or 'solution'")
            extracted = extract(completion)
            item = by_id[task_id]
            rows.append({
                "task_id": task_id, "prompt": item.prompt, "completion": completion, "extracted": extracted,
                "gold": item.gold, "correct": is_correct(extracted, item.gold, style=self.style),
            })
        return rows


@dataclass(frozen=True)
class GeneratedBenchmark(MathBenchmark):
    """The generated data's held-out split (prompt/answer records), GSM8K-style answers."""

    needs_data: bool = False
    generated: bool = True

    def _items(self, path, records) -> list[EvalItem]:
        if records is None:
            raise ValueError(f"benchmark {self.name!r} evaluates the generated data's test split: no records given")
        return [EvalItem(str(i), r["prompt"], r["answer"]) for i, r in enumerate(records)]


# Base models continuing a code prompt stop where the function ends (EvalPlus's stops).
CODE_STOP_STRINGS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ")
# EvalPlus's prompt for instruction-tuned models (evalplus/codegen.py, make_raw_chat_prompt in
# evalplus/provider/utility.py): the problem in a code block after this instruction, and the answer
# opened with this sentence and a ```python block that the model fills with a whole program.
EVALPLUS_INSTRUCTION = ("Please provide a self-contained Python script that solves the following problem in a "
                        "markdown code block:")
EVALPLUS_RESPONSE = ("Below is a Python script with a self-contained function that solves the problem and passes "
                     "corresponding tests:")
# Its stops there: the closing fence, and its end-of-program words (evalplus/provider/hf.py).
EVALPLUS_STOP_STRINGS = ("\n```\n", "\nif __name__", "\ndef main(", "\nprint(")
_SPLITTER = "-[[]]-this-is-really-our-highest-priority-[[]]-"  # EvalPlus's: where the program goes


def evalplus_prompt(task_prompt: str, tokenizer, template: str = "auto") -> str:
    """EvalPlus's instruction prompt for ``task_prompt`` in the training template: rendered by
    the chat template as EvalPlus renders it where there is one, else in Alpaca's; it ends
    inside an opened ```python block."""
    from gmt_ray.data.tokens import has_chat_template, prompt_text

    instruction = f"{EVALPLUS_INSTRUCTION}\n```\n{task_prompt.strip()}\n```\n"
    response = f"{EVALPLUS_RESPONSE}\n```python\n"
    if has_chat_template(tokenizer, template):
        chat = [{"role": "user", "content": instruction},
                {"role": "assistant", "content": f"{response}{_SPLITTER}\n```\n"}]
        return tokenizer.apply_chat_template(chat, tokenize=False).split(_SPLITTER)[0]
    return prompt_text(instruction, tokenizer, template) + response


@dataclass(frozen=True)
class CodeBenchmark(Benchmark):
    """Programming problems whose samples run against their checks in the sandbox.

    Attributes:
        family: the record format, ``humaneval`` or ``mbpp`` (``gmt_ray.eval.code``).
        evalplus: its files hold EvalPlus's expanded tests (and only those).
        bundled: a problem file used when the experiment names none (None: it must name one).
    """

    score: str = "pass@1"
    executes_code: bool = True
    stop_strings: tuple[str, ...] | None = CODE_STOP_STRINGS
    family: str = "humaneval"
    evalplus: bool = False
    bundled: str | None = None

    def problems(self, path: str | Path | None = None) -> dict:
        from gmt_ray.eval.code import load_code_problems

        path = path if path is not None else self._bundled_path()
        if path is None:
            raise ValueError(f"benchmark {self.name!r} has no bundled data: pass its JSONL file (--data)")
        # MBPP from an MBPP+ file is EvalPlus's MBPP: its problem set, each with its base tests.
        problems = load_code_problems(self.family, path, base_tests=self.family == "mbpp" and not self.evalplus)
        if next(iter(problems.values())).evalplus != self.evalplus:
            other = f"{self.family}_plus_tests" if not self.evalplus else self.family
            holds = "EvalPlus's expanded tests" if not self.evalplus else "plain problems, not EvalPlus's expanded tests"
            raise ValueError(f"{path}: holds {holds}: evaluate it as benchmark {other!r}")
        return problems

    def _bundled_path(self) -> Path | None:
        if self.bundled is None:
            return None
        from importlib.resources import files

        package, _, name = self.bundled.partition(":")
        return Path(str(files(package) / name))

    def _items(self, path, records) -> list[EvalItem]:
        return [EvalItem(p.task_id, p.prompt, None) for p in self.problems(path).values()]

    def prompts(self, items, tokenizer, template="auto", code_prompt="continue") -> list[str]:
        if code_prompt == "evalplus":
            return [evalplus_prompt(item.prompt, tokenizer, template) for item in items]
        return [item.prompt for item in items]  # continued as they are

    def stops(self, code_prompt="continue"):
        return EVALPLUS_STOP_STRINGS if code_prompt == "evalplus" else self.stop_strings

    def sample_field(self, code_prompt="continue") -> str:
        return "solution" if code_prompt == "evalplus" else "completion"

    def score_samples(self, items, samples, *, sandbox=None, data_path=None) -> list[dict]:
        from gmt_ray.eval.code import score_code

        if sandbox is None:
            raise ValueError(f"benchmark {self.name!r} executes code: a sandbox is needed")
        problems = self.problems(data_path)
        rows = score_code(samples, problems, sandbox)
        for row in rows:
            row["prompt"] = problems[row["task_id"]].prompt
        return rows

    def summarize(self, rows, ks=(1,)) -> dict[str, float]:
        """pass@k for each k, pass@1 with a Wilson interval over problems, and ``n``."""
        from gmt_ray.eval.code import pass_at_k_table

        if not rows:
            raise ValueError("no results to summarise")
        per_task: dict[str, list[bool]] = {}
        for row in rows:
            per_task.setdefault(row["task_id"], []).append(bool(row["correct"]))
        # The interval of pass@1 is over tasks, each scored by its fraction of passing samples.
        _, low, high = rate_interval([sum(v) / len(v) for v in per_task.values()])
        return {**pass_at_k_table(rows, ks), "pass@1_low": low, "pass@1_high": high, "n": len(per_task)}
