"""Markdown and PNG (matplotlib, no display needed) for a sweep's report."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from gmt_ray.names import METHOD_LABELS  # noqa: E402
from gmt_ray.report.sweep import Sweep  # noqa: E402
from gmt_ray.report.tables import (  # noqa: E402
    confirm_table,
    drop_curves,
    edge_notes,
    method_order,
    method_table,
    ratio_curves,
    speed_table,
)

__all__ = ["render"]

# One colour per method, fixed by its place in the method list (tab10 has one for each).
_COLORS = {method: matplotlib.colormaps["tab10"](index % 10) for index, method in enumerate(METHOD_LABELS)}


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _cell(summary: dict | None) -> str:
    if summary is None:
        return "-"
    if summary["low"] is None or summary["high"] is None:  # no interval: none is drawn either
        return _fmt(summary["mean"])
    return f"{_fmt(summary['mean'])} [{_fmt(summary['low'])}, {_fmt(summary['high'])}]"


def render(sweep: Sweep, out: Path, verdicts: list | None = None, markdown: Path | None = None) -> list[Path]:
    """Writes the report's Markdown (``markdown``, default ``out/report.md``) and its figures
    into ``out``; returns the files written, the Markdown first."""
    out.mkdir(parents=True, exist_ok=True)
    markdown = markdown or out / "report.md"
    figures = "" if markdown.parent.resolve() == out.resolve() else f"{out.name}/"  # links from the Markdown
    files: list[Path] = []
    searched = [t for t in sweep.trials if t.stage == "search"]
    lines = [f"# Report: sweep `{sweep.name}`", "",
             f"MLflow parent run `{sweep.parent_run_id}` in `{sweep.tracking_uri}`; objective `{sweep.metric}` "
             f"({sweep.mode}), measured on validation problems. {len(sweep.finished())} of {len(searched)} search "
             f"trials finished with the objective{_took(sweep)}.", ""]
    lines += _search_design(sweep)
    lines += _confirmation(sweep, verdicts or [])
    shown, drawn = _confirmation_figures(verdicts or [], out, figures)
    lines += shown
    files += drawn

    # 1. method x benchmark
    table = method_table(sweep)
    lines += ["## 1. Methods at their best configuration", "",
              "Each method's best configuration by the objective; mean and 95% interval over seeds where there "
              "are several (t), else the trial's own Wilson interval from its per-problem scores; none around a "
              "single validation loss. **Bold**: best in its column.", ""]
    header = ["method", "mask ratio", "lr", "seeds", *table["columns"]]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table["rows"]:
        cells = [row["method"], _fmt(row["mask_ratio"], 2), f"{row['lr']:.3g}", str(row["seeds"])]
        for column in table["columns"]:
            text = _cell(row["values"][column])
            cells.append(f"**{text}**" if table["best"].get(column) == row["method"] else text)
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if table["rows"]:
        files.append(_methods_figure(table, out / "methods.png"))
        lines += [f"![methods]({figures}methods.png)", ""]

    # 2. mask-ratio sensitivity
    curves = ratio_curves(sweep)
    lines += ["## 2. Mask-ratio sensitivity", "",
              f"`{sweep.metric}` against the mask ratio, at each ratio its best learning rate (of the "
              "learning rates tried there); mean and 95% interval over seeds where there are several.", ""]
    lines += ["| method | mask ratio | " + sweep.metric + " | best lr | lrs tried | seeds |", "|---|---|---|---|---|---|"]
    for method, points in curves.items():
        for p in points:
            lines.append(f"| {method} | {_fmt(p['mask_ratio'], 3)} | {_cell(p)} | {p['lr']:.3g} | {p['lrs_tried']} | "
                         f"{p['n']} |")
    lines.append("")
    if any(curves.values()):
        files.append(_curves_figure(curves, sweep.metric, out / "mask_ratio.png", "Mask-ratio sensitivity", "mask ratio"))
        lines += [f"![mask ratio]({figures}mask_ratio.png)", ""]

    # 3. training speed
    speed = speed_table(sweep)
    lines += ["## 3. Training speed", "",
              "Median over each method's trials of their mean throughput (reports after the first).", "",
              "| method | samples/s | tokens/s | ratio to sft | trials |", "|---|---|---|---|---|"]
    for row in speed:
        lines.append(f"| {row['method']} | {_fmt(row['samples_per_s'], 1)} | {_fmt(row['tokens_per_s'], 0)} | "
                     f"{_fmt(row['ratio_to_sft'], 3)} | {row['trials']} |")
    lines.append("")
    if speed:
        files.append(_speed_figure(speed, out / "speed.png"))
        lines += [f"![speed]({figures}speed.png)", ""]

    # 4. drop strategies
    drops = drop_curves(sweep)
    lines += ["## 4. Post-hoc drop of delta weights", ""]
    if any(m.startswith("drop-") for m in drops):
        lines += [f"Trivial (smallest deltas), random (DARE) and salient (largest) drop against the drop ratio, "
                  f"next to GMT at the same ratio; `{sweep.metric}`.", ""]
        files.append(_curves_figure(drops, sweep.metric, out / "drop.png", "Drop strategies vs GMT", "drop / mask ratio"))
        lines += [f"![drop]({figures}drop.png)", ""]
    else:
        lines += ["This sweep has no `drop` trials (add `drop` to search.methods and search.drop_strategies).", ""]

    # 5. learning rate x mask ratio
    lines += ["## 5. Learning rate x mask ratio", "", f"Every finished trial, coloured by `{sweep.metric}`.", ""]
    if sweep.finished():
        files.append(_map_figure(sweep, out / "lr_mask_ratio.png"))
        lines += [f"![lr x mask ratio]({figures}lr_mask_ratio.png)", ""]

    markdown.parent.mkdir(parents=True, exist_ok=True)
    markdown.write_text("\n".join(lines))
    return [markdown, *files]


def _took(sweep: Sweep) -> str:
    """``; the sweep took 1 h 05 min`` from its parent run's start and end (MLflow's clock)."""
    if not (sweep.started_ms and sweep.ended_ms):
        return ""
    minutes = round((sweep.ended_ms - sweep.started_ms) / 60000)
    return f"; the sweep ran {minutes // 60} h {minutes % 60:02d} min (its parent run's start to end)"


def _search_design(sweep: Sweep) -> list[str]:
    """How many configurations each group chose from, the sampler that proposed them, and the
    chosen values at an end of their range."""
    search = sweep.config.get("search") or {}
    counts: dict[str, int] = {}
    for trial in sweep.finished():
        key = trial.method if "mask.mask_ratio" in (search.get("space") or {}) or not trial.mask_ratio \
            else f"{trial.method}@{trial.mask_ratio:g}"
        counts[key] = counts.get(key, 0) + 1
    lines = []
    if counts:
        sampler = sweep.config.get("gmt_ray", {}).get("sampler_used") or search.get("sampler", "?")
        lines += [f"Search: each group chose from its finished trials ({', '.join(f'{k}: {v}' for k, v in counts.items())}); "
                  f"proposed by `{sampler}`.", ""]
    notes = edge_notes(sweep)
    if notes:
        lines += ["**Chosen at an end of the searched range** (the optimum may lie outside it):", ""]
        lines += [f"- {note}" for note in notes] + [""]
    elif counts and search.get("space") and all(_edge_checkable(param) for param in search["space"].values()):
        lines += ["Every chosen value lies inside its searched range (none in its outer 5%, "
                  "`SearchParam.edge`): the range brackets each group's optimum.", ""]
    return lines


def _edge_checkable(param: dict) -> bool:
    """Whether ``SearchParam.edge`` can tell an end of this searched entry: a range, or three or
    more numeric choices."""
    if param.get("type") != "choice":
        return True
    numbers = [v for v in param.get("values") or [] if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return len(numbers) >= 3


def _verdicts_figure(verdicts: list, path: Path) -> Path:
    """Each comparison's difference with its simultaneous interval, in points (a forest plot)."""
    shown = [v for v in verdicts if math.isfinite(v.low) and math.isfinite(v.high)]
    figure, axis = plt.subplots(figsize=(7.0, 0.55 * len(shown) + 1.4))
    for row, v in enumerate(shown):
        color = "#2ca02c" if v.decision == "a better" else "#d62728" if v.decision == "b better" else "#555555"
        axis.plot([100 * v.low, 100 * v.high], [row, row], color=color, linewidth=2.5)
        axis.plot([100 * v.difference], [row], "o", color=color)
    axis.axvline(0.0, color="black", linewidth=0.8)
    axis.set_yticks(range(len(shown)), [f"{v.a} - {v.b}" for v in shown], fontsize=8)
    axis.set_xlabel("difference in test accuracy (points): 95% simultaneous interval")
    axis.invert_yaxis()
    axis.grid(axis="x", alpha=0.3)
    return _save(figure, path)


