"""Reports: the paper's tables and figures from a sweep's MLflow runs.

``collect`` reads a sweep's trial runs back from MLflow; the functions below turn them
into the paper's views (method x benchmark, mask-ratio sensitivity, training speed,
drop strategies, learning rate x mask ratio); ``render`` writes Markdown and PNG files.
Nothing here trains or starts Ray.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from gmt_ray.masking.methods import DROP_STRATEGIES, METHODS

__all__ = [
    "Sweep",
    "Trial",
    "collect",
    "drop_curves",
    "method_table",
    "ratio_curves",
    "speed_table",
    "write_report",
]

_PARAM_KEYS_NOT_CONFIG = {"train.seed"}  # trials differing only in these repeat a configuration


@dataclass
class Trial:
    run_id: str
    name: str
    status: str
    params: dict[str, str]  # the sweep's whole config, overlaid with this trial's own values
    metrics: dict[str, float]  # each metric's last value
    early_stopped: bool = False

    @property
    def method(self) -> str:
        method = self.params.get("mask.method", "?")
        if method == "drop":
            return f"drop-{self.params.get('mask.drop_strategy', 'random')}"
        return method

    @property
    def mask_ratio(self) -> float:
        return float(self.params.get("mask.mask_ratio", 0.0))

    @property
    def lr(self) -> float:
        return float(self.params.get("train.lr", "nan"))

    def configuration(self) -> tuple:
        """What identifies the trial's configuration: everything it set but its seed."""
        own = {k: v for k, v in self.params.items() if k not in _PARAM_KEYS_NOT_CONFIG}
        return tuple(sorted(own.items()))


@dataclass
class Sweep:
    name: str
    parent_run_id: str
    tracking_uri: str
    metric: str
    mode: str
    trials: list[Trial] = field(default_factory=list)
    throughput: dict[str, dict[str, float]] = field(default_factory=dict)  # run id -> mean tokens/samples per s

    def finished(self) -> list[Trial]:
        """Trials that ran to the end and have the objective (early-stopped ones excluded)."""
        return [t for t in self.trials if t.status == "FINISHED" and not t.early_stopped and self.metric in t.metrics]


def collect(tracking_uri: str, parent_run_id: str) -> Sweep:
    """Every trial run of a sweep, read back from MLflow."""
    from gmt_ray.tracking import SweepRuns, Tags

    runs = SweepRuns(tracking_uri, parent_run_id)
    client = runs.client
    parent = client.get_run(parent_run_id)
    base = dict(parent.data.params)
    sweep = Sweep(
        name=parent.data.tags.get(Tags.SWEEP, parent.info.run_name), parent_run_id=parent_run_id,
        tracking_uri=tracking_uri, metric=base.get("search.metric", "val_loss"), mode=base.get("search.mode", "min"),
    )
    for run in sorted(runs.trials(), key=lambda r: r.info.run_name or ""):
        trial = Trial(
            run_id=run.info.run_id, name=run.info.run_name, status=run.info.status,
            params={**base, **run.data.params}, metrics=dict(run.data.metrics),
            early_stopped=Tags.EARLY_STOPPED in run.data.tags,
        )
        sweep.trials.append(trial)
        # Throughput: the mean over the run's reports after the first (start-up, compilation).
        speeds = {}
        for key in ("tokens_per_s", "samples_per_s"):
            history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
            values = [m.value for m in history[1:]] or [m.value for m in history]
            if values:
                speeds[key] = statistics.fmean(values)
        sweep.throughput[run.info.run_id] = speeds
    return sweep


# ----------------------------------------------------------------------------- statistics


def summarize_values(trials: list[Trial], metric: str) -> dict[str, float] | None:
    """Mean and 95% interval of ``metric`` over repeated trials (a t-interval over seeds,
    with scipy's exact t quantile); for a single trial, its own interval when it reported
    one (an accuracy's, from its per-sample scores), else no interval (``low`` and ``high``
    None: a single validation loss has none)."""
    from scipy import stats

    values = [t.metrics[metric] for t in trials if metric in t.metrics and math.isfinite(t.metrics[metric])]
    if not values:
        return None
    mean = statistics.fmean(values)
    if len(values) > 1:
        half = float(stats.t.ppf(0.975, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))
        return {"mean": mean, "low": mean - half, "high": mean + half, "n": len(values)}
    only = next(t.metrics for t in trials if metric in t.metrics)
    return {"mean": mean, "low": only.get(f"{metric}_low"), "high": only.get(f"{metric}_high"), "n": 1}


def _by_configuration(trials: list[Trial]) -> list[list[Trial]]:
    groups: dict[tuple, list[Trial]] = {}
    for trial in trials:
        groups.setdefault(trial.configuration(), []).append(trial)
    return list(groups.values())


def _best_group(groups: list[list[Trial]], metric: str, mode: str) -> list[Trial] | None:
    scored = [(summarize_values(g, metric), g) for g in groups]
    scored = [(s["mean"], g) for s, g in scored if s is not None]
    if not scored:
        return None
    return (min if mode == "min" else max)(scored, key=lambda pair: pair[0])[1]


