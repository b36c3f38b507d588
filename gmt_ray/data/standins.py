"""Stand-ins for what a paper-scale experiment loads from a hub or a cluster's storage, for
rehearsing it offline (``python -m gmt_ray.sweep EXPERIMENT.yaml --rehearse``).

Each stand-in has the shape of the real thing, so that the experiment's own column
mapping, templates, loaders and scorers run unchanged on it:

- training data: a few rows in the data set's own schema, under the columns the
  experiment names (MetaMathQA's ``query``/``response``, Magicoder's ``instruction``, Tulu
  v2's ``messages``, conversations of one or two exchanges, some with a system turn,
  UltraFeedback's ``prompt`` with ``chosen``/``rejected`` conversations);
- evaluation files in each benchmark's own format (GSM8K, MATH, MBPP, EvalPlus's);
- lm-eval tasks: for each task, group or tag the experiment names, a local one of the same
  structure, output type, metric names, filters and default shot count, with a few-shot split;
- the model: a tiny random-init model of the same architecture family (Llama, Mistral,
  Qwen2), with a byte-level BPE tokenizer trained on the stand-in text.

The contents come from the arithmetic generator: they exercise the code, they do not
measure anything.
"""

from __future__ import annotations

import json
import random
import re
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
        # Tulu v2's rows are conversations: single turns, several turns, some with a system turn.
        records = []
        for i, p in enumerate(problems):
            follow = problems[(i + 1) % len(problems)]
            turns = [{"role": "user", "content": p["prompt"]}, {"role": "assistant", "content": p["response"]}]
            if i % 3:
                turns += [{"role": "user", "content": follow["prompt"]},
                          {"role": "assistant", "content": follow["response"]}]
            if i % 3 == 2:
                turns.insert(0, {"role": "system", "content": "Answer with the working and the number."})
            records.append({data.messages_column: turns, **extra(i)})
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


def lm_eval_tasks(tasks: list[str], directory: Path, *, rows: int = 6, shots: int = 10) -> Path:
    """A directory of lm-eval task YAMLs standing in for lm-eval's own ``tasks``, each of the
    same structure as the real one (read from lm-eval's task files, which lie on disk):

    - a group stays a group of that name (with the real group's aggregate metrics), a tag a tag
      over two tasks, a task a task;
    - each stand-in task has the real (first) task's output type, metric names, filters (their
      names; a custom filter becomes ``take_first``), stop strings and default shot count, so
      the same metric names come out and the configured shot counts apply as they would;
    - its documents are ``rows`` arithmetic questions, and a few-shot split of ``shots`` more.

    A name lm-eval does not know becomes a group with one multiple-choice task.
    """
    import yaml

    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    questions = []
    for p in _problems(rows + shots, seed=2):
        answer = int(p["answer"])
        choices = [str(answer), str(answer + rng.choice([1, 2, 3]))]
        label = rng.randrange(2)
        if label:
            choices.reverse()
        questions.append({"question": p["prompt"], "answer": str(answer), "choices": choices, "label": label})
    files = {"test": str(_write_jsonl(directory / "questions.jsonl", questions[:rows])),
             "train": str(_write_jsonl(directory / "shots.jsonl", questions[rows:]))}
    real = _real_lm_eval_tasks(tasks)
    scorers = []
    for name in tasks:
        kind, leaf, aggregate = real.get(name, ("unknown", {}, None))
        members = {"tag": [f"{name}_standin_a", f"{name}_standin_b"], "task": [name]}.get(kind, [f"{name}_standin"])
        for member in members:
            config, function, scorer = _standin_task(member, leaf, files, tag=name if kind == "tag" else None)
            scorers.append(scorer)
            # A YAML tag, which safe_dump would write as a quoted string: lm-eval resolves it beside the file.
            (directory / f"{member}.yaml").write_text(yaml.safe_dump(config, sort_keys=False)
                                                      + f"process_results: !function standin_scoring.{function}\n")
        if kind in ("group", "unknown"):
            metrics = [{"metric": m["metric"], "aggregation": "mean", "weight_by_size": True}
                       for m in leaf.get("metric_list", [{"metric": "acc"}])]
            group = {"group": name, "task": members, "aggregate_metric_list": aggregate or metrics}
            (directory / f"{name}.yaml").write_text(yaml.safe_dump(group, sort_keys=False))
    (directory / "standin_scoring.py").write_text(
        '"""Scores of the stand-in tasks: the same value under each metric name of the real task."""\n\n'
        "def _score(doc, results, generates):\n"
        "    if generates:\n"
        "        return float(str(results[0]).strip() == doc['answer'])\n"
        "    return float(max(range(len(results)), key=lambda i: results[i][0]) == doc['label'])\n"
        + "".join(scorers))
    return directory


