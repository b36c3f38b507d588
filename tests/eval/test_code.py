import itertools
import math
from pathlib import Path

import pytest

from gmt_ray.eval.code import (
    extract_code,
    load_code_problems,
    pass_at_k,
    pass_at_k_table,
    program_for,
    score_code,
)
from gmt_ray.eval.sandbox import Limits, Sandbox, available_isolations

DATA = Path(__file__).parent / "data"
needs_sandbox = pytest.mark.skipif(not available_isolations(), reason="bubblewrap is not installed")


@pytest.fixture(scope="module")
def sandbox():
    return Sandbox("bwrap", limits=Limits(timeout_s=10))


def test_humaneval_ships_164_problems():
    problems = load_code_problems("humaneval")
    assert len(problems) == 164
    first = problems["HumanEval/0"]
    assert first.entry_point == "has_close_elements" and "check(has_close_elements)" in first.checks


@needs_sandbox
def test_every_canonical_humaneval_solution_passes(sandbox):
    problems = load_code_problems("humaneval")
    samples = [{"task_id": t, "completion": p.canonical_solution[len(p.prompt):]} for t, p in problems.items()]
    results = score_code(samples, problems, sandbox)
    failed = [(r["task_id"], r["detail"]) for r in results if not r["correct"]]
    assert failed == []
    assert pass_at_k_table(results)["pass@1"] == 1.0


@needs_sandbox
def test_wrong_and_empty_completions_fail(sandbox):
    problems = load_code_problems("humaneval")
    samples = [{"task_id": "HumanEval/0", "completion": "    return False\n"},
               {"task_id": "HumanEval/2", "completion": ""},
               {"task_id": "HumanEval/2", "completion": "    return number % 1.0\n"}]
    assert [r["correct"] for r in score_code(samples, problems, sandbox)] == [False, False, True]


@needs_sandbox
def test_a_chat_answer_with_markdown_is_cleaned_and_passes(sandbox):
    problems = load_code_problems("humaneval")
    answer = (
        "Sure! Here is the function:\n\n```python\ndef truncate_number(number: float) -> float:\n"
        "    return number - int(number)\n\nprint(truncate_number(3.5))\n```\nHope this helps."
    )
    [result] = score_code([{"task_id": "HumanEval/2", "completion": answer}], problems, sandbox)
    assert result["correct"], result["detail"]


def test_extract_code_keeps_definitions_and_drops_top_level_calls():
    text = "import math\n\ndef f(x):\n    return math.sqrt(x)\n\nprint(f(4))\nwhile True:\n    pass\n" \
           "if __name__ == '__main__':\n    f(1)\n"
    code = extract_code(text, "f")
    assert "def f" in code and "import math" in code
    assert "print" not in code and "while True" not in code and "__main__" not in code


def test_extract_code_prefers_the_fenced_block_defining_the_entry_point():
    text = "```python\nx = 1\n```\nand\n```py\ndef g():\n    return 2\n```"
    assert extract_code(text, "g").strip() == "def g():\n    return 2"


def test_unparseable_code_is_kept_as_is_to_fail_in_execution():
    assert extract_code("def f(:\n", "f") == "def f(:\n"


def test_program_for_continues_the_prompt_or_takes_a_solution():
    problems = load_code_problems("humaneval")
    problem = problems["HumanEval/2"]
    assert program_for(problem, completion="    return 1\n") == problem.prompt + "    return 1\n"
    assert program_for(problem, solution="def truncate_number(n):\n    return 0\n").startswith("def truncate_number")


@needs_sandbox
def test_mbpp_from_a_local_file(sandbox):
    problems = load_code_problems("mbpp", DATA / "mbpp_sample.jsonl")
    assert [p.entry_point for p in problems.values()] == ["sum_squares", "is_palindrome", "fib"]
    samples = [{"task_id": t, "solution": p.canonical_solution} for t, p in problems.items()]
    samples.append({"task_id": "1", "solution": "def sum_squares(xs):\n    return sum(xs)\n"})
    results = score_code(samples, problems, sandbox)
    assert [r["correct"] for r in results] == [True, True, True, False]


def test_mbpp_without_a_file_is_an_error():
    with pytest.raises(ValueError, match="no bundled data"):
        load_code_problems("mbpp")


def test_a_broken_problem_file_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"task_id": 1, "text": "t", "code": "", "test_list": ["assert f(1) == 1"]}\n{"task_id": 2}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not a mbpp record"):
        load_code_problems("mbpp", path)


def test_score_code_rejects_unknown_tasks_and_empty_samples():
    problems = load_code_problems("humaneval")
    sandbox = Sandbox("none", allow_unisolated=True)
    with pytest.raises(ValueError, match="unknown task_id"):
        score_code([{"task_id": "HumanEval/999", "completion": ""}], problems, sandbox)
    with pytest.raises(ValueError, match="completion"):
        score_code([{"task_id": "HumanEval/0"}], problems, sandbox)


@pytest.mark.parametrize("n,c,k", [(5, 0, 1), (5, 5, 3), (10, 3, 1), (10, 3, 5), (7, 2, 7), (20, 4, 10)])
def test_pass_at_k_equals_the_fraction_of_k_subsets_with_a_pass(n, c, k):
    outcomes = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    exact = sum(any(outcomes[i] for i in s) for s in subsets) / len(subsets)
    assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)
    assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def test_pass_at_k_table_averages_over_tasks_with_their_own_sample_counts():
    rows = [{"task_id": "a", "correct": c} for c in (True, False, False)]
    rows += [{"task_id": "b", "correct": c} for c in (True, True, False, False)]
    table = pass_at_k_table(rows, ks=(1, 2, 4))
    # a: 1 of 3, b: 2 of 4; pass@2 = 1 - C(n-c, 2) / C(n, 2); pass@4 needs 4 samples of every task.
    assert table == pytest.approx({"pass@1": (1 / 3 + 1 / 2) / 2, "pass@2": (2 / 3 + 5 / 6) / 2})


