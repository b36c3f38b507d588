"""JSONL files of benchmark records and samples, read with errors that name file and line."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

__all__ = ["latest_rows_file", "read_jsonl", "task_scores"]


def read_jsonl(path: str | Path) -> Iterator[tuple[int, object]]:
    """(1-based line number, parsed value) for each non-blank line of a .jsonl or .jsonl.gz.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a line that is not JSON, as ``path:line: not JSON (...)``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not JSON ({error.msg})") from None


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