def _confirmation(sweep: Sweep, verdicts: list) -> list[str]:
    """The confirmation stage: each arm's test score over its seeds, and the verdicts."""
    rows = confirm_table(sweep)
    if not rows:
        return ["No confirmation stage: the scores below are the search stage's, on validation problems "
                "(add `--set confirm.seeds=K` for K fresh seeds per chosen configuration on the test set).", ""]
    metric = sweep.test_metric
    lines = ["## Confirmation: chosen configurations, fresh seeds, the test problems", "",
             f"Each group's chosen configuration trained again with fresh seeds and evaluated on the same test "
             f"problems; `{metric}`: mean over seeds with a 95% t interval over seeds.", "",
             "| method | mask ratio | lr | seeds | " + metric + " |", "|---|---|---|---|---|"]
    for row in rows:
        arm = row["arm"]
        lines.append(f"| {arm.method} | {_fmt(arm.mask_ratio, 2)} | {row['lr']:.3g} | {len(row['seeds'])} | "
                     f"{_cell(row['score'])} |")
    lines.append("")
    if verdicts:
        lines += ["### Verdicts", "",
                  "gmt against each baseline at the same mask ratio: the difference a - b of the mean test score, "
                  "paired by seed and problem; its interval accounts for seed-to-seed and problem-to-problem "
                  "variance (two crossed random factors), simultaneous over the comparisons (Bonferroni), p-values "
                  "Holm-adjusted; MDE: the smallest difference this design detects with 80% power "
                  "(gmt_ray/report/verdicts.py).", ""]
        target = verdicts[0].target_half_width
        if target is not None:
            lines += [f"Seeds for +-{target * 100:g} points: how many seeds per arm, on these problems, would bring "
                      f"the interval to +-{target:g} in a fixed design over these comparisons (this design's seed "
                      "and problem variance, the seed terms shrinking with more seeds; `seeds_for_half_width`); "
                      "'-': more problems are needed, not seeds; 'n/a': fewer than 2 seeds, no spread to "
                      "extrapolate from.", ""]
        extra = f" seeds for +-{target * 100:g} points |" if target is not None else ""
        lines += ["| a | b | difference | 95% interval | p (Holm) | seeds | problems | MDE | verdict |" + extra,
                  "|---|---|---|---|---|---|---|---|---|" + ("---|" if target is not None else "")]
        for v in verdicts:
            needed = "" if target is None else \
                f" {v.seeds_for_target if v.seeds_for_target is not None else 'n/a' if v.seeds < 2 else '-'} |"
            lines.append(f"| {v.a} | {v.b} | {_signed(v.difference)} | [{_signed(v.low)}, {_signed(v.high)}] | "
                         f"{_fmt(v.p_value, 3)} | {v.seeds} | {v.problems} | {_fmt(v.min_detectable_effect, 3)} | "
                         f"{v.decision} |" + needed)
        lines.append("")
    return lines


