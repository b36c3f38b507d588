"""Where training records come from: the built-in generator, local files, or the hub.

Every source yields the same record shapes:
- SFT: ``{"prompt": str | list[message], "response": str}``
- preference: ``{"prompt": ..., "chosen": str, "rejected": str}``
A row missing a field, of the wrong type, or an empty dataset raises one ``DataError``
naming the file (or dataset) and the row.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from gmt_ray.config import DataConfig
from gmt_ray.data.arithmetic import generate_arithmetic, preference_pairs
from gmt_ray.errors import DataError

__all__ = ["DataError", "load_records"]

_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def load_records(config: DataConfig, kind: str = "sft") -> dict[str, list[dict[str, Any]]]:
    """Train and validation records (and test, for the generator).

    Args:
        config: the data section of the experiment.
        kind: ``sft`` for prompt/response pairs or ``preference`` for chosen/rejected.
    """
    if config.source == "arithmetic":
        a = config.arithmetic
        splits = generate_arithmetic(
            a.train_size, a.validation_size, a.test_size,
            min_ops=a.min_ops, max_ops=a.max_ops, max_number=a.max_number, seed=a.seed, domains=a.domains,
        )
        if kind == "preference":
            splits = {name: preference_pairs(rows, seed=a.seed) for name, rows in splits.items()}
        return splits

    if config.source == "file":
        train = _shuffled(_normalise(_read_file(Path(config.path)), config, kind, config.path), config.shuffle_seed)
        if config.validation_path:
            validation = _normalise(_read_file(Path(config.validation_path)), config, kind, config.validation_path)
        else:
            train, validation = _hold_out(train, config.validation_fraction, config.path)
    else:
        import datasets  # the hub path only exists on machines that can reach a hub

        name = f"hub dataset {config.path!r} (split {config.split!r})"
        rows = datasets.load_dataset(config.path, config.hub_config, split=config.split)
        records = _shuffled(_normalise(rows, config, kind, name), config.shuffle_seed)
        train, validation = _hold_out(records, config.validation_fraction, name)
    if config.max_samples is not None:
        train = train[: config.max_samples]
    return {"train": train, "validation": validation}


def _read_file(path: Path):
    import datasets

    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    builder = _FORMATS.get(path.suffix.lower())
    if builder is None:
        raise DataError(f"{path}: unsupported data file type {path.suffix!r}; use one of {sorted(_FORMATS)}")
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as error:  # datasets wraps parser errors in many types
        raise DataError(f"{path}: could not be read as {builder}: {error}") from None


def _normalise(rows, config: DataConfig, kind: str, where: str) -> list[dict[str, Any]]:
    records = []
    for index, row in enumerate(rows):
        if kind == "preference":
            records.append({
                "prompt": _field(row, config.prompt_column, where, index),
                "chosen": _response(row, config.chosen_column, where, index),
                "rejected": _response(row, config.rejected_column, where, index),
            })
        elif config.messages_column:
            records.append(_from_messages(row, config.messages_column, where, index))
        else:
            records.append({
                "prompt": _field(row, config.prompt_column, where, index),
                "response": _field(row, config.response_column, where, index),
            })
    if not records:
        raise DataError(f"{where}: the dataset is empty")
    return records


def _field(row: dict, column: str, where: str, index: int) -> str:
    if column not in row or row[column] is None:
        raise DataError(f"{where}: row {index}: missing field {column!r} (row has {sorted(row)})")
    value = row[column]
    if not isinstance(value, str):
        raise DataError(f"{where}: row {index}: field {column!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{where}: row {index}: field {column!r} is empty")
    return value


def _response(row: dict, column: str, where: str, index: int) -> str:
    """A response given as text, or as a conversation ending in the assistant's turn
    (UltraFeedback-binarized stores chosen/rejected that way)."""
    if isinstance(row.get(column), list):
        return _from_messages(row, column, where, index)["response"]
    return _field(row, column, where, index)


def _from_messages(row: dict, column: str, where: str, index: int) -> dict[str, Any]:
    messages = row.get(column)
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: row {index}: field {column!r} must be a non-empty list of messages")
    for turn, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or not isinstance(
            message.get("content"), str
        ):
            raise DataError(f"{where}: row {index}: message {turn} needs string 'role' and 'content'")
    if messages[-1]["role"] != "assistant":
        raise DataError(f"{where}: row {index}: the last message must be the assistant's response")
    return {"prompt": [dict(m) for m in messages[:-1]], "response": messages[-1]["content"]}


def _shuffled(records: list, seed: int) -> list:
    """The records in a random order fixed by ``seed``: files are often sorted (by source,
    length, topic), and neither the validation split nor ``max_samples`` may take one end."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    return [records[i] for i in order]


def _hold_out(records: list, fraction: float, where: str) -> tuple[list, list]:
    """(train, validation) of records already in random order."""
    count = max(1, round(len(records) * fraction))
    if count >= len(records):
        raise DataError(f"{where}: {len(records)} rows are too few to hold out a validation split")
    return records[count:], records[:count]
