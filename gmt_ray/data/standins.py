"""Stand-ins for what a paper-scale experiment loads from a hub or a cluster's storage, for
rehearsing it offline (``python -m gmt_ray.sweep EXPERIMENT.yaml --rehearse``).

Each stand-in has the shape of the real thing, so that the experiment's own column
mapping, templates, loaders and scorers run unchanged on it:

- training data: a few rows in the data set's own schema, under the columns the
  experiment names (MetaMathQA's ``query``/``response``, Magicoder's ``instruction``, Tulu
  v2's ``messages``, UltraFeedback's ``prompt`` with ``chosen``/``rejected`` conversations);
- evaluation files in each benchmark's own format (GSM8K, MATH, MBPP, EvalPlus's);
- lm-eval tasks: for each task or group the experiment names, a local group of that name
  with one multiple-choice subtask;
- the model: a tiny random-init model of the same architecture family (Llama, Mistral,
  Qwen2), with a byte-level BPE tokenizer trained on the stand-in text.

The contents come from the arithmetic generator: they exercise the code, they do not
measure anything.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from gmt_ray.config import DataConfig
from gmt_ray.data.arithmetic import generate_arithmetic, preference_pairs

__all__ = ["eval_file", "lm_eval_tasks", "model_dir", "model_family", "training_file"]

# Columns a data set has beside the ones an experiment maps, so that the stand-in row is the
# real row's shape (a loader that chokes on an extra column shows up in the rehearsal).
_EXTRA_COLUMNS = {
    "meta-math/MetaMathQA": lambda i: {"type": "GSM_Rephrased", "original_question": f"question {i}"},
    "ise-uiuc/Magicoder-Evol-Instruct-110K": lambda i: {},
    "allenai/tulu-v2-sft-mixture": lambda i: {"dataset": "flan_v2", "id": f"flan_v2_{i}"},
    "HuggingFaceH4/ultrafeedback_binarized": lambda i: {"prompt_id": f"{i:064x}", "score_chosen": 8.0,
                                                        "score_rejected": 5.0},
}


def _problems(count: int, seed: int = 0) -> list[dict[str, str]]:
    return generate_arithmetic(count, 0, 0, max_ops=2, max_number=9, seed=seed)["train"]


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def training_file(data: DataConfig, directory: Path, *, preference: bool, rows: int = 160) -> Path:
    """A JSONL of ``rows`` stand-in rows under the columns ``data`` maps."""
    extra = _EXTRA_COLUMNS.get(data.path or "", lambda i: {})
    problems = _problems(rows)
    records = []
    if preference:
        for i, pair in enumerate(preference_pairs(problems)):
            record = {data.prompt_column: pair["prompt"], **extra(i)}
            for column, text in ((data.chosen_column, pair["chosen"]), (data.rejected_column, pair["rejected"])):
                # UltraFeedback-binarized stores each response as the whole conversation.
                record[column] = [{"role": "user", "content": pair["prompt"]}, {"role": "assistant", "content": text}]
            records.append(record)
    elif data.messages_column:
        records = [{data.messages_column: [{"role": "user", "content": p["prompt"]},
                                           {"role": "assistant", "content": p["response"]}], **extra(i)}
                   for i, p in enumerate(problems)]
    else:
        records = [{data.prompt_column: p["prompt"], data.response_column: p["response"], **extra(i)}
                   for i, p in enumerate(problems)]
    return _write_jsonl(directory / f"{(data.path or 'data').replace('/', '__')}.jsonl", records)


# Small programs with inputs and outputs: the stand-in code problems.
_CODE = [
    ("add", "def add(a, b):\n    return a + b\n", "Write a function to add two integers.", [[1, 2], [0, 0], [-3, 5]]),
    ("square", "def square(x):\n    return x * x\n", "Write a function to square a number.", [[3], [0], [-4]]),
    ("reverse", "def reverse(s):\n    return s[::-1]\n", "Write a function to reverse a string.", [["abc"], [""], ["ab"]]),
    ("is_even", "def is_even(n):\n    return n % 2 == 0\n", "Write a function to check whether a number is even.",
     [[2], [7], [0]]),
]
# The helper EvalPlus generates into each expanded test (how gmt_ray.eval.code recognises them).
_EVALPLUS_HELPER = (
    "def assertion(out, exp, atol):\n"
    "    assert out == exp if atol == 0 else abs(out - exp) <= atol\n"
)


def _expected(code: str, name: str, inputs: list) -> list:
    namespace: dict[str, Any] = {}
    exec(code, namespace)  # noqa: S102 - the stand-in's own canonical solutions
    return [namespace[name](*args) for args in inputs]


def eval_file(benchmark: str, directory: Path) -> Path:
    """A JSONL in the format of ``benchmark`` (one that reads its problems from a file)."""
    rows: list[dict[str, Any]] = []
    if benchmark in ("gsm8k", "math"):
        for p in _problems(8, seed=1):
            if benchmark == "gsm8k":
                rows.append({"question": p["prompt"], "answer": p["response"]})
            else:
                work = p["response"].rsplit("\n#### ", 1)[0]
                rows.append({"problem": p["prompt"], "solution": f"{work} The answer is $\\boxed{{{p['answer']}}}$."})
    for task_id, (name, code, text, inputs) in enumerate(_CODE, 1):
        calls = [f"{name}({', '.join(map(repr, args))})" for args in inputs]
        outputs = _expected(code, name, inputs)
        asserts = [f"assert {call} == {output!r}" for call, output in zip(calls, outputs)]
        plus = (_EVALPLUS_HELPER + f"\ninputs = {inputs!r}\nresults = {outputs!r}\n"
                f"for inp, exp in zip(inputs, results):\n    assertion({name}(*inp), exp, 0)\n")
        if benchmark == "mbpp":
            rows.append({"task_id": task_id, "text": text, "code": code, "test_list": asserts,
                         "test_setup_code": "", "challenge_test_list": []})
        elif benchmark == "mbpp_plus_tests":
            rows.append({"task_id": task_id, "prompt": text, "code": code, "source_file": "stand-in",
                         "test_imports": [], "test_list": asserts[:1], "test": plus})
        elif benchmark == "humaneval_plus_tests":
            signature = code.splitlines()[0]
            rows.append({"task_id": f"HumanEval/{task_id}", "prompt": f'{signature}\n    """{text}"""\n',
                         "entry_point": name, "canonical_solution": "\n".join(code.splitlines()[1:]) + "\n",
                         "test": plus.replace(f"assertion({name}(", "assertion(candidate(")
                         .replace("for inp", "def check(candidate):\n  for inp").replace("\n    assertion", "\n    assertion")})
    if not rows:
        raise ValueError(f"no stand-in for benchmark {benchmark!r}")
    return _write_jsonl(directory / f"{benchmark}.jsonl", rows)


def lm_eval_tasks(tasks: list[str], directory: Path) -> Path:
    """A directory of lm-eval task YAMLs: for each name, a group of that name with one
    multiple-choice subtask over a few arithmetic questions."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    questions = []
    for p in _problems(6, seed=2):
        answer = int(p["answer"])
        choices = [str(answer), str(answer + rng.choice([1, 2, 3]))]
        label = rng.randrange(2)
        if label:
            choices.reverse()
        questions.append({"question": p["prompt"], "choices": choices, "label": label})
    data = _write_jsonl(directory / "questions.jsonl", questions)
    for task in tasks:
        subtask = f"{task}_standin"
        (directory / f"{subtask}.yaml").write_text(
            f"task: {subtask}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            "test_split: test\noutput_type: multiple_choice\n"
            'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: label\n'
            "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        )
        (directory / f"{task}.yaml").write_text(
            f"group: {task}\ntask:\n  - {subtask}\naggregate_metric_list:\n"
            "  - metric: acc\n    aggregation: mean\n    weight_by_size: true\n"
        )
    return directory


# Architecture families by the name of a model, for a stand-in of the same kind.
_FAMILIES = (("mistral", "mistral"), ("qwen", "qwen2"), ("llama", "llama"), ("deepseek-coder", "llama"))


def model_family(name: str) -> str:
    """``llama``, ``mistral`` or ``qwen2``: what kind of model ``name`` is (Llama for the unknown)."""
    lowered = name.lower()
    return next((family for key, family in _FAMILIES if key in lowered), "llama")


def model_dir(family: str, directory: Path) -> Path:
    """A tiny random-init model of ``family`` saved with its tokenizer (built once, then reused:
    rehearsals of experiments that hand models to each other share it)."""
    target = directory / family
    if (target / "config.json").exists() and (target / "tokenizer.json").exists():
        return target
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from gmt_ray.data.tokens import train_tiny_tokenizer

    texts = [p["prompt"] + " " + p["response"] for p in _problems(400, seed=3)]
    texts += [code + text for _, code, text, _ in _CODE] * 20
    tokenizer = train_tiny_tokenizer(texts, 512)
    config = AutoConfig.for_model(
        family, vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
    staging = directory / f".{family}.partial"
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    staging.rename(target)  # whole or not at all: a rehearsal killed mid-write leaves no half model
    return target
