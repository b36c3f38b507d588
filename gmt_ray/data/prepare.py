"""What a run trains and validates on, prepared once in the driver and shared with every
worker: the tokenizer and the tokenised splits, and the evaluation files checked early."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gmt_ray.config import Experiment
from gmt_ray.data.sources import load_records
from gmt_ray.data.tokens import (
    PreferenceSplit,
    TokenizedSplit,
    format_prompt,
    install_chat_format,
    tokenize_preference,
    tokenize_sft,
)

__all__ = ["Prepared", "prepare"]


@dataclass
class Prepared:
    """Tokenizer and tokenised splits: built once in the driver, shared with every worker."""

    tokenizer: Any
    train: TokenizedSplit | PreferenceSplit  # preference pairs for the dpo objective
    validation: TokenizedSplit | PreferenceSplit
    test_records: list[dict] | None = None  # the generator's held-out problems, for evaluation
    validation_records: list[dict] | None = None  # the generator's validation problems (a sweep's search)
    # What the run trains and validates on (gmt_ray.data.catalog.DatasetRef), for trackers; preflight
    # adds what it is evaluated on (gmt_ray.eval.datasets).
    datasets: list = field(default_factory=list)


def prepare(config: Experiment) -> Prepared:
    """Records, tokenizer and tokenised splits.

    ``train.init_from`` must already be a directory here (the CLIs resolve ``mlflow:``).
    """
    from gmt_ray.data.catalog import describe_datasets
    from gmt_ray.data.tokens import train_tiny_tokenizer
    from gmt_ray.models import init_tokenizer_dir, load_tokenizer

    dpo = config.train.objective == "dpo"
    records = load_records(config.data, "preference" if dpo else "sft")
    test_records = records.get("test")
    validation_records = records.get("validation") if config.data.source == "arithmetic" else None
    if dpo and config.data.source == "arithmetic":
        problems = load_records(config.data)  # problems with answers, for evaluation
        test_records, validation_records = problems["test"], problems["validation"]
    tokenizer_dir = init_tokenizer_dir(config.train.init_from) if config.train.init_from else None
    if tokenizer_dir is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)  # the one the weights were trained with
    elif config.model.name == "tiny":
        # The tokenizer learns the training text as the model will see it, template included.
        responses = ("chosen", "rejected") if dpo else ("response",)
        texts = [format_prompt(r["prompt"], None, "alpaca") + r[k] for r in records["train"] for k in responses]
        tokenizer = train_tiny_tokenizer(texts, config.model.tiny.vocab_size)
    else:
        tokenizer = load_tokenizer(config.model)
    length, template = config.data.max_length, config.data.template
    install_chat_format(tokenizer, template)  # tulu: Tulu v2's format where the tokenizer has no chat template
    tokenize = tokenize_preference if dpo else tokenize_sft
    return Prepared(
        tokenizer=tokenizer,
        train=tokenize(records["train"], tokenizer, length, template),
        validation=tokenize(records["validation"], tokenizer, length, template),
        test_records=test_records,
        validation_records=validation_records,
        datasets=describe_datasets(config, {**records, "test": test_records}),
    )
