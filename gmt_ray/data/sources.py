"""Where training records come from: the built-in generator, local files, or the hub.

Every source yields the same record shapes:
- SFT: ``{"prompt": str | list[message], "response": str}``
- preference: ``{"prompt": ..., "chosen": str, "rejected": str}``
A row missing a field, of the wrong type, or an empty dataset raises one ``DataError``
naming the file (or dataset) and the row: ``file.jsonl:18: ...`` (the line, 1-based) for a
JSON Lines file, which is read here line by line, and ``file: row 5: ...`` (0-based) otherwise.
"""

from __future__ import annotations

import json
import logging
import random
from contextlib import contextmanager
from dataclasses import dataclass
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
        train = _shuffled(_normalise(*_read_file(Path(config.path)), config, kind, config.path), config.shuffle_seed)
        if config.validation_path:
            validation = _normalise(*_read_file(Path(config.validation_path)), config, kind, config.validation_path)
        else:
            train, validation = _hold_out(train, config.validation_fraction, config.path)
    else:
        import datasets  # the hub path only exists on machines that can reach a hub

        name = f"hub dataset {config.path!r} (split {config.split!r})"
        rows = datasets.load_dataset(config.path, config.hub_config, split=config.split)
        records = _shuffled(_normalise(rows, None, config, kind, name), config.shuffle_seed)
        train, validation = _hold_out(records, config.validation_fraction, name)
    if config.max_samples is not None:
        train = train[: config.max_samples]
    return {"train": train, "validation": validation}


def _read_file(path: Path) -> tuple[Any, list[int] | None]:
    """The rows of a data file, and for a JSON Lines file each row's line number (else None)."""
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    builder = _FORMATS.get(path.suffix.lower())
    if builder is None:
        raise DataError(f"{path}: unsupported data file type {path.suffix!r}; use one of {sorted(_FORMATS)}")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty (no rows)")
    if path.suffix.lower() == ".jsonl":
        # Read here, not by datasets: its errors name no line ("position 29", "row 0", a bare
        # "An error occurred"), and it fills a field a row lacks with null.
        lines, rows = [], []
        for number, value in _json_lines(path):
            lines.append(number)
            rows.append(value)
        return rows, lines
    if builder in ("json", "csv"):
        filled = sum(1 for _, line in _text_lines(path) if line.strip())  # raises a line not UTF-8
        if not filled:
            raise DataError(f"{path}: the file is empty (no rows)")
        if builder == "csv" and filled == 1:
            raise DataError(f"{path}: the file has a header and no rows")

    import datasets

    try:
        with _quiet_json_loader():
            return datasets.load_dataset(builder, data_files=str(path), split="train"), None
    except Exception as error:  # datasets wraps parser errors in many types
        if builder == "json":
            _diagnose_json(path)  # raises the line that is not JSON, if one is
        raise DataError(f"{path}: could not be read as {builder}: {str(error) or type(error).__name__}") from None


def _text_lines(path: Path):
    """(1-based line number, text) of each line of a UTF-8 file, or a ``DataError`` naming the
    line that is not UTF-8."""
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, 1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a byte-order mark
                raw = raw[3:]
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataError(f"{path}:{number}: not UTF-8 ({error.reason} at byte {error.start + 1} of the line: "
                                f"{raw[error.start:error.start + 1]!r})") from None


def _json_lines(path: Path):
    """(line number, object) of each non-blank line of a JSON Lines file; a ``DataError``
    naming the first line that is not UTF-8, not JSON or not a JSON object, or the file empty."""
    empty = True
    for number, line in _text_lines(path):
        if not line.strip():
            continue
        empty = False
        try:
            value = json.loads(line.rstrip("\r\n"))
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{number}: not JSON ({error.msg}: column {error.pos + 1})") from None
        if not isinstance(value, dict):
            hint = ("; a .jsonl file holds one JSON object per line (name a file holding one JSON array .json)"
                    if isinstance(value, list) else "")
            raise DataError(f"{path}:{number}: not a JSON object (a JSON {_json_type(value)}){hint}")
        yield number, value
    if empty:
        raise DataError(f"{path}: the file is empty (no rows)")


