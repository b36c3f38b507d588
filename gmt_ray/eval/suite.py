"""An experiment's evaluation of a model in training: every configured benchmark, and
lm-eval tasks, with per-sample rows written to a directory and metrics returned.

Called by the recipe on every Ray Train worker: generation is sharded across ranks and
gathered on rank 0, which scores. Under FSDP every forward is a collective, so every
rank takes part in every step of it: shards are padded to the same length, and lm-eval
runs on rank 0 over a full copy of the model gathered from all ranks. It knows
torch.distributed, not Ray.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from gmt_ray.config import EvalConfig
from gmt_ray.eval.benchmarks import get_benchmark
from gmt_ray.eval.generate import generate_samples
from gmt_ray.eval.splits import evaluation_items, score_name
from gmt_ray.names import INTERVAL_SUFFIXES, LM_EVAL_PREFIX, pass_at_ks, pass_at_metric

__all__ = ["evaluate_model", "lm_eval_scores", "shard", "unsharded_copy"]


def shard(items: list, rank: int, world: int) -> tuple[list, int]:
    """This rank's share of ``items`` (every ``world``-th, from ``rank``), padded by repeating
    its last item so that every rank holds the same number; returns (share, real count)."""
    mine = items[rank::world]
    per_rank = -(-len(items) // world)
    return mine + [mine[-1] if mine else items[0]] * (per_rank - len(mine)), len(mine)


def evaluate_model(model, tokenizer, config: EvalConfig, *, test_records: list[dict] | None, template: str,
                   rank: int = 0, world: int = 1, out_dir: str | Path | None = None, step: int = 0,
                   synced_gpus: bool = False, validation_records: list[dict] | None = None,
                   chosen_on: str | None = None) -> dict[str, float]:
    """``<benchmark>_<score>`` with ``_low``/``_high`` bounds and ``lm_eval/...`` scores on
    rank 0 (other ranks return {}); per-sample rows go to ``out_dir/step{N}-{benchmark}.jsonl``.
    On the validation problems (``config.split``, ``splits.py``) only ``chosen_on`` is
    evaluated, its scores ``val_...``, its rows in ``step{N}-val_{benchmark}.jsonl``; lm-eval's
    tasks, fixed test sets that cannot be split, run on the test problems only.

    Args:
        synced_gpus: the model is sharded (FSDP): every rank runs every forward.
        validation_records: the generated data's validation problems (arithmetic).
        chosen_on: the benchmark a sweep's search chooses on (``Experiment.chosen_on``).
    """
    metrics: dict[str, float] = {}
    validation = config.split == "validation"
    for name in config.benchmarks:
        if validation and name != chosen_on:
            continue
        benchmark = get_benchmark(name)
        items = evaluation_items(name, config, test_records=test_records, validation_records=validation_records,
                                 held_out=name == chosen_on)
        mine, real = shard(items, rank, world)
        sampling = config.samples(name)
        samples = generate_samples(
            model, tokenizer, benchmark, mine, n=sampling.samples, temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_new_tokens=config.max_new_tokens, batch_size=config.batch_size, template=template,
            code_prompt=config.code_prompt, seed=rank, synced_gpus=synced_gpus,
        )
        # Each draw covers this rank's whole share, padding included: keep the real items of each.
        per_draw = len(mine)
        samples = [s for draw in range(sampling.samples) for s in samples[draw * per_draw : draw * per_draw + real]]
        if world > 1:
            gathered: list[Any] = [None] * world if rank == 0 else None
            dist.gather_object(samples, gathered, dst=0)
            samples = [s for part in (gathered or []) for s in part]
        if rank != 0:
            continue
        sandbox = None
        if benchmark.executes_code:
            from gmt_ray.eval.sandbox import Sandbox

            sandbox = Sandbox(config.isolation, allow_unisolated=config.allow_unisolated)
            print(f"{name}: running model-written code with isolation: {sandbox.describe()}", file=sys.stderr)
        rows = benchmark.score_samples(items, samples, sandbox=sandbox, data_path=config.data.get(name))
        ks = pass_at_ks(sampling.samples) if benchmark.executes_code else (1,)
        summary = benchmark.summarize(rows, ks)
        for suffix in ("", *INTERVAL_SUFFIXES):
            metrics[score_name(benchmark.metric, config) + suffix] = summary[benchmark.score + suffix]
        for k in ks[1:]:  # pass@10 and up, by the unbiased estimator over each problem's samples
            metrics[score_name(pass_at_metric(name, k), config)] = summary[f"pass@{k}"]
        if out_dir is not None:
            path = Path(out_dir) / f"step{step}-{'val_' if validation else ''}{name}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w") as file:
                for row in rows:
                    file.write(json.dumps({"step": step, **row}) + "\n")
    if config.lm_eval.tasks and not validation:
        if synced_gpus:
            full = unsharded_copy(model, rank)  # collective: every rank takes part in the gather
            if rank == 0:
                metrics.update(lm_eval_scores(full, tokenizer, config))
            del full
            if dist.is_initialized():
                dist.barrier()
        elif rank == 0:
            metrics.update(lm_eval_scores(model, tokenizer, config))
    return metrics


def unsharded_copy(model, rank: int):
    """On rank 0, a plain (unsharded) copy of an FSDP-sharded transformers model, in the
    dtype it computes in, on its device; None on the other ranks. Every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank != 0:
        return None
    device = next(p.device for p in model.parameters())
    with torch.device("meta"):
        copy = type(model)(model.config)
    copy.load_state_dict(state, assign=True)
    # Buffers (rotary frequencies and the like) are not in the state dict, and FSDP does not
    # shard them: every rank's model holds them whole.
    for name, buffer in model.named_buffers():
        owner, _, attribute = name.rpartition(".")
        copy.get_submodule(owner)._buffers[attribute] = buffer.detach().clone()
    return copy.to(device).eval()


