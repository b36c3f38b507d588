from pathlib import Path

import pytest

from gmt_ray.eval.benchmarks import BENCHMARKS, get_benchmark


def load_items(name, path=None, records=None):
    return get_benchmark(name).load_items(path, records=records)


def score(name, items, samples):
    return get_benchmark(name).score_samples(items, samples)


def summarize(name, rows):
    return get_benchmark(name).summarize(rows)

DATA = Path(__file__).parent / "data"


def test_gsm8k_items_take_the_answer_after_hashes_and_default_task_ids():
    items = load_items("gsm8k", DATA / "gsm8k_sample.jsonl")
    assert [(i.task_id, i.gold) for i in items] == [("0", "7"), ("1", "1300"), ("half", "4.5")]


def test_gsm8k_scoring_rows_and_summary():
    items = load_items("gsm8k", DATA / "gsm8k_sample.jsonl")
    samples = [{"task_id": "0", "completion": "3 + 4 = 7. The answer is 7."},
               {"task_id": "1", "completion": "It costs $1,300."},
               {"task_id": "half", "completion": "#### 9/2"}]
    rows = score("gsm8k", items, samples)
    assert [r["correct"] for r in rows] == [True, True, True]
    assert rows[1]["extracted"] == "1300" and rows[1]["prompt"].startswith("A book")
    samples[0]["completion"] = "#### 8"
    summary = summarize("gsm8k", score("gsm8k", items, samples))
    assert summary["accuracy"] == pytest.approx(2 / 3) and summary["n"] == 3
    assert summary["accuracy_low"] <= summary["accuracy"] <= summary["accuracy_high"]


def test_math_items_take_the_boxed_answer_and_compare_by_equivalence():
    items = load_items("math", DATA / "math_sample.jsonl")
    assert [i.gold for i in items] == ["\\frac{3}{4}", "4"]
    samples = [{"task_id": "0", "completion": "So the sum is $\\boxed{0.75}$."},
               {"task_id": "1", "completion": "The answer is 5"}]
    assert [r["correct"] for r in score("math", items, samples)] == [True, False]


def test_arithmetic_items_come_from_records():
    items = load_items("arithmetic", records=[{"prompt": "1 + 1?", "response": "#### 2", "answer": "2"}])
    assert items[0].gold == "2" and items[0].prompt == "1 + 1?"


@pytest.mark.parametrize("content,message", [
    ('{"question": "q"}\n', "needs string field"),
    ('{"question": "q", "answer": "no hashes, no number"}\n', "does not end in '#### N'"),
    ("not json\n", "not JSON"),
    ("", "no records"),
])
def test_bad_math_files_name_file_and_row(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_items("gsm8k", path)


def test_unknown_benchmark_and_missing_inputs_are_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark 'mmlu'; choose one of arithmetic, gsm8k"):
        load_items("mmlu")
    with pytest.raises(ValueError, match="needs a data file"):
        load_items("gsm8k")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_items("math", tmp_path / "missing.jsonl")
    items = load_items("gsm8k", DATA / "gsm8k_sample.jsonl")
    with pytest.raises(ValueError, match="unknown task_id"):
        score("gsm8k", items, [{"task_id": "99", "completion": "1"}])


def test_every_module_of_the_registry_is_a_benchmark_named_like_its_file():
    from pathlib import Path

    import gmt_ray.eval.benchmarks as package

    modules = {p.stem for p in Path(package.__file__).parent.glob("*.py") if not p.stem.startswith("_")}
    assert modules == set(BENCHMARKS)
    for name, benchmark in BENCHMARKS.items():
        assert benchmark.name == name and benchmark.metric.startswith(name + "_")
        assert benchmark.score in ("accuracy", "pass@1")


# ---- EvalPlus's prompt format (eval.code_prompt: evalplus)

EVALPLUS_INSTRUCTION = ("Please provide a self-contained Python script that solves the following problem in a "
                        "markdown code block:")
EVALPLUS_RESPONSE = ("Below is a Python script with a self-contained function that solves the problem and passes "
                     "corresponding tests:")


def _tokenizer():
    from gmt_ray.data.tokens import train_tiny_tokenizer

    return train_tiny_tokenizer(["def add(a, b):\n    return a + b\n"] * 5, 280)


def test_evalplus_prompt_in_a_chat_template_is_evalplus_own():
    from gmt_ray.data.tokens import install_chat_format

    tokenizer = install_chat_format(_tokenizer(), "tulu")
    humaneval = get_benchmark("humaneval")
    item = humaneval.load_items(limit=1)[0]
    [prompt] = humaneval.prompts([item], tokenizer, "tulu", code_prompt="evalplus")
    # EvalPlus's make_raw_chat_prompt: the chat with the response, cut where the program goes.
    assert prompt == (f"<|bos|><|user|>\n{EVALPLUS_INSTRUCTION}\n```\n{item.prompt.strip()}\n```\n"
                      f"<|assistant|>\n{EVALPLUS_RESPONSE}\n```python\n")
    assert humaneval.stops("evalplus") == ("\n```\n", "\nif __name__", "\ndef main(", "\nprint(")
    assert humaneval.sample_field("evalplus") == "solution" and humaneval.sample_field("continue") == "completion"
    # The default: HumanEval's prompt continued as it is.
    assert humaneval.prompts([item], tokenizer, "tulu") == [item.prompt]


def test_evalplus_prompt_without_a_chat_template_is_in_the_training_template():
    from gmt_ray.data.tokens import ALPACA_TEMPLATE

    mbpp = get_benchmark("mbpp")
    items = mbpp.load_items(DATA / "mbppplus_sample.jsonl")
    [prompt, _] = mbpp.prompts(items, _tokenizer(), "alpaca", code_prompt="evalplus")
    instruction = f"{EVALPLUS_INSTRUCTION}\n```\n{items[0].prompt.strip()}\n```\n"
    assert prompt == "<|bos|>" + ALPACA_TEMPLATE.format(prompt=instruction) + f"{EVALPLUS_RESPONSE}\n```python\n"
    # A math benchmark's prompt is the same whatever the code prompt.
    gsm8k = get_benchmark("gsm8k")
    questions = gsm8k.load_items(DATA / "gsm8k_sample.jsonl")
    assert gsm8k.prompts(questions, _tokenizer(), "alpaca", code_prompt="evalplus") == gsm8k.prompts(
        questions, _tokenizer(), "alpaca")


def test_an_evalplus_answer_is_scored_as_a_whole_program():
    from gmt_ray.eval.code import program_for

    problem = get_benchmark("humaneval").problems()["HumanEval/0"]
    answer = ("from typing import List\n\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
              "    return False\n\nprint(has_close_elements([1.0], 0.5))\n")
    # As EvalPlus sanitises a solution: the program without its top-level calls, not the prompt continued.
    assert program_for(problem, solution=answer) == (
        "from typing import List\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
        "    return False\n")