def _diagnose_json(path: Path) -> None:
    """Raise a ``DataError`` naming the line of a .json file (one JSON document, or JSON Lines)
    that is not JSON; return if the file is JSON."""
    text = "".join(line for _, line in _text_lines(path))
    try:
        json.loads(text)
    except json.JSONDecodeError as error:
        if error.msg == "Extra data":  # more than one document: JSON Lines
            for _ in _json_lines(path):
                pass
            return
        raise DataError(f"{path}:{error.lineno}: not JSON ({error.msg}: column {error.colno})") from None


def _json_type(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}.get(type(value), "null")


@contextmanager
def _quiet_json_loader():
    """Without the line datasets' JSON loader logs for a file it cannot parse ("Failed to load
    JSON from file ... in row 0"): the ``DataError`` raised for it is the one message."""
    logger = logging.getLogger("datasets.packaged_modules.json.json")
    def drop(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Failed to load JSON")

    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def _normalise(rows, lines: list[int] | None, config: DataConfig, kind: str, where: str) -> list[dict[str, Any]]:
    """Records from rows; ``lines``: each row's line in a JSON Lines file (rows as written,
    a field a row lacks absent), None for rows from datasets (a field a row lacks is null)."""
    records = []
    for index, row in enumerate(rows):
        at = _Row(f"{where}:{lines[index]}" if lines is not None else f"{where}: row {index}", exact=lines is not None)
        if kind == "preference":
            records.append({
                "prompt": _field(row, config.prompt_column, at),
                "chosen": _response(row, config.chosen_column, at),
                "rejected": _response(row, config.rejected_column, at),
            })
        elif config.messages_column:
            records.append(_from_messages(row, config.messages_column, at))
        else:
            records.append({
                "prompt": _field(row, config.prompt_column, at),
                "response": _field(row, config.response_column, at),
            })
    if not records:
        raise DataError(f"{where}: the dataset is empty")
    return records


@dataclass(frozen=True)
class _Row:
    """Where a row is (``file.jsonl:18`` or ``name: row 5``), and whether the row is as written
    (``exact``) or filled out by datasets, which makes a field a row lacks null."""

    where: str
    exact: bool

    def __str__(self) -> str:
        return self.where


def _missing(row: dict, column: str, at: _Row) -> DataError:
    if at.exact:
        if column in row:
            return DataError(f"{at}: field {column!r} is null")
        return DataError(f"{at}: missing field {column!r} (row has {sorted(row)})")
    present = sorted(key for key, value in row.items() if value is not None)
    return DataError(f"{at}: missing field {column!r} (absent or null; the row's non-null fields: {present})")


def _field(row: dict, column: str, at: _Row) -> str:
    if column not in row or row[column] is None:
        raise _missing(row, column, at)
    value = row[column]
    if not isinstance(value, str):
        raise DataError(f"{at}: field {column!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{at}: field {column!r} is empty")
    return value


def _response(row: dict, column: str, at: _Row) -> str:
    """A response given as text, or as a conversation ending in the assistant's turn
    (UltraFeedback-binarized stores chosen/rejected that way)."""
    if isinstance(row.get(column), list):
        return _from_messages(row, column, at)["response"]
    return _field(row, column, at)


def _from_messages(row: dict, column: str, at: _Row) -> dict[str, Any]:
    messages = row.get(column)
    if messages is None:
        raise _missing(row, column, at)
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{at}: field {column!r} must be a non-empty list of messages")
    for turn, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or not isinstance(
            message.get("content"), str
        ):
            raise DataError(f"{at}: message {turn} needs string 'role' and 'content'")
    if messages[-1]["role"] != "assistant":
        raise DataError(f"{at}: the last message must be the assistant's response")
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
