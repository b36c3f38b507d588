"""An experiment's evaluation of a model in training: every configured benchmark, and
lm-eval tasks, with per-sample rows written to a directory and metrics returned.

Called by the recipe on every Ray Train worker (generation is sharded across ranks and
gathered on rank 0, which scores); it knows torch.distributed, not Ray.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch.distributed as dist

from gmt_ray.config import EvalConfig
from gmt_ray.eval.tasks import CODE_BENCHMARKS, generate_samples, load_items, score, summarize
from gmt_ray.metrics import INTERVAL_SUFFIXES, benchmark_metric

__all__ = ["evaluate_model", "lm_eval_scores"]


def evaluate_model(model, tokenizer, config: EvalConfig, *, test_records: list[dict] | None, template: str,
                   rank: int = 0, world: int = 1, out_dir: str | Path | None = None, step: int = 0,
                   synced_gpus: bool = False) -> dict[str, float]:
    """``{benchmark}_{accuracy|pass_at_1}`` with ``_low``/``_high`` bounds and ``lm_eval/...`` scores
    on rank 0 (other ranks return {}); per-sample rows go to ``out_dir/step{N}-{benchmark}.jsonl``."""
    metrics: dict[str, float] = {}
    for benchmark in config.benchmarks:
        items = load_items(benchmark, config.data.get(benchmark), records=test_records, limit=config.max_samples)
        mine = items[rank::world]
        samples = generate_samples(
            model, tokenizer, benchmark, mine, max_new_tokens=config.max_new_tokens, batch_size=config.batch_size,
            template=template, synced_gpus=synced_gpus,
        )
        if world > 1:
            gathered: list[Any] = [None] * world if rank == 0 else None
            dist.gather_object(samples, gathered, dst=0)
            samples = [s for part in (gathered or []) for s in part]
        if rank != 0:
            continue
        sandbox = None
        if benchmark in CODE_BENCHMARKS:
            from gmt_ray.eval.sandbox import Sandbox

            sandbox = Sandbox(config.isolation, allow_unisolated=config.allow_unisolated)
            print(f"{benchmark}: running model-written code with isolation: {sandbox.describe()}", file=sys.stderr)
        rows = score(benchmark, items, samples, sandbox=sandbox, data_path=config.data.get(benchmark))
        summary = summarize(benchmark, rows)
        name = "pass@1" if benchmark in CODE_BENCHMARKS else "accuracy"
        for suffix in ("", *INTERVAL_SUFFIXES):
            metrics[benchmark_metric(benchmark) + suffix] = summary[name + suffix]
        if out_dir is not None:
            path = Path(out_dir) / f"step{step}-{benchmark}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w") as file:
                for row in rows:
                    file.write(json.dumps({"step": step, **row}) + "\n")
    if config.lm_eval.tasks and rank == 0:
        metrics.update(lm_eval_scores(model, tokenizer, config))
    return metrics


def lm_eval_scores(model, tokenizer, config: EvalConfig) -> dict[str, float]:
    """lm-evaluation-harness on an in-memory model: ``lm_eval/<task>/<metric>`` for each
    numeric metric it reports (the filter name dropped, stderr kept as ``..._stderr``)."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as error:
        raise RuntimeError(f"eval.lm_eval.tasks needs the lm-eval package and what it imports ({error}): "
                           "pip install 'gmt-ray[lm-eval]'") from error
    options = config.lm_eval
    was_training = model.training
    model.eval()
    try:
        results = lm_eval.simple_evaluate(
            model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=options.batch_size),
            tasks=list(options.tasks), num_fewshot=options.num_fewshot, limit=options.limit,
            task_manager=TaskManager(include_path=options.include_path), log_samples=False,
        )
    finally:
        model.train(was_training)
    scores = {}
    for task, values in results["results"].items():
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("alias", "sample_len"):
                metric = key.split(",")[0]
                scores[f"lm_eval/{task}/{metric}"] = float(value)
    return scores
