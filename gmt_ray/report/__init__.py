"""Reports: the paper's tables and figures, and the verdicts, from a sweep's MLflow runs.

``collect`` reads a sweep's trial runs back from MLflow (``sweep.py``); ``tables.py`` turns
the search stage into the paper's views (method x benchmark, mask-ratio sensitivity, training
speed, drop strategies, learning rate x mask ratio) and the confirmation stage into scores per
arm; ``verdicts.py`` compares the arms, paired by seed and problem; ``render.py`` writes
Markdown and PNG files. Nothing here trains or starts Ray.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from gmt_ray.report.sweep import Sweep, Trial, collect
from gmt_ray.report.tables import (
    confirm_table,
    confirm_verdicts,
    drop_curves,
    edge_notes,
    method_order,
    method_table,
    ratio_curves,
    speed_table,
)

__all__ = [
    "Sweep",
    "Trial",
    "collect",
    "confirm_table",
    "confirm_verdicts",
    "drop_curves",
    "edge_notes",
    "method_order",
    "method_table",
    "ratio_curves",
    "speed_table",
    "write_report",
]


def write_report(sweep: Sweep, out, *, log: bool = True, target_half_width: float | None = 0.03) -> list[Path]:
    """Renders a sweep's report (Markdown, figures, ``verdicts.json`` where the sweep has a
    confirmation stage) into ``out`` (a directory, or a ``.md`` file with its figures in the
    directory of its name) and, with ``log``, logs it under ``report/`` of the sweep's
    parent run, with each verdict's difference and interval as the parent's metrics; returns
    the files written. ``target_half_width``: the verdicts say how many seeds an interval of
    +-that would need (None: not)."""
    from gmt_ray.report.render import render
    from gmt_ray.tracking import client

    out = Path(out)
    # A Markdown file named by the caller (docs/results.md): figures beside it in docs/results/.
    markdown, figures = (out, out.with_suffix("")) if out.suffix == ".md" else (out / "report.md", out)
    found = confirm_verdicts(sweep, target_half_width)
    files = render(sweep, figures, found, markdown=markdown)
    if found:
        path = figures / "verdicts.json"
        path.write_text(json.dumps([v.as_json() for v in found], indent=2) + "\n")
        files.append(path)
    if log:
        mlflow_client = client(sweep.tracking_uri)
        for path in files:
            mlflow_client.log_artifact(sweep.parent_run_id, str(path), artifact_path="report")
        from mlflow.entities import Metric

        now = [Metric(f"verdict/{v.a.key}_vs_{v.b.key}/{key}", float(getattr(v, key)), 0, 0) for v in found
               for key in ("difference", "low", "high", "p_value", "min_detectable_effect")
               if math.isfinite(getattr(v, key))]
        for start in range(0, len(now), 1000):
            mlflow_client.log_batch(sweep.parent_run_id, metrics=now[start : start + 1000])
    return files
