import json

import pytest
from transformers import LlamaConfig, LlamaForCausalLM

from gmt_ray.config import EvalConfig
from gmt_ray.data.tokens import train_tiny_tokenizer
from gmt_ray.eval.suite import evaluate_model


@pytest.fixture(scope="module")
def tiny():
    tokenizer = train_tiny_tokenizer(["2 + 2 = 4. #### 4", "3 + 1 = 4. #### 4"] * 20, 128)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id))
    return model, tokenizer


def test_benchmark_scores_and_rows_on_one_process(tiny, tmp_path):
    model, tokenizer = tiny
    records = [{"prompt": f"{a} + 1?", "response": f"#### {a + 1}", "answer": str(a + 1)} for a in range(5)]
    metrics = evaluate_model(model, tokenizer, EvalConfig(benchmarks=["arithmetic"], max_new_tokens=4),
                             test_records=records, template="alpaca", out_dir=tmp_path, step=7)
    assert set(metrics) == {"arithmetic_accuracy", "arithmetic_accuracy_low", "arithmetic_accuracy_high"}
    rows = [json.loads(line) for line in (tmp_path / "step7-arithmetic.jsonl").read_text().splitlines()]
    assert [r["gold"] for r in rows] == ["1", "2", "3", "4", "5"] and all(r["step"] == 7 for r in rows)


