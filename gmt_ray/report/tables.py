"""The paper's views of a sweep's search stage: methods at their best configuration, mask-ratio
sensitivity, training speed, drop strategies; and the confirmation stage's scores per arm."""

from __future__ import annotations

import math
import statistics
from typing import Any

from gmt_ray.names import METHOD_LABELS
from gmt_ray.report.sweep import Sweep, Trial

__all__ = ["chosen_configurations", "confirm_table", "confirm_verdicts", "drop_curves", "edge_notes", "method_order",
           "method_table", "ratio_curves", "report_metrics", "speed_table", "summarize_values"]


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
    from gmt_ray.names import evaluation_scores

    names = set().union(*(evaluation_scores(t.metrics) for t in sweep.finished())) if sweep.finished() else set()
    columns = [sweep.metric] + sorted(k for k in names if k != sweep.metric)
    every = {k for t in sweep.finished() for k in t.metrics}
    if "val_loss" in every and "val_loss" not in columns:
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


def method_order(method: str) -> tuple:
    """Where a method label comes in a report's lists (names.METHOD_LABELS, then the rest by name)."""
    return (METHOD_LABELS.index(method) if method in METHOD_LABELS else len(METHOD_LABELS), method)


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
    done = [t for t in sweep.trials if t.status == "FINISHED"]  # both stages: each trial's own throughput
    for method in sorted({t.method for t in done}, key=method_order):
        speeds = [sweep.throughput.get(t.run_id, {}) for t in done if t.method == method]
        tokens = [s["tokens_per_s"] for s in speeds if "tokens_per_s" in s]
        samples = [s["samples_per_s"] for s in speeds if "samples_per_s" in s]
        if tokens:
            rows.append({"method": method, "tokens_per_s": statistics.median(tokens),
                         "samples_per_s": statistics.median(samples) if samples else math.nan, "trials": len(tokens)})
    sft = next((r for r in rows if r["method"] == "sft"), None)
    for row in rows:
        row["ratio_to_sft"] = row["tokens_per_s"] / sft["tokens_per_s"] if sft else math.nan
    return rows


def confirm_table(sweep: Sweep) -> list[dict[str, Any]]:
    """Per confirmed arm (method and mask ratio): its configuration, the seeds it ran, and the
    mean test score over them with a t interval over seeds."""
    trials = sweep.finished("confirm")
    arms = sorted({t.arm for t in trials}, key=lambda arm: (method_order(arm.method), arm.mask_ratio))
    rows = []
    for arm in arms:
        mine = [t for t in trials if t.arm == arm]
        rows.append({"arm": arm, "lr": mine[0].lr, "seeds": sorted(t.seed for t in mine),
                     "score": summarize_values(mine, sweep.test_metric)})
    return rows


def confirm_verdicts(sweep: Sweep, target_half_width: float | None = None) -> list:
    """The primary comparisons of the confirmation stage (``verdicts.primary_comparisons``),
    at the sweep's own confirm.alpha and confirm.min_effect, over as many looks as its
    sequential rounds allowed, and with ``target_half_width`` the seeds an interval that
    narrow would need; empty without a confirmation stage."""
    from gmt_ray.report.verdicts import looks_allowed, primary_comparisons, verdicts

    scores = sweep.confirm_scores()
    if not scores:
        return []
    confirm = sweep.config.get("confirm") or {}
    looks = looks_allowed(confirm.get("seeds", 0), confirm.get("max_seeds", 0), confirm.get("per_round", 1)) \
        if confirm.get("until_decisive") else 1
    return verdicts(scores, primary_comparisons(scores), alpha=confirm.get("alpha", 0.05),
                    min_effect=confirm.get("min_effect"), looks=looks, target_half_width=target_half_width)


def edge_notes(sweep: Sweep) -> list[str]:
    """Each group's chosen search value that lies at an end of its searched range
    (``SearchParam.edge``): "gmt@0.9: train.lr at the top of its range (0.0195 of [0.001, 0.02]):
    widen it"."""
    from gmt_ray.config import SearchParam

    space = {key: SearchParam(**value) for key, value in ((sweep.config.get("search") or {}).get("space") or {}).items()}
    notes = []
    for group, best in chosen_configurations(sweep).items():
        for key, param in space.items():
            if key in best.params:
                value = _typed(best.params[key])
                side = param.edge(value)
                if side is not None:
                    bounds = f"[{param.low:g}, {param.high:g}]" if param.type != "choice" else str(param.values)
                    notes.append(f"{group}: {key} at the {side} of its range ({value:g} of {bounds}): widen it")
    return notes


def chosen_configurations(sweep: Sweep) -> dict[str, Trial]:
    """Each search group's chosen configuration (its best search trial by the objective), by the
    group's name: its method label, and its mask ratio where the ratio is not itself searched."""
    ratio_searched = "mask.mask_ratio" in ((sweep.config.get("search") or {}).get("space") or {})
    chosen: dict[str, Trial] = {}
    pick = min if sweep.mode == "min" else max
    for trial in sweep.finished():
        group = trial.method if ratio_searched or not trial.mask_ratio else f"{trial.method}@{trial.mask_ratio:g}"
        value = trial.metrics[sweep.metric]
        if group not in chosen or (value != chosen[group].metrics[sweep.metric]
                                   and pick(value, chosen[group].metrics[sweep.metric]) == value):
            chosen[group] = trial
    return chosen


def _typed(value: str):
    try:
        return float(value)
    except (TypeError, ValueError):
        return value