def _standin_task(name: str, leaf: dict, files: dict, *, tag: str | None) -> tuple[dict, str, str]:
    """One stand-in task's YAML config (as a dict), its scoring function's name and source."""
    output_type = leaf.get("output_type", "multiple_choice")
    generates = output_type == "generate_until"
    metrics = [m["metric"] for m in leaf.get("metric_list", [{"metric": "acc"}])]
    function = "scores_" + re.sub(r"\W", "_", name)
    config: dict[str, Any] = {
        "task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": files},
        "test_split": "test", "fewshot_split": "train", "fewshot_config": {"sampler": "first_n"},
        "output_type": "generate_until" if generates else "multiple_choice",
        "doc_to_text": "Q: {{question}}\nA:",
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in metrics],
    }
    if tag:
        config["tag"] = tag
    if leaf.get("num_fewshot") is not None:
        config["num_fewshot"] = leaf["num_fewshot"]
    if generates:
        until = (leaf.get("generation_kwargs") or {}).get("until") or ["\n\n"]
        config.update(doc_to_target="{{answer}}", target_delimiter=" ",
                      generation_kwargs={"until": until, "do_sample": False, "max_gen_toks": 16})
    else:
        config.update(doc_to_choice="{{choices}}", doc_to_target="label")
    filters = [{"name": f["name"], "filter": [step if isinstance(step.get("function"), str)
                                              and step["function"] in _LM_EVAL_FILTERS else {"function": "take_first"}
                                              for step in f.get("filter", [])] or [{"function": "take_first"}]}
               for f in leaf.get("filter_list") or [] if isinstance(f, dict) and "name" in f]
    if filters:
        config["filter_list"] = filters
    scorer = (f"\n\ndef {function}(doc, results):\n"
              f"    score = _score(doc, results, {generates})\n"
              f"    return {{name: score for name in {metrics!r}}}\n")
    return config, function, scorer


# lm-eval's built-in filters a stand-in may copy (their names in its filter registry).
_LM_EVAL_FILTERS = ("regex", "take_first", "lowercase", "uppercase", "remove_whitespace", "majority_vote",
                    "take_first_k", "multi_choice_regex")


def _real_lm_eval_tasks(names: list[str]) -> dict[str, tuple[str, dict, list | None]]:
    """For each name lm-eval's own task files define: ``(kind, config of its first task, group
    aggregate list)``, kind ``group``, ``tag`` or ``task``. Read from the files on disk: only the
    directories that mention the names are indexed (indexing all of them takes seconds)."""
    try:
        import lm_eval.tasks
    except ImportError:
        return {}
    root = Path(lm_eval.tasks.__file__).parent
    sources = {path: path.read_text(errors="ignore") for path in root.glob("**/*yaml") if path.is_file()}
    kinds = {"GROUP": "group", "TAG": "tag"}
    found: dict[str, tuple[str, dict, list | None]] = {}
    for name in names:
        kind, aggregate, wanted = None, None, name
        for _ in range(6):  # a group's first member may be a group or a tag of its own
            entry, members = _index_entry(wanted, sources)
            if entry is None:
                break
            if kind is None:
                kind = kinds.get(entry.kind.name, "task")
                aggregate = entry.cfg.get("aggregate_metric_list") if kind == "group" else None
            if entry.kind.name == "GROUP":
                first = entry.cfg["task"][0]
                wanted = first["task"] if isinstance(first, dict) else first
                continue
            if entry.kind.name == "TAG":
                entry = members[0]
            found[name] = (kind, dict(entry.cfg or {}), aggregate)
            break
    return found


def _index_entry(name: str, sources: dict[Path, str]) -> tuple[Any, list]:
    """lm-eval's index entry for ``name`` and, for a tag, its member tasks' entries, from an
    index of just the directories whose task files mention it; (None, []): no such task."""
    import logging

    from lm_eval.tasks import TaskManager

    pattern = re.compile(rf"^\s*(?:-\s*|(?:group|task|tag)\s*:\s*\[?\s*)['\"]?{re.escape(name)}['\"]?\s*\]?\s*$", re.M)
    dirs = sorted({path.parent for path, text in sources.items() if pattern.search(text)})
    dirs = [d for d in dirs if not any(other in d.parents for other in dirs)]  # a parent indexes its children
    if not dirs:
        return None, []
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)  # the index warns of tasks that sibling directories define twice
    try:
        index = TaskManager(include_path=[str(d) for d in dirs], include_defaults=False).task_index
    finally:
        logger.setLevel(level)
    entry = index.get(name)
    members = [e for e in index.values() if name in e.tags and e.cfg] if entry is not None else []
    if entry is not None and entry.kind.name == "TAG" and not members:
        return None, []
    return entry, members


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