def test_lm_eval_backend_on_a_local_task(tiny, tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = tmp_path / "sums.jsonl"
    questions = [("2 + 2 =", ["4", "5"], 0), ("3 + 1 =", ["5", "4"], 1), ("1 + 1 =", ["2", "3"], 0),
                 ("2 + 1 =", ["1", "3"], 1)]
    data.write_text("".join(json.dumps({"question": q, "choices": c, "label": label}) + "\n"
                            for q, c, label in questions))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "gmt_ray_sums.yaml").write_text(
        "task: gmt_ray_sums\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {data}\ntest_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: label\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )
    model, tokenizer = tiny
    config = EvalConfig(lm_eval={"tasks": ["gmt_ray_sums"], "include_path": str(tasks), "num_fewshot": 0})
    metrics = evaluate_model(model, tokenizer, config, test_records=None, template="alpaca")
    assert set(metrics) == {"lm_eval/gmt_ray_sums/acc", "lm_eval/gmt_ray_sums/acc_stderr"}
    assert metrics["lm_eval/gmt_ray_sums/acc"] in (0.0, 0.25, 0.5, 0.75, 1.0)


@pytest.mark.skipif(not __import__("gmt_ray.eval.sandbox", fromlist=["x"]).available_isolations(),
                    reason="bubblewrap is not installed")
def test_code_benchmark_generates_runs_in_the_sandbox_and_scores(tiny, tmp_path):
    model, tokenizer = tiny
    config = EvalConfig(benchmarks=["humaneval"], max_samples=3, max_new_tokens=6)
    metrics = evaluate_model(model, tokenizer, config, test_records=None, template="alpaca", out_dir=tmp_path, step=1)
    assert metrics["humaneval_pass_at_1"] == 0.0  # a random model writes no working code
    # Wilson's interval for 0 of 3 problems: [0, z^2 / (3 + z^2)], not a certain [0, 0].
    assert metrics["humaneval_pass_at_1_low"] == 0.0
    assert metrics["humaneval_pass_at_1_high"] == pytest.approx(0.5615, abs=1e-4)
    rows = [json.loads(line) for line in (tmp_path / "step1-humaneval.jsonl").read_text().splitlines()]
    assert [r["task_id"] for r in rows] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert all(r["status"] in ("failed", "error", "timeout") and not r["correct"] for r in rows)


@pytest.mark.skipif(not __import__("gmt_ray.eval.sandbox", fromlist=["x"]).available_isolations(),
                    reason="bubblewrap is not installed")
def test_sampled_code_benchmark_reports_pass_at_10_over_every_sample(tiny, tmp_path):
    model, tokenizer = tiny
    config = EvalConfig(benchmarks=["humaneval"], max_samples=2, max_new_tokens=4,
                        sampling={"humaneval": {"samples": 10, "temperature": 0.8}})
    metrics = evaluate_model(model, tokenizer, config, test_records=None, template="alpaca", out_dir=tmp_path, step=1)
    assert set(metrics) == {"humaneval_pass_at_1", "humaneval_pass_at_1_low", "humaneval_pass_at_1_high",
                            "humaneval_pass_at_10"}
    rows = [json.loads(line) for line in (tmp_path / "step1-humaneval.jsonl").read_text().splitlines()]
    assert [r["task_id"] for r in rows].count("HumanEval/0") == 10 and len(rows) == 20
    draws = {r["completion"] for r in rows if r["task_id"] == "HumanEval/0"}
    assert len(draws) > 1  # sampled at temperature 0.8, not one greedy completion ten times


def test_each_lm_eval_task_runs_at_its_own_shot_count(tiny, tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from gmt_ray.data import standins

    names = ["gsm8k_cot", "tydiqa_goldp", "truthfulqa_mc2"]
    tasks = standins.lm_eval_tasks(names, tmp_path / "tasks")
    model, tokenizer = tiny
    options = {"tasks": names, "include_path": str(tasks), "include_defaults": False, "limit": 2}
    config = EvalConfig(lm_eval={**options, "fewshot": {"gsm8k_cot": 2, "tydiqa_goldp": 1, "truthfulqa_mc2": 0}})
    seen = []
    import lm_eval

    real = lm_eval.simple_evaluate
    monkeypatch.setattr(lm_eval, "simple_evaluate", lambda **kw: seen.append((kw["tasks"], kw["num_fewshot"])) or
                        real(**kw))
    metrics = evaluate_model(model, tokenizer, config, test_records=None, template="alpaca")
    assert sorted(seen) == [(["gsm8k_cot"], 2), (["truthfulqa_mc2"], 0), (["tydiqa_goldp"], 1)]
    # Two filters of one metric keep their names apart; a tag gets its tasks' mean.
    assert {"lm_eval/gsm8k_cot/strict-match/exact_match", "lm_eval/gsm8k_cot/flexible-extract/exact_match",
            "lm_eval/tydiqa_goldp/f1", "lm_eval/tydiqa_goldp_standin_a/f1", "lm_eval/truthfulqa_mc2/acc"} <= set(metrics)
    assert metrics["lm_eval/tydiqa_goldp/f1"] == pytest.approx(
        (metrics["lm_eval/tydiqa_goldp_standin_a/f1"] + metrics["lm_eval/tydiqa_goldp_standin_b/f1"]) / 2)
    # truthfulqa_mc2 fixes 0 shots in its own file: asking for more is refused, not silently ignored.
    refused = EvalConfig(lm_eval={**options, "tasks": ["truthfulqa_mc2"], "fewshot": {"truthfulqa_mc2": 3}})
    with pytest.raises(RuntimeError, match=r"should run with 3 shot\(s\), but lm-eval ran \{'truthfulqa_mc2': 0\}"):
        evaluate_model(model, tokenizer, refused, test_records=None, template="alpaca")


# ---------------------------------------------------------------- under FSDP (2 gloo processes)


def _lm_eval_task(directory):
    data = directory / "sums.jsonl"
    questions = [("2 + 2 =", ["4", "5"], 0), ("3 + 1 =", ["5", "4"], 1), ("1 + 1 =", ["2", "3"], 0)]
    data.write_text("".join(json.dumps({"question": q, "choices": c, "label": label}) + "\n"
                            for q, c, label in questions))
    tasks = directory / "tasks"
    tasks.mkdir(exist_ok=True)
    (tasks / "gmt_ray_sums.yaml").write_text(
        "task: gmt_ray_sums\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {data}\ntest_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: label\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    )
    return tasks


def _fsdp_eval_worker(rank, port, out_dir, model_dir):
    import os

    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    from tests.helpers import init_process_group

    init_process_group(rank, port)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    config = _fsdp_eval_config(out_dir)
    metrics = evaluate_model(model, AutoTokenizer.from_pretrained(model_dir), config, test_records=_records(),
                             template="alpaca", rank=rank, world=2, synced_gpus=True)
    torch.save(metrics, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def _fsdp_eval_config(out_dir):
    from pathlib import Path

    return EvalConfig(benchmarks=["arithmetic"], max_new_tokens=6, batch_size=2,
                      lm_eval={"tasks": ["gmt_ray_sums"], "include_path": str(Path(out_dir) / "tasks"),
                               "include_defaults": False})


def _records():
    return [{"prompt": f"{a} + 1?", "response": f"#### {a + 1}", "answer": str(a + 1)} for a in range(5)]


def test_under_fsdp_every_rank_takes_part_and_scores_match_one_process(tiny, tmp_path, monkeypatch, spawn):
    # 5 items over 2 ranks (3 and 2, and 2-item batches): a rank alone in a sharded forward would hang.
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    
    model, tokenizer = tiny
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    _lm_eval_task(tmp_path)
    sharded = spawn(_fsdp_eval_worker, tmp_path, str(tmp_path / "model"))
    alone = evaluate_model(model, tokenizer, _fsdp_eval_config(tmp_path), test_records=_records(), template="alpaca")
    assert sharded[1] == {}  # rank 0 scores
    assert set(sharded[0]) == set(alone) and "lm_eval/gmt_ray_sums/acc" in alone
    for name, value in alone.items():
        assert sharded[0][name] == pytest.approx(value), name