def report_metrics(sweep: Sweep) -> list[str]:
    """The columns of the method table: the objective first, then every evaluation score."""
    names = {k for t in sweep.finished() for k in t.metrics}
    scores = sorted(k for k in names if (k.endswith("_accuracy") or k.endswith("_pass_at_1") or k.startswith("lm_eval/"))
                    and not k.endswith("_stderr"))
    columns = [sweep.metric] + [k for k in scores if k != sweep.metric]
    if "val_loss" in names and "val_loss" not in columns:
        columns.append("val_loss")
    return columns


def method_table(sweep: Sweep) -> dict[str, Any]:
    """Per method, its best configuration by the sweep's objective, and that
    configuration's value (mean and interval over seeds) in every column."""
    columns = report_metrics(sweep)
    rows = []
    trials = sweep.finished()
    for method in sorted({t.method for t in trials}, key=method_order):
        best = _best_group(_by_configuration([t for t in trials if t.method == method]), sweep.metric, sweep.mode)
        if best is None:
            continue
        rows.append({
            "method": method, "mask_ratio": best[0].mask_ratio, "lr": best[0].lr, "seeds": len(best),
            "values": {c: summarize_values(best, c) for c in columns},
        })
    best_per_column = {}
    for column in columns:
        candidates = [(r["values"][column]["mean"], r["method"]) for r in rows if r["values"][column] is not None]
        if candidates:
            pick = min if _lower_better(column, sweep) else max
            best_per_column[column] = pick(candidates)[1]
    return {"columns": columns, "rows": rows, "best": best_per_column}


def _lower_better(metric: str, sweep: Sweep) -> bool:
    if metric == sweep.metric:
        return sweep.mode == "min"
    return "loss" in metric


# Every method a report can show, in the order it lists them (drop once per strategy).
METHOD_ORDER = tuple(m for m in METHODS if m != "drop") + tuple(f"drop-{s}" for s in DROP_STRATEGIES)


def method_order(method: str) -> tuple:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def ratio_curves(sweep: Sweep, metric: str | None = None) -> dict[str, list[dict[str, float]]]:
    """Per method, the metric against the mask ratio: at each ratio, its best learning rate
    (and the mean over seeds there), with how many learning rates were tried at that ratio
    (``lrs_tried``). Methods without a ratio (sft, hft) give one point at 0."""
    metric = metric or sweep.metric
    curves: dict[str, list[dict[str, float]]] = {}
    trials = sweep.finished()
    for method in sorted({t.method for t in trials}, key=method_order):
        points = []
        mine = [t for t in trials if t.method == method]
        for ratio in sorted({round(t.mask_ratio, 4) for t in mine}):
            at_ratio = [t for t in mine if round(t.mask_ratio, 4) == ratio]
            best = _best_group(_by_configuration(at_ratio), sweep.metric, sweep.mode)
            summary = summarize_values(best, metric) if best else None
            if summary is not None:
                points.append({"mask_ratio": ratio, **summary, "lr": best[0].lr,
                               "lrs_tried": len({t.lr for t in at_ratio})})
        curves[method] = points
    return curves


def drop_curves(sweep: Sweep) -> dict[str, list[dict[str, float]]]:
    """Drop strategies against the drop ratio, with GMT's curve beside them."""
    curves = ratio_curves(sweep)
    return {m: c for m, c in curves.items() if m.startswith("drop-") or m == "gmt"}


def speed_table(sweep: Sweep) -> list[dict[str, float]]:
    """Per method: median over its trials of their mean samples/s and tokens/s, and the
    ratio to sft's (the paper's Table 3)."""
    rows = []
    for method in sorted({t.method for t in sweep.trials if t.status == "FINISHED"}, key=method_order):
        speeds = [sweep.throughput.get(t.run_id, {}) for t in sweep.trials if t.method == method and t.status == "FINISHED"]
        tokens = [s["tokens_per_s"] for s in speeds if "tokens_per_s" in s]
        samples = [s["samples_per_s"] for s in speeds if "samples_per_s" in s]
        if tokens:
            rows.append({"method": method, "tokens_per_s": statistics.median(tokens),
                         "samples_per_s": statistics.median(samples) if samples else math.nan, "trials": len(tokens)})
    sft = next((r for r in rows if r["method"] == "sft"), None)
    for row in rows:
        row["ratio_to_sft"] = row["tokens_per_s"] / sft["tokens_per_s"] if sft else math.nan
    return rows


def write_report(sweep: Sweep, out, *, log: bool = True) -> list:
    """Renders a sweep's report (Markdown and figures) into ``out`` and, with ``log``, logs
    it under ``report/`` of the sweep's parent run; returns the files written."""
    from pathlib import Path

    from gmt_ray.report.render import render
    from gmt_ray.tracking import client

    files = render(sweep, Path(out))
    if log:
        mlflow_client = client(sweep.tracking_uri)
        for path in files:
            mlflow_client.log_artifact(sweep.parent_run_id, str(path), artifact_path="report")
    return files