def lm_eval_scores(model, tokenizer, config: EvalConfig) -> dict[str, float]:
    """lm-evaluation-harness on an in-memory model: ``lm_eval/<task>/<metric>`` for each
    numeric metric it reports (``lm_eval/<task>/<filter>/<metric>`` where a task reports a metric
    under several filters, as gsm8k_cot's strict-match and flexible-extract; stderr kept as
    ``..._stderr``), and for a tag (tydiqa_goldp) the unweighted mean over its tasks.

    Each task runs at its own shot count (``eval.lm_eval.fewshot``): one harness run per count.

    Raises:
        RuntimeError: lm-eval is not installed, or it ran a task at another shot count than
            configured (a task that pins its count in its own file ignores a requested one).
    """
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as error:
        raise RuntimeError(f"eval.lm_eval.tasks needs the lm-eval package and what it imports ({error}): "
                           "pip install 'gmt-ray[lm-eval]'") from error
    options = config.lm_eval
    manager = TaskManager(include_path=options.include_path, include_defaults=options.include_defaults)
    runs: dict[int | None, list[str]] = {}
    for task in options.tasks:
        runs.setdefault(options.shots(task), []).append(task)
    was_training = model.training
    model.eval()
    scores: dict[str, float] = {}
    try:
        harness_model = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=options.batch_size)
        for shots, tasks in runs.items():
            chat = dict(apply_chat_template=True, fewshot_as_multiturn=options.fewshot_as_multiturn) \
                if options.apply_chat_template else {}
            results = lm_eval.simple_evaluate(model=harness_model, tasks=tasks, num_fewshot=shots, limit=options.limit,
                                              task_manager=manager, log_samples=False, **chat)
            if shots is not None:
                ignored = {task: n for task, n in results.get("n-shot", {}).items()
                           if task in results["results"] and n != shots and task not in results.get("groups", {})}
                if ignored:
                    raise RuntimeError(f"eval.lm_eval: {', '.join(tasks)} should run with {shots} shot(s), but lm-eval "
                                       f"ran {ignored} (a task whose own file fixes its shot count ignores another)")
            scores.update(_named_scores(results["results"]))
            scores.update(_tag_means(results["results"], tasks, manager))
    finally:
        model.train(was_training)
    return scores


def _named_scores(results: dict[str, dict]) -> dict[str, float]:
    """``lm_eval/<task>/<metric>`` from lm-eval's ``{task: {"<metric>,<filter>": value}}``; the
    filter joins the name only where the task reports the metric under several."""
    scores = {}
    for task, values in results.items():
        numeric = {key: float(value) for key, value in values.items()
                   if "," in key and isinstance(value, (int, float)) and not isinstance(value, bool)}
        filters: dict[str, set[str]] = {}
        for key in numeric:
            metric, _, filter_name = key.partition(",")
            filters.setdefault(metric.removesuffix("_stderr"), set()).add(filter_name)
        for key, value in numeric.items():
            metric, _, filter_name = key.partition(",")
            several = len(filters[metric.removesuffix("_stderr")]) > 1
            scores[f"{LM_EVAL_PREFIX}{task}/" + (f"{filter_name}/{metric}" if several else metric)] = value
    return scores


def _tag_means(results: dict[str, dict], requested: list[str], manager) -> dict[str, float]:
    """For each requested tag (lm-eval reports no aggregate for a tag): each metric's unweighted
    mean over the tag's tasks, as open-instruct averages TyDiQA's languages."""
    means = {}
    for tag in requested:
        if tag not in manager.all_tags:
            continue
        members = [task for task in results if tag in getattr(manager.task_index.get(task), "tags", ())]
        per_task = [_named_scores({"t": results[task]}) for task in members]
        for key in set.intersection(*(set(scores) for scores in per_task)) if per_task else ():
            if not key.endswith("_stderr"):
                metric = key.removeprefix(f"{LM_EVAL_PREFIX}t/")
                means[f"{LM_EVAL_PREFIX}{tag}/{metric}"] = sum(scores[key] for scores in per_task) / len(per_task)
    return means