def test_evalplus_files_are_benchmarks_whose_names_do_not_claim_evalplus_rules():
    from gmt_ray.eval.benchmarks import get_benchmark

    assert len(get_benchmark("humaneval").load_items()) == 164
    assert get_benchmark("mbpp").load_items(DATA / "mbpp_sample.jsonl")
    for plus, data in (("humaneval_plus_tests", "humanevalplus_sample.jsonl"), ("mbpp_plus_tests", "mbppplus_sample.jsonl")):
        assert get_benchmark(plus).load_items(DATA / data)
        assert get_benchmark(plus).metric == f"{plus}_pass_at_1"
    # A HumanEval+ file holds only the expanded tests; an MBPP+ file also the base ones, which
    # make it EvalPlus's MBPP (test_mbpp_from_an_mbpp_plus_file_runs_its_base_tests).
    with pytest.raises(ValueError, match="holds EvalPlus's expanded tests: evaluate it as benchmark 'humaneval_plus_tests'"):
        get_benchmark("humaneval").load_items(DATA / "humanevalplus_sample.jsonl")
    assert [i.task_id for i in get_benchmark("mbpp").load_items(DATA / "mbppplus_sample.jsonl")] == ["1", "2"]
    with pytest.raises(ValueError, match="holds plain problems.*as benchmark 'mbpp'"):
        get_benchmark("mbpp_plus_tests").load_items(DATA / "mbpp_sample.jsonl")


@needs_sandbox
def test_mbpp_plus_runs_the_plus_tests_not_only_the_base_ones(sandbox):
    problems = load_code_problems("mbpp", DATA / "mbppplus_sample.jsonl")
    assert [p.entry_point for p in problems.values()] == ["sum_squares", "hypot"]
    samples = [{"task_id": t, "solution": p.canonical_solution} for t, p in problems.items()]
    # Passes the base test (sum_squares([1, 2, 3]) == 14) but not the plus input [] -> 0.
    samples.append({"task_id": "1", "solution": "def sum_squares(xs):\n    return sum(x * x for x in xs) if xs else None\n"})
    results = score_code(samples, problems, sandbox)
    assert [r["correct"] for r in results] == [True, True, False], [r["detail"] for r in results]


@needs_sandbox
def test_mbpp_from_an_mbpp_plus_file_runs_its_base_tests(sandbox):
    from gmt_ray.eval.benchmarks import get_benchmark

    mbpp = get_benchmark("mbpp")
    problems = mbpp.problems(DATA / "mbppplus_sample.jsonl")
    assert [p.evalplus for p in problems.values()] == [False, False]
    assert problems["1"].prompt == ('"""\nWrite a function to return the sum of the squares of a list of integers.\n'
                                    'assert sum_squares([1, 2, 3]) == 14\n"""\n')
    # Right on the base test, wrong on the plus input [] (mbpp_plus_tests fails it): MBPP passes it.
    base_only = {"task_id": "1", "solution": "def sum_squares(xs):\n    return sum(x * x for x in xs) if xs else None\n"}
    wrong = {"task_id": "2", "solution": "import math\n\ndef hypot(a, b):\n    return a + b\n"}
    rows = mbpp.score_samples(mbpp.load_items(DATA / "mbppplus_sample.jsonl"), [base_only, wrong], sandbox=sandbox,
                              data_path=DATA / "mbppplus_sample.jsonl")
    assert [r["correct"] for r in rows] == [True, False], [r["detail"] for r in rows]


@needs_sandbox
def test_humaneval_plus_runs_the_files_own_float_rule(sandbox):
    problems = load_code_problems("humaneval", DATA / "humanevalplus_sample.jsonl")
    samples = [{"task_id": t, "completion": p.canonical_solution[len(p.prompt):]} for t, p in problems.items()]
    # mean([0.1, 0.2]) is 0.15000000000000002: the file's assertion helper accepts it within 1e-6.
    samples.append({"task_id": "HumanEval/1", "completion": "    return round(sum(xs) / len(xs))\n"})
    assert [r["correct"] for r in score_code(samples, problems, sandbox)] == [True, True, False]


def test_an_evalplus_release_record_without_expected_outputs_is_refused(tmp_path):
    path = tmp_path / "MbppPlus.jsonl"
    path.write_text('{"task_id": "Mbpp/2", "prompt": "p", "entry_point": "f", "canonical_solution": "def f(x): return x",'
                    ' "base_input": [[1]], "plus_input": [[2]], "atol": 0, "assertion": "assert f(1) == 1"}\n')
    with pytest.raises(ValueError, match=r"MbppPlus.jsonl:1: an EvalPlus release record.*expected outputs"):
        load_code_problems("mbpp", path)


def test_a_file_mixing_evalplus_and_plain_problems_is_refused(tmp_path):
    lines = (DATA / "mbppplus_sample.jsonl").read_text().splitlines()[:1]
    lines += (DATA / "mbpp_sample.jsonl").read_text().splitlines()[1:2]
    (tmp_path / "mixed.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="mixes EvalPlus problems"):
        load_code_problems("mbpp", tmp_path / "mixed.jsonl")
