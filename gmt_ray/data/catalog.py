"""What a run trains, validates and is evaluated on, described for a tracker: a name, where
it comes from, a digest of its content and its size. Plain data (no MLflow here); the
sweep logs these as its trial runs' dataset inputs.

Digests are of the content itself, so the same data has the same digest in every sweep,
and changed data (another generator seed, an edited file, a changed generator) a new one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gmt_ray.config import Experiment

__all__ = ["DatasetRef", "describe_datasets", "file_digest", "records_digest"]

DIGEST_LENGTH = 16  # hex characters (MLflow keeps at most 36)


@dataclass(frozen=True)
class DatasetRef:
    """One dataset a run uses.

    Attributes:
        name: readable, with its split: ``arithmetic-train``, ``gsm8k_test-eval``.
        digest: of its content (``records_digest`` / ``file_digest``).
        source_type: MLflow's source types: ``code`` (generated), ``local``, ``hugging_face``.
        source: where it comes from, as MLflow's source of that type describes itself.
        context: ``train``, ``validation`` or ``eval``.
        split: the split it is (``train``, ``validation``, ``test``).
        rows: records used.
    """

    name: str
    digest: str
    source_type: str
    source: dict[str, Any]
    context: str
    split: str
    rows: int
    columns: tuple[str, ...] = field(default=())


def records_digest(records: Iterable[Any]) -> str:
    """A stable digest of records (key order does not matter)."""
    h = hashlib.sha256()
    for record in records:
        h.update(json.dumps(record, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()[:DIGEST_LENGTH]


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:DIGEST_LENGTH]


def describe_datasets(config: Experiment, records: dict[str, list[dict]]) -> list[DatasetRef]:
    """The training and validation data (``records`` as ``load_records`` returned them, after
    ``data.max_samples``) and every benchmark's evaluation data."""
    data = config.data
    if data.source == "arithmetic":
        a = data.arithmetic
        generator = {
            "mlflow.source.name": "gmt_ray.data.arithmetic.generate_arithmetic",
            "gmt_ray.generator.config": json.dumps(a.model_dump(mode="json"), sort_keys=True),
        }
        base, source_type, source = "arithmetic", "code", {"tags": generator}
        sources = {"train": source, "validation": source}
    elif data.source == "file":
        base = Path(data.path).stem
        source_type = "local"
        sources = {"train": {"uri": str(Path(data.path).resolve())},
                   "validation": {"uri": str(Path(data.validation_path or data.path).resolve())}}
    else:
        base = data.path.replace("/", "_") + (f"_{data.hub_config}" if data.hub_config else "")
        source_type = "hugging_face"
        source = {"path": data.path, "config_name": data.hub_config, "split": data.split}
        sources = {"train": source, "validation": source}
    found = []
    for split in ("train", "validation"):
        rows = records.get(split) or []
        found.append(DatasetRef(
            name=f"{base}-{split}", digest=records_digest(rows), source_type=source_type, source=sources[split],
            context=split, split=split, rows=len(rows), columns=tuple(rows[0]) if rows else (),
        ))
    return found
