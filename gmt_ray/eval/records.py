"""JSONL files of benchmark records and samples, read with errors that name file and line."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path

__all__ = ["latest_rows_file", "read_jsonl", "task_scores"]


def read_jsonl(path: str | Path) -> Iterator[tuple[int, object]]:
    """(1-based line number, parsed value) for each non-blank line of a .jsonl or .jsonl.gz.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a file that cannot be read as UTF-8 JSON lines, naming it (and the line where
            known): ``path:line: not JSON (...)``, ``path:line: not UTF-8``, ``path: not a gzip file``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    number = 0
    try:
        # Bytes, decoded line by line: a bad byte is then placed on its own line, not the
        # line where a text reader's buffer happened to be filled.
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as lines:
            for number, raw in enumerate(lines, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise ValueError(f"{path}:{number}: not UTF-8") from None
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}:{number}: not JSON ({error.msg})") from None
                yield number, value
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        # Decompression runs ahead of the lines: the last good line is as near as it can be placed.
        after = f" (after line {number})" if number else ""
        if isinstance(error, EOFError):
            raise ValueError(f"{path}: gzip data ends early{after}") from None
        if number == 0 and str(error).startswith("Not a gzipped file"):
            raise ValueError(f"{path}: not a gzip file") from None
        raise ValueError(f"{path}: corrupt gzip data{after} ({error})") from None
    except OSError as error:
        raise ValueError(f"{path}: cannot be read ({error.strerror or error})") from None


def task_scores(rows: list[dict]) -> dict[str, float]:
    """Each task's score from per-sample rows (``task_id``, ``correct``): its share of correct
    samples (1 or 0 with one sample per task; an unbiased pass@1 with several)."""
    per_task: dict[str, list[float]] = {}
    for row in rows:
        per_task.setdefault(str(row["task_id"]), []).append(float(row["correct"]))
    return {task: sum(values) / len(values) for task, values in per_task.items()}


def latest_rows_file(paths: list[str], benchmark: str) -> str | None:
    """Of the evaluation rows files ``eval/step{N}-{benchmark}.jsonl`` among ``paths``, the one of
    the latest step (a validation file, ``step{N}-val_{benchmark}.jsonl``, is not one of them)."""
    import re

    steps = {int(match.group(1)): path for path in paths
             if (match := re.fullmatch(rf"step(\d+)-{re.escape(benchmark)}\.jsonl", path.rsplit("/", 1)[-1]))}
    return steps[max(steps)] if steps else None