def _confirmation_figures(verdicts: list, out: Path, figures: str) -> tuple[list[str], list[Path]]:
    if not any(math.isfinite(v.low) for v in verdicts):
        return [], []
    path = _verdicts_figure(verdicts, out / "verdicts.png")
    return [f"![verdicts]({figures}verdicts.png)", ""], [path]


def _signed(value: float) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:+.4f}"


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _methods_figure(table: dict, path: Path) -> Path:
    columns = table["columns"]
    figure, axes = plt.subplots(1, len(columns), figsize=(4.2 * len(columns), 3.6), squeeze=False)
    for axis, column in zip(axes[0], columns):
        rows = [r for r in table["rows"] if r["values"][column] is not None]
        means = [r["values"][column]["mean"] for r in rows]
        errors = _error_bars([r["values"][column] for r in rows])
        colors = [_COLORS.get(r["method"], "#7f7f7f") for r in rows]
        axis.bar([r["method"] for r in rows], means, yerr=errors, color=colors, capsize=4)
        axis.set_title(column, fontsize=10)
        axis.tick_params(axis="x", rotation=30, labelsize=8)
        if means:
            spread = max(means) - min(means) or abs(max(means)) or 1.0
            low = min(m - (e if math.isfinite(e) else 0.0) for m, e in zip(means, errors[0]))
            axis.set_ylim(max(0.0, low - 0.5 * spread) if low >= 0 else low - 0.5 * spread, None)
    figure.suptitle("Methods at their best configuration (95% intervals where there is one)", fontsize=11)
    return _save(figure, path)


