"""Stand-ins have the shape of what they stand for: the project's own loaders and scorers
read them exactly as they read the real files."""

import pytest

from gmt_ray.config import DataConfig
from gmt_ray.data import standins
from gmt_ray.data.sources import load_records
from gmt_ray.eval.benchmarks import get_benchmark


@pytest.mark.parametrize("data, kind, check", [
    (DataConfig(source="hub", path="meta-math/MetaMathQA", prompt_column="query", response_column="response"), "sft",
     lambda row: set(row) == {"query", "response", "type", "original_question"}),
    (DataConfig(source="hub", path="ise-uiuc/Magicoder-Evol-Instruct-110K", prompt_column="instruction"), "sft",
     lambda row: set(row) == {"instruction", "response"}),
    (DataConfig(source="hub", path="allenai/tulu-v2-sft-mixture", messages_column="messages"), "sft",
     lambda row: row["messages"][-1]["role"] == "assistant" and {"dataset", "id"} <= set(row)),
    (DataConfig(source="hub", path="HuggingFaceH4/ultrafeedback_binarized"), "preference",
     lambda row: isinstance(row["chosen"], list) and row["chosen"][-1]["role"] == "assistant"),
])
def test_training_rows_come_in_the_data_sets_own_columns(tmp_path, data, kind, check):
    import json

    path = standins.training_file(data, tmp_path, preference=kind == "preference", rows=40)
    first = json.loads(path.read_text().splitlines()[0])
    assert check(first), first
    records = load_records(data.model_copy(update={"source": "file", "path": str(path)}), kind)
    assert len(records["train"]) + len(records["validation"]) == 40


@pytest.mark.parametrize("benchmark", ["gsm8k", "math", "mbpp", "mbpp_plus_tests", "humaneval_plus_tests"])
def test_evaluation_files_load_and_score_as_their_benchmark(tmp_path, benchmark):
    path = standins.eval_file(benchmark, tmp_path)
    spec = get_benchmark(benchmark)
    items = spec.load_items(path)
    assert len(items) >= 4
    if not spec.executes_code:
        right = [{"task_id": item.task_id, "completion": f"#### {item.gold}" if benchmark == "gsm8k"
                  else f"\\boxed{{{item.gold}}}"} for item in items]
        assert all(row["correct"] for row in spec.score_samples(items, right))


def test_code_stand_ins_pass_with_their_solutions_and_fail_without(tmp_path):
    from gmt_ray.eval.sandbox import Sandbox, available_isolations

    if not available_isolations():
        pytest.skip("bubblewrap is not installed")
    for benchmark in ("mbpp", "mbpp_plus_tests", "humaneval_plus_tests"):
        path = standins.eval_file(benchmark, tmp_path / benchmark)
        spec = get_benchmark(benchmark)
        problems = spec.problems(path)
        solutions = [{"task_id": t, "solution": p.canonical_solution if "def " in p.canonical_solution
                      else p.prompt + p.canonical_solution} for t, p in problems.items()]
        wrong = [{"task_id": t, "solution": f"def {p.entry_point}(*args):\n    return None\n"} for t, p in problems.items()]
        rows = spec.score_samples(spec.load_items(path), solutions + wrong, sandbox=Sandbox("auto"), data_path=path)
        assert [r["correct"] for r in rows] == [True] * len(problems) + [False] * len(problems), benchmark


@pytest.mark.parametrize("name, family", [("mistralai/Mistral-7B-v0.1", "mistral"), ("meta-llama/Llama-2-7b-hf", "llama"),
                                          ("deepseek-ai/deepseek-coder-6.7b-base", "llama"), ("Qwen/Qwen2-7B", "qwen2")])
def test_a_stand_in_model_is_of_the_same_family_and_built_once(tmp_path, name, family):
    from transformers import AutoConfig, AutoTokenizer

    assert standins.model_family(name) == family
    directory = standins.model_dir(family, tmp_path)
    assert AutoConfig.from_pretrained(directory).model_type == family
    assert len(AutoTokenizer.from_pretrained(directory)) <= 512
    stamp = (directory / "config.json").stat().st_mtime_ns
    assert standins.model_dir(family, tmp_path) == directory and (directory / "config.json").stat().st_mtime_ns == stamp


def test_lm_eval_stand_ins_are_groups_of_the_names_the_experiment_gives(tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gmt_ray.config import EvalConfig
    from gmt_ray.eval.suite import lm_eval_scores

    directory = standins.lm_eval_tasks(["mmlu", "truthfulqa_mc2"], tmp_path / "tasks")
    model_dir = standins.model_dir("llama", tmp_path / "models")
    config = EvalConfig(lm_eval={"tasks": ["mmlu", "truthfulqa_mc2"], "include_path": str(directory),
                                 "include_defaults": False, "limit": 3})
    scores = lm_eval_scores(AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir),
                            config)
    assert {"lm_eval/mmlu/acc", "lm_eval/truthfulqa_mc2/acc"} <= set(scores)


def test_lm_eval_stand_ins_mirror_the_structure_of_lm_evals_own_tasks(tmp_path):
    pytest.importorskip("lm_eval")
    import yaml

    names = ["mmlu", "gsm8k_cot", "bbh_cot_fewshot", "tydiqa_goldp", "truthfulqa_mc2", "not_an_lm_eval_task"]
    directory = standins.lm_eval_tasks(names, tmp_path)

    def read(name):  # the !function tag is lm-eval's; plain YAML reads the rest
        return yaml.safe_load((directory / f"{name}.yaml").read_text().replace("!function ", ""))

    gsm8k = read("gsm8k_cot")  # a task stays a task: 8-shot chain of thought, both of its filters
    assert gsm8k["output_type"] == "generate_until" and gsm8k["num_fewshot"] == 8
    assert [f["name"] for f in gsm8k["filter_list"]] == ["strict-match", "flexible-extract"]
    assert gsm8k["generation_kwargs"]["until"] == ["Q:", "</s>", "<|im_end|>"]
    bbh = read("bbh_cot_fewshot")  # a group stays a group, with the real group's aggregate
    assert bbh["task"] == ["bbh_cot_fewshot_standin"] and bbh["aggregate_metric_list"][0]["filter_list"] == "get-answer"
    assert read("bbh_cot_fewshot_standin")["num_fewshot"] == 3
    tydiqa = [read(f"tydiqa_goldp_standin_{x}") for x in "ab"]  # a tag over two tasks, F1 and exact match
    assert all(t["tag"] == "tydiqa_goldp" and [m["metric"] for m in t["metric_list"]] == ["exact_match", "f1"]
               for t in tydiqa)
    assert read("truthfulqa_mc2")["output_type"] == "multiple_choice" and read("truthfulqa_mc2")["num_fewshot"] == 0
    assert read("mmlu")["aggregate_metric_list"] == [{"metric": "acc", "weight_by_size": True}]
    assert read("not_an_lm_eval_task")["task"] == ["not_an_lm_eval_task_standin"]
