"""A paper-scale experiment's whole pipeline at toy scale, before anyone pays for it:
``python -m gmt_ray.sweep EXPERIMENT.yaml --rehearse``.

The rehearsal runs the experiment's own code path: its objective, its ``train.parallelism``
(FSDP stays FSDP: over 2 CPU workers on gloo where there is no GPU), every evaluation
benchmark and lm-eval task, one trial per method (at the file's first mask ratio), a
checkpoint and a resume from it, the exported models, the MLflow logging and the report;
each trial takes a few optimizer steps and evaluates a few samples. Where the hub cannot
be reached it says so and substitutes stand-ins of the same shape (``gmt_ray.data.standins``),
as it does for evaluation files this machine lacks.

Its runs go to the experiment's own MLflow store under the experiment ``<name>-rehearsal``,
its files under ``<storage_path>/<name>-rehearsal`` (``./runs`` when the file's storage is
not writable here); a new rehearsal replaces the previous one of the same file.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gmt_ray.config import ConfigError, Experiment, load_experiment, with_overrides
from gmt_ray.data import standins
from gmt_ray.errors import UsageError
from gmt_ray.preflight import check_storage, preflight

__all__ = ["Rehearsal", "rehearsal_config", "rehearse"]

REHEARSAL_SUFFIX = "-rehearsal"


@dataclass
class Stage:
    name: str
    did: str
    seconds: float
    ok: bool = True


@dataclass
class Rehearsal:
    """What a rehearsal did, stage by stage, and what the real run will cost."""

    experiment: str
    stages: list[Stage] = field(default_factory=list)
    substitutions: list[str] = field(default_factory=list)
    estimate: str = ""

    @property
    def ok(self) -> bool:
        return all(stage.ok for stage in self.stages)


def rehearse(path: str | Path, overrides: list[str] | None = None, *, address: str | None = None,
             console=None, verbose: bool = False) -> Rehearsal:
    """Rehearses the experiment file at ``path`` (see the module docstring).

    Raises:
        UsageError: the experiment file itself is bad (config errors, a missing file).
    """
    from gmt_ray.cluster import ray_session
    from gmt_ray.sweep.driver import run_sweep
    from gmt_ray.sweep.plan import describe_plan

    path = Path(path)
    try:
        original = load_experiment(path, overrides)
    except ConfigError as error:
        raise UsageError(f"invalid configuration\n{error}") from None
    report = Rehearsal(experiment=original.name)
    say = console.note if console is not None else print

    started = time.perf_counter()
    _rehearse_what_it_starts_from(original, path, address=address, console=console, verbose=verbose)
    config, notes = rehearsal_config(original)
    report.substitutions = notes
    for note in notes:
        say(f"rehearsal: {note}")
    checked = preflight(config, hub=False, sweep=True)  # what it cannot reach is substituted
    plan = describe_plan(original)
    estimate = plan["estimate"]
    expected = estimate.get("expected", {})
    report.estimate = (f"{plan['trials']} trials of {original.train.max_steps} steps"
                       + (f", ~{estimate['gpu_hours_total']} GPU-hours on {estimate['gpu_type']} at "
                          f"{estimate['assumed_mfu']:.0%} MFU" if "gpu_hours_total" in estimate else "")
                       + (f" at most (expected: ~{expected['packed']['gpu_hours_total']} packed, "
                          f"~{expected['padded']['gpu_hours_total']} padded)"
                          if "gpu_hours_total" in expected.get("packed", {}) else ""))
    report.stages.append(Stage("inputs", f"{len(notes)} substitution(s); data, tokenizer and evaluation files "
                               "loaded and checked", time.perf_counter() - started))

    with ray_session(address, verbose=verbose, say=say):
        # The previous rehearsal goes only now: bad input or an unreachable cluster keeps it.
        _clear_previous(config)
        started = time.perf_counter()
        result = run_sweep(checked.config, checked.prepared, console=console, init_from=checked.init_from)
        report.stages.append(Stage(
            "sweep", f"{len(result.rows)} trial(s), {config.train.parallelism} on {config.resources.num_workers} "
                     f"workers, {', '.join(config.search.methods)}; MLflow experiment {config.mlflow.experiment_name}",
            time.perf_counter() - started, ok=not result.failed and not result.interrupted and bool(result.rows)))
        report.stages.append(_resume_stage(checked, result))
    report.stages.append(_export_stage(result))
    report.stages.append(_report_stage(result))
    return report


def rehearsal_config(original: Experiment) -> tuple[Experiment, list[str]]:
    """The experiment at toy scale, with what it cannot reach here substituted, and notes
    saying what was substituted."""
    import torch

    from gmt_ray.hub import hub_names

    name = original.name + REHEARSAL_SUFFIX
    notes: list[str] = []
    # The file's own storage where it is there (a mounted share) and writable; never a new
    # /mnt/shared/... made up on a laptop.
    storage = Path(original.storage_path)
    try:
        if original.local_storage() is None or not original.local_storage().is_dir():
            raise UsageError("not here")
        check_storage(original)
    except UsageError:
        storage = Path("runs")
        notes.append(f"storage_path {original.storage_path} is not a writable directory here: files go to "
                     f"{storage.resolve()}")
    root = storage.resolve() / name
    inputs = root / "standins"
    s, t, e = original.search, original.train, original.eval
    gpu = torch.cuda.is_available()
    overrides: dict[str, Any] = {
        "name": name, "storage_path": str(storage.resolve()),
        "mlflow.experiment_name": (original.mlflow.experiment_name or original.name) + REHEARSAL_SUFFIX,
        # One trial per method, at the file's first mask ratio (and first drop strategy).
        "search.num_samples": 1, "search.mask_ratios": s.mask_ratios[:1], "search.drop_strategies": s.drop_strategies[:1],
        "search.max_concurrent_trials": 2, "search.storage": None,
        "train.max_steps": 4, "train.micro_batch_size": 2, "train.grad_accum": 2, "train.log_every": 1,
        "train.eval_every": 2, "train.eval_batches": 2, "train.checkpoint_every": 2, "train.keep_checkpoints": 2,
        "data.max_length": min(original.data.max_length, 256), "data.validation_fraction": 0.1,
        "eval.max_samples": 4, "eval.max_new_tokens": 16, "eval.batch_size": 4, "eval.every": None,
        # The validation problems held out of a stand-in's few, and one confirmation seed: where a
        # paper file evaluates its benchmarks on their test problems (its protocols: shots,
        # sampling, chat formats), not its statistics.
        "eval.validation_size": 4, "confirm.seeds": min(original.confirm.seeds, 1), "confirm.until_decisive": False,
        "eval.lm_eval.limit": 4, "eval.lm_eval.batch_size": 4,
        # FSDP stays FSDP: over 2 workers, on gloo where there is no GPU.
        "resources.num_workers": min(2, torch.cuda.device_count()) if gpu else 2, "resources.use_gpu": gpu,
        "resources.gpus_per_worker": 1, "resources.cpus_per_worker": 1 if gpu else 0.5,
        "resources.accelerator_type": None,
    }
    # Sampled benchmarks keep sampling, with enough samples for pass@10 but no more.
    for benchmark, sampling in e.sampling.items():
        overrides[f"eval.sampling.{benchmark}.samples"] = min(sampling.samples, 10)
    if t.init_from and t.init_from.startswith("mlflow:best:"):
        sweep, _, method = t.init_from[len("mlflow:best:"):].partition(":")
        overrides["train.init_from"] = f"mlflow:best:{sweep}{REHEARSAL_SUFFIX}" + (f":{method}" if method else "")
    if not gpu and original.model.dtype == "bf16":
        overrides["model.dtype"] = "fp32"
        notes.append("model.dtype bf16 -> fp32: no GPU here, and gloo reduces no bf16")
    if not gpu and original.model.attn_implementation.startswith("flash_attention"):
        overrides["model.attn_implementation"] = "auto"
        notes.append(f"model.attn_implementation {original.model.attn_implementation} -> auto: no GPU here")

    offline = hub_unreachable(original)
    if offline:
        notes.append(f"the hub cannot be reached: {offline}")
        if "model.name" in hub_names(original):
            family = standins.model_family(original.model.name)
            overrides["model.name"] = str(standins.model_dir(family, storage.resolve() / "rehearsal-models"))
            notes.append(f"model {original.model.name} -> a tiny random-init {family} model")
        if original.data.source == "hub":
            data_file = standins.training_file(original.data, inputs, preference=t.objective == "dpo")
            overrides.update({"data.source": "file", "data.path": str(data_file)})
            notes.append(f"data {original.data.path} -> {data_file.name}: stand-in rows in its own columns")
        if e.lm_eval.tasks:
            tasks = standins.lm_eval_tasks(list(e.lm_eval.tasks), inputs / "lm_eval")
            overrides.update({"eval.lm_eval.include_path": str(tasks), "eval.lm_eval.include_defaults": False})
            notes.append(f"lm-eval {', '.join(e.lm_eval.tasks)} -> local stand-ins of the same structure, metrics "
                         "and shot counts")
    elif original.data.source == "hub":
        overrides["data.max_samples"] = 64
    for data_path, benchmarks in _benchmarks_by_file(e.data).items():
        if Path(data_path).exists():
            continue
        # One file for several benchmarks (MBPP+ read as MBPP and as MBPP+) gets one stand-in in the
        # format of the one that needs the most of it (EvalPlus's, whose base tests MBPP reads).
        shape = next((b for b in benchmarks if b.endswith("_plus_tests")), benchmarks[0])
        standin = str(standins.eval_file(shape, inputs))
        for benchmark in benchmarks:
            overrides[f"eval.data.{benchmark}"] = standin
        notes.append(f"eval.data.{'/'.join(benchmarks)} {data_path} is not on this machine -> a stand-in in "
                     f"{shape}'s format")
    return with_overrides(original, overrides), notes


def _benchmarks_by_file(data: dict[str, str]) -> dict[str, list[str]]:
    by_file: dict[str, list[str]] = {}
    for benchmark, path in data.items():
        by_file.setdefault(path, []).append(benchmark)
    return by_file


def hub_unreachable(config: Experiment) -> str | None:
    """Why the experiment's hub model or data set cannot be loaded here (None: it can, or it
    needs no hub)."""
    from gmt_ray.hub import hub_problems

    problems = hub_problems(config)
    return "; ".join(problems) if problems else None


def _rehearse_what_it_starts_from(config: Experiment, path: Path, **options) -> None:
    """A DPO experiment starts from an SFT sweep's models: its rehearsal starts from that
    sweep's rehearsal, run first (from the experiment file of that name beside this one)
    when the store does not hold it yet."""
    from gmt_ray.tracking import latest_sweep_run, resolve_tracking_uri

    spec = config.train.init_from or ""
    if not spec.startswith("mlflow:best:"):
        return
    sweep = spec[len("mlflow:best:"):].partition(":")[0]
    if latest_sweep_run(resolve_tracking_uri(config.mlflow.tracking_uri), sweep + REHEARSAL_SUFFIX) is not None:
        return
    for candidate in sorted(path.parent.glob("*.y*ml")):
        try:
            if candidate != path and load_experiment(candidate).name == sweep:
                print(f"rehearsal: {config.name} starts from sweep {sweep}: rehearsing {candidate} first")
                rehearsal = rehearse(candidate, **options)
                if not rehearsal.ok:
                    raise UsageError(f"the rehearsal of {candidate}, which {path} starts from, failed")
                return
        except ConfigError:
            continue
    raise UsageError(f"train.init_from={spec!r}: no rehearsal of sweep {sweep!r} in the store, and no experiment "
                     f"file named {sweep!r} beside {path} to rehearse it from")


def _clear_previous(config: Experiment) -> None:
    """A new rehearsal replaces the last one: its files, and its runs (soft-deleted)."""
    from gmt_ray.sweep.driver import sweep_paths
    from gmt_ray.tracking import delete_sweep_runs, resolve_tracking_uri

    root = sweep_paths(config).root
    keep = root / "standins"  # written for this rehearsal a moment ago
    if root.exists():
        for child in root.iterdir():
            if child != keep:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    delete_sweep_runs(resolve_tracking_uri(config.mlflow.tracking_uri), config.name)


def _resume_stage(checked, result) -> Stage:
    """Resumes the first finished trial from its middle checkpoint to its end."""
    import json

    from gmt_ray.tracking import SweepRuns, Tags
    from gmt_ray.train.checkpoint import latest_checkpoint
    from gmt_ray.train.launch import make_trainer

    started = time.perf_counter()
    config = checked.config
    trial = next((run for run in SweepRuns(result.tracking_uri, result.parent_run_id).trials()
                  if run.info.status == "FINISHED" and Tags.CHECKPOINT in run.data.tags), None)
    if trial is None:
        return Stage("checkpoint + resume", "no finished trial with a checkpoint to resume", 0.0, ok=False)
    middle = latest_checkpoint(Path(trial.data.tags[Tags.CHECKPOINT]).parent, max_step=config.train.max_steps // 2)
    if middle is None:
        return Stage("checkpoint + resume", f"trial {trial.info.run_name}: no checkpoint before its end", 0.0, ok=False)
    params = {k: v for k, v in trial.data.params.items() if k in ("mask.method", "mask.mask_ratio", "train.lr",
                                                                   "mask.drop_strategy", "train.seed")}
    resumed = with_overrides(config, {**params, "train.resume_from": str(middle),
                                      **({"train.init_from": checked.init_from[params["mask.method"]]}
                                         if checked.init_from else {})})
    metrics = middle.parent / "resume-metrics.jsonl"
    fit = make_trainer(resumed, run_name=f"{middle.parent.name}-resumed", metrics_path=str(metrics),
                       prepared=checked.prepared).fit()
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()] if metrics.exists() else []
    first = config.train.max_steps // 2 + 1
    ok = fit.error is None and steps == list(range(first, config.train.max_steps + 1))
    return Stage("checkpoint + resume", f"{trial.info.run_name}: resumed from {middle.name}, steps {steps}",
                 time.perf_counter() - started, ok=ok)


def _export_stage(result) -> Stage:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    from gmt_ray.tracking import SweepRuns, Tags

    started = time.perf_counter()
    finished = [run for run in SweepRuns(result.tracking_uri, result.parent_run_id).trials()
                if run.info.status == "FINISHED"]
    loaded = []
    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()  # a bar per model would drown the stage table
    try:
        for run in finished:
            directory = run.data.tags.get(Tags.MODEL)
            if directory:
                model = AutoModelForCausalLM.from_pretrained(directory)
                AutoTokenizer.from_pretrained(directory)
                loaded.append(f"{run.info.run_name} ({sum(p.numel() for p in model.parameters()):,} parameters)")
    finally:
        if bars:
            transformers_logging.enable_progress_bar()
    ok = bool(finished) and len(loaded) == len(finished)
    return Stage("exported models", f"{len(loaded)} of {len(finished)} load back: {'; '.join(loaded)}",
                 time.perf_counter() - started, ok=ok)


def _report_stage(result) -> Stage:
    from gmt_ray.report import collect, write_report

    started = time.perf_counter()
    files = write_report(collect(result.tracking_uri, result.parent_run_id), result.root / "report")
    return Stage("report", f"{len(files)} file(s) in {result.root / 'report'}, logged to the parent run",
                 time.perf_counter() - started, ok=bool(files))


def print_rehearsal(rehearsal: Rehearsal, console) -> None:
    """The closing table: each stage, what it did, how long it took; and the real run's cost."""
    from rich.table import Table

    table = Table(title=f"rehearsal of {rehearsal.experiment}")
    for column in ("stage", "", "what it did", "seconds"):
        table.add_column(column)
    for stage in rehearsal.stages:
        table.add_row(stage.name, "ok" if stage.ok else "[red]FAILED", stage.did, f"{stage.seconds:.0f}")
    table.add_row("real run", "", f"estimate: {rehearsal.estimate}", "")
    console.print(table)