def _error_bars(summaries: list[dict]) -> list[list[float]]:
    """matplotlib's [below, above] bars; a value without an interval gets none (NaN)."""
    def bar(s, side):
        if s["low"] is None or s["high"] is None:
            return math.nan
        return s["mean"] - s["low"] if side == 0 else s["high"] - s["mean"]

    return [[bar(s, 0) for s in summaries], [bar(s, 1) for s in summaries]]


def _curves_figure(curves: dict, metric: str, path: Path, title: str, xlabel: str) -> Path:
    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    for method, points in curves.items():
        if not points:
            continue
        color = _COLORS.get(method, None)
        if len(points) == 1 and points[0]["mask_ratio"] == 0:  # sft, hft: a reference line
            axis.axhline(points[0]["mean"], color=color, linestyle="--", label=f"{method}")
            continue
        x = [p["mask_ratio"] for p in points]
        y = [p["mean"] for p in points]
        tried = sorted({p.get("lrs_tried", 1) for p in points})
        label = f"{method} (best of {'/'.join(map(str, tried))} lr)" if tried != [1] else method
        axis.errorbar(x, y, yerr=_error_bars(points), marker="o", capsize=3, color=color, label=label)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(metric)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return _save(figure, path)


def _speed_figure(rows: list[dict], path: Path) -> Path:
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    methods = [r["method"] for r in rows]
    colors = [_COLORS.get(m, "#7f7f7f") for m in methods]
    axes[0].bar(methods, [r["tokens_per_s"] for r in rows], color=colors)
    axes[0].set_title("tokens/s")
    axes[1].bar(methods, [r["ratio_to_sft"] for r in rows], color=colors)
    axes[1].axhline(1.0, color="black", linewidth=0.8)
    axes[1].set_title("throughput ratio to sft")
    for axis in axes:
        axis.tick_params(axis="x", rotation=30, labelsize=8)
    return _save(figure, path)


def _map_figure(sweep: Sweep, path: Path) -> Path:
    trials = sweep.finished()
    methods = sorted({t.method for t in trials}, key=method_order)
    values = [t.metrics[sweep.metric] for t in trials]
    columns = min(4, len(methods))
    rows = math.ceil(len(methods) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.4 * columns + 1.2, 3.0 * rows), squeeze=False,
                                sharex=True, sharey=True, layout="constrained")
    scatter = None
    for index, axis in enumerate(axes.flat):
        if index >= len(methods):
            axis.set_visible(False)
            continue
        mine = [t for t in trials if t.method == methods[index]]
        scatter = axis.scatter([t.lr for t in mine], [t.mask_ratio for t in mine],
                               c=[t.metrics[sweep.metric] for t in mine], cmap="viridis_r" if sweep.mode == "min"
                               else "viridis", vmin=min(values), vmax=max(values), s=60, edgecolors="black")
        axis.set_xscale("log")
        # Labels at 1 and 3 of each decade only: matplotlib's minor labels overlap within a decade.
        axis.xaxis.set_major_locator(LogLocator(subs=(1.0, 3.0)))
        axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.set_title(methods[index], fontsize=10)
        axis.grid(alpha=0.3)
        if index % columns == 0:
            axis.set_ylabel("mask ratio")
        if index >= len(methods) - columns:
            axis.set_xlabel("learning rate")
    if scatter is not None:
        figure.colorbar(scatter, ax=axes, label=sweep.metric, shrink=0.9)
    figure.suptitle(f"{sweep.metric} over learning rate and mask ratio")
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
