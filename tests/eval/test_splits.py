"""Which problems an evaluation uses (gmt_ray.eval.splits): validation and test problems never
overlap, the held-out choice is fixed, and what the dry run says matches what is loaded."""

import json

import pytest

from gmt_ray.config import EvalConfig
from gmt_ray.eval.benchmarks import get_benchmark
from gmt_ray.eval.splits import (
    check_validation_split,
    evaluation_items,
    held_out_ids,
    score_name,
    validation_source,
)


def gsm8k_file(path, rows, ids=True):
    path.write_text("".join(json.dumps({**({"task_id": f"q{i}"} if ids else {}), "question": f"What is {i} + 1?",
                                        "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"}) + "\n" for i in rows))
    return str(path)


def evaluation(**fields):
    return EvalConfig(**{"benchmarks": ["gsm8k"], "max_samples": None, **fields})


def test_validation_and_test_problems_partition_the_test_file(tmp_path):
    data = {"gsm8k": gsm8k_file(tmp_path / "gsm8k.jsonl", range(40))}
    split = {s: evaluation(data=data, split=s, validation_size=10) for s in ("validation", "test", "all")}
    ids = {s: [item.task_id for item in evaluation_items("gsm8k", c, held_out=True)] for s, c in split.items()}
    assert len(ids["validation"]) == 10 and len(ids["test"]) == 30
    assert not set(ids["validation"]) & set(ids["test"])
    assert sorted(ids["validation"] + ids["test"]) == sorted(ids["all"])
    # A benchmark the search does not choose on keeps its whole file as test problems.
    assert len(evaluation_items("gsm8k", split["test"], held_out=False)) == 40


def test_the_held_out_problems_are_the_same_whatever_the_file_order(tmp_path):
    forward = get_benchmark("gsm8k").load_items(gsm8k_file(tmp_path / "a.jsonl", range(40)))
    backward = get_benchmark("gsm8k").load_items(gsm8k_file(tmp_path / "b.jsonl", reversed(range(40))))
    assert held_out_ids(forward, 10) == held_out_ids(backward, 10)
    assert held_out_ids(forward, 10) != {f"q{i}" for i in range(10)}  # not simply the first rows
    with pytest.raises(ValueError, match="holds out every problem of 40"):
        held_out_ids(forward, 40)


def test_a_validation_file_of_its_own_is_used_and_the_test_file_kept_whole(tmp_path):
    config = evaluation(data={"gsm8k": gsm8k_file(tmp_path / "test.jsonl", range(20))},
                        validation_data={"gsm8k": gsm8k_file(tmp_path / "dev.jsonl", range(100, 105))})
    validation = evaluation_items("gsm8k", config.model_copy(update={"split": "validation"}), held_out=True)
    test = evaluation_items("gsm8k", config.model_copy(update={"split": "test"}), held_out=True)
    assert [item.task_id for item in validation] == [f"q{i}" for i in range(100, 105)]
    assert len(test) == 20
    assert validation_source("gsm8k", config) == f"its own validation file {tmp_path / 'dev.jsonl'}"


def test_max_samples_caps_what_is_scored_and_the_dry_run_says_so(tmp_path):
    data = {"gsm8k": gsm8k_file(tmp_path / "gsm8k.jsonl", range(40))}
    config = evaluation(data=data, split="validation", validation_size=10, max_samples=4)
    assert len(evaluation_items("gsm8k", config, held_out=True)) == 4
    assert validation_source("gsm8k", config).endswith("the search scores the first 4 of them (eval.max_samples)")
    assert "eval.max_samples" not in validation_source("gsm8k", config.model_copy(update={"max_samples": 50}))
    assert score_name("gsm8k_accuracy", config) == "val_gsm8k_accuracy"
    assert score_name("gsm8k_accuracy", config.model_copy(update={"split": "test"})) == "gsm8k_accuracy"


def test_a_file_too_small_to_hold_problems_out_is_a_problem_named_before_anything_runs(tmp_path):
    config = evaluation(data={"gsm8k": gsm8k_file(tmp_path / "gsm8k.jsonl", range(8))}, validation_size=8)
    assert check_validation_split(config, "gsm8k") == [
        "eval.data.gsm8k: eval.validation_size=8 holds out every problem of 8: give it fewer "
        "(or a validation file of the benchmark's own in eval.validation_data)"]
    assert check_validation_split(config.model_copy(update={"validation_size": 4}), "gsm8k") == []
    assert check_validation_split(config, None) == []
