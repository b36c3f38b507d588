"""How much of a grid's budget the sweep's search spends before it finds the best configuration.

    python benchmarks/search_efficiency.py [--seeds 20]
    # record another finished sweep's trials as the grid, then replay it:
    python benchmarks/search_efficiency.py --record --tracking-uri sqlite:///$PWD/mlflow.db --sweep NAME

The recorded grid (benchmarks/data/search_grid.jsonl) is every trial of an earlier
experiments/replication.yaml (a grid sweep; the file has since been redesigned for verdicts and
no longer records this grid): 14 (method, mask ratio) groups at 3 learning rates x 3 seeds,
with its validation-loss curve (every 10 of its 50 steps) and its final accuracy on 256
held-out problems. The replay runs the sweep's own search (``GroupedOptunaSearch``: one Optuna
study per group, the groups taking turns) and Ray Tune's ``ASHAScheduler`` exactly as a sweep
builds them (``build_scheduler``), over a search space of the grid's own learning rates; a
suggested (group, lr) gets its next recorded seed, so that repeats are real repeats. Two trials
run at once, advancing one evaluation interval at a time (the scheduler sees every report, the
searcher every completion), which stands in for Tune's event loop so that hundreds of replayed
sweeps take seconds.

"Found" is the first completed trial whose accuracy lies within the 95% interval of the grid's
best trial; its cost is every trial-step spent until then by every trial started, early-stopped
ones included, as a fraction of the whole grid's trial-steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data" / "search_grid.jsonl"
STRATEGIES = ("grid", "random", "tpe", "tpe+asha")


@dataclass
class Recorded:
    method: str  # drop-<strategy> for drop
    mask_ratio: float
    lr: float
    seed: int
    curve: list[tuple[int, float]]  # (step, val_loss)
    accuracy: float
    accuracy_low: float
    accuracy_high: float

    @property
    def steps(self) -> int:
        return self.curve[-1][0]


def record(tracking_uri: str, sweep: str, out: Path) -> int:
    """Writes the trials of a finished sweep (its latest parent run) as the grid file."""
    from gmt_ray.tracking import SweepRuns, find_parent_run

    runs = SweepRuns(tracking_uri, find_parent_run(tracking_uri, sweep))
    rows = []
    for run in runs.trials("attributes.status = 'FINISHED'"):
        p, m = run.data.params, run.data.metrics
        if "arithmetic_accuracy" not in m:
            continue
        method = p.get("mask.method")
        if method == "drop":
            method = f"drop-{p.get('mask.drop_strategy', 'trivial')}"
        history = sorted((h.step, h.value) for h in runs.client.get_metric_history(run.info.run_id, "val_loss"))
        rows.append({"method": method, "mask_ratio": float(p.get("mask.mask_ratio", 0.0)), "lr": float(p["train.lr"]),
                     "seed": int(p.get("train.seed", 0)), "curve": [[int(s), round(v, 5)] for s, v in history],
                     "accuracy": m["arithmetic_accuracy"], "accuracy_low": m["arithmetic_accuracy_low"],
                     "accuracy_high": m["arithmetic_accuracy_high"]})
    rows.sort(key=lambda r: (r["method"], r["mask_ratio"], r["lr"], r["seed"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return len(rows)


def load_grid(path: Path) -> list[Recorded]:
    return [Recorded(**{**row, "curve": [tuple(p) for p in row["curve"]]})
            for row in map(json.loads, path.read_text().splitlines())]


# ASHA's rungs as fractions of a trial's steps, and how many trials a rung keeps (1 in
# reduction_factor). Set from this replay's ASHA table: the first rung at 60% of the steps,
# keeping half, found the grid's best in every seed; earlier or harsher rungs stop the
# eventual best on its early validation loss.
ASHA_GRACE_FRACTION, ASHA_REDUCTION_FACTOR = 0.6, 2
ASHA_SETTINGS = ((0.2, 3), (0.2, 2), (0.4, 2), (0.6, 3), (0.6, 2), (0.8, 2))


def replay_config(grid: list[Recorded], strategy: str, seed: int,
                  asha: tuple[float, float] = (ASHA_GRACE_FRACTION, ASHA_REDUCTION_FACTOR)):
    """The sweep whose search and scheduler the replay runs: the grid's groups and learning
    rates, one sampler per strategy, ASHA for tpe+asha (first rung at ``asha[0]`` of the
    steps, reduction factor ``asha[1]``)."""
    from gmt_ray.config import load_experiment

    methods = sorted({r.method.split("-")[0] for r in grid}, key=["sft", "gmt", "rmt", "hft", "drop"].index)
    ratios = sorted({r.mask_ratio for r in grid if r.mask_ratio > 0})
    lrs = sorted({r.lr for r in grid})
    per_group = len(lrs) * len({r.seed for r in grid})
    steps = max(r.steps for r in grid)
    return load_experiment(None, {
        "name": "replay", "train.max_steps": steps,
        "search.methods": methods, "search.mask_ratios": ratios,
        "search.space": {"train.lr": {"type": "choice", "values": lrs}},
        "search.sampler": "random" if strategy == "random" else "tpe",
        # TPE: a Sobol start of one lr in three of each group's budget, then its model.
        "search.startup_trials": len(lrs), "search.num_samples": per_group, "search.seed": seed,
        # The recorded accuracy stands in for the validation score the search chooses on (a sweep
        # may not choose on its test problems; this replay only chooses, it reports no verdict).
        "search.metric": "val_arithmetic_accuracy", "search.mode": "max",
        "search.scheduler": "asha" if strategy == "tpe+asha" else "none",
        "search.asha": {"metric": "val_loss", "mode": "min", "grace_period": max(1, round(steps * asha[0])),
                        "reduction_factor": asha[1]},
        "eval.benchmarks": ["arithmetic"],
    })


class _Trial:  # what ASHAScheduler reads of a Tune trial
    def __init__(self, trial_id: str):
        self.trial_id = trial_id


@dataclass
class _Running:
    trial: _Trial
    recorded: Recorded
    position: int = 0  # curve points reported so far


@dataclass
class Outcome:
    fraction: float | None  # of the grid's trial-steps spent until found (None: never found)
    trials_started: int = 0
    stopped_early: int = 0
    groups_without_result: int = 0  # (method, ratio) groups whose every trial was stopped early
    found: Recorded | None = field(default=None, repr=False)


def replay(grid: list[Recorded], strategy: str, seed: int, concurrency: int = 2,
           asha: tuple[float, float] = (ASHA_GRACE_FRACTION, ASHA_REDUCTION_FACTOR)) -> Outcome:
    from ray.tune.schedulers import TrialScheduler

    from gmt_ray.sweep.search import GroupedOptunaSearch, build_scheduler

    best = max(grid, key=lambda r: r.accuracy)
    budget = sum(r.steps for r in grid)
    by_config: dict[tuple, list[Recorded]] = {}
    for r in grid:
        by_config.setdefault((r.method, r.mask_ratio, r.lr), []).append(r)
    used = {key: 0 for key in by_config}
    rng = np.random.default_rng(seed)
    order = {key: list(rng.permutation(len(rows))) for key, rows in by_config.items()}  # each config's seeds in turn

    if strategy == "grid":  # every recorded trial once, in a random order
        queue = [grid[i] for i in rng.permutation(len(grid))]
        searcher, scheduler = None, None
    else:
        config = replay_config(grid, strategy, seed, asha)
        searcher = GroupedOptunaSearch(config)
        np.random.seed(seed)  # ASHA draws each trial's bracket from numpy's global generator
        scheduler = build_scheduler(config)

    def next_trial(index: int) -> Recorded | None:
        if searcher is None:
            return queue[index] if index < len(queue) else None
        params = searcher.suggest(str(index))
        if params is None or params == searcher.FINISHED:
            return None
        method = params["mask.method"] + (f"-{params['mask.drop_strategy']}" if "mask.drop_strategy" in params else "")
        if params["mask.method"] == "drop" and "mask.drop_strategy" not in params:
            method = "drop-trivial"
        key = (method, float(params["mask.mask_ratio"]), float(params["train.lr"]))
        rows = by_config[key]
        chosen = rows[order[key][used[key] % len(rows)]]
        used[key] += 1
        return chosen

    outcome = Outcome(fraction=None)
    spent, started, running = 0, 0, []
    completed_groups: set[tuple[str, float]] = set()
    while True:
        while len(running) < concurrency:
            recorded = next_trial(started)
            if recorded is None:
                break
            trial = _Trial(str(started))
            started += 1
            if scheduler is not None:
                scheduler.on_trial_add(None, trial)
            running.append(_Running(trial, recorded))
        if not running:
            break
        for run in list(running):  # every running trial reaches its next evaluation interval
            step, val_loss = run.recorded.curve[run.position]
            spent += step - (run.recorded.curve[run.position - 1][0] if run.position else 0)
            run.position += 1
            result = {"step": step, "val_loss": val_loss}
            finished = run.position == len(run.recorded.curve)
            if not finished and scheduler is not None and \
                    scheduler.on_trial_result(None, run.trial, result) == TrialScheduler.STOP:
                outcome.stopped_early += 1
                if searcher is not None:
                    searcher.on_trial_complete(run.trial.trial_id, result)
                running.remove(run)
                continue
            if finished:
                final = {**result, "val_arithmetic_accuracy": run.recorded.accuracy}
                if scheduler is not None:
                    scheduler.on_trial_complete(None, run.trial, final)
                if searcher is not None:
                    searcher.on_trial_complete(run.trial.trial_id, final)
                running.remove(run)
                completed_groups.add((run.recorded.method, run.recorded.mask_ratio))
                if outcome.fraction is None and run.recorded.accuracy >= best.accuracy_low:
                    outcome.fraction, outcome.found = spent / budget, run.recorded
    outcome.trials_started = started
    outcome.groups_without_result = len({(r.method, r.mask_ratio) for r in grid} - completed_groups)
    return outcome


def _row(label: str, outcomes: list[Outcome]) -> tuple[str, float]:
    fractions = [o.fraction for o in outcomes if o.fraction is not None]
    found = len(fractions)
    fractions = fractions or [float("nan")]
    quartiles = np.percentile(fractions, [25, 75])
    median = statistics.median(fractions)
    return (f"{label:<12}{median:>8.2f}{quartiles[0]:>7.2f}{quartiles[1]:>7.2f}{min(fractions):>7.2f}"
            f"{max(fractions):>7.2f}{f'{found}/{len(outcomes)}':>9}"
            f"{statistics.median(o.trials_started for o in outcomes):>8.0f}"
            f"{statistics.median(o.stopped_early for o in outcomes):>9.0f}"
            f"{statistics.median(o.groups_without_result for o in outcomes):>11.0f}"), median


HEADER = f"{'':<12}{'median':>8}{'p25':>7}{'p75':>7}{'min':>7}{'max':>7}{'found':>9}{'trials':>8}{'stopped':>9}{'no result':>11}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--seeds", type=int, default=20, help="search seeds per strategy")
    parser.add_argument("--record", action="store_true", help="write --data from a finished sweep in MLflow")
    parser.add_argument("--tracking-uri", help="with --record: the MLflow store (default: ./mlflow.db)")
    parser.add_argument("--sweep", default="replication", help="with --record: the sweep's name")
    args = parser.parse_args()
    if args.record:
        from gmt_ray.tracking import resolve_tracking_uri

        count = record(resolve_tracking_uri(args.tracking_uri), args.sweep, args.data)
        print(f"recorded {count} trials of sweep {args.sweep!r} into {args.data}")
        return 0
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    grid = load_grid(args.data)
    best = max(grid, key=lambda r: r.accuracy)
    groups = {(r.method, r.mask_ratio) for r in grid}
    print(f"grid: {len(grid)} recorded trials in {len(groups)} (method, mask ratio) groups, "
          f"{sum(r.steps for r in grid)} trial-steps; best: {best.method} r={best.mask_ratio} lr={best.lr:g} "
          f"seed {best.seed}, accuracy {best.accuracy:.3f} [{best.accuracy_low:.3f}, {best.accuracy_high:.3f}]")
    print(f"found = the first completed trial with accuracy >= {best.accuracy_low:.3f}; cost = trial-steps spent "
          f"by then / the grid's; {args.seeds} search seeds per strategy, 2 trials at a time;\n"
          f"trials, stopped (early by ASHA) and no result (groups whose every trial ASHA stopped, which a "
          f"method comparison then lacks) are medians over the seeds\n")
    started = time.perf_counter()
    print(HEADER.replace(" " * 12, f"{'strategy':<12}", 1))
    medians = {}
    for strategy in STRATEGIES:
        line, medians[strategy] = _row(strategy, [replay(grid, strategy, seed) for seed in range(args.seeds)])
        print(line)
    print(f"\nTPE+ASHA by ASHA's first rung (fraction of the steps) and reduction factor; the line above "
          f"uses {ASHA_GRACE_FRACTION:g} / {ASHA_REDUCTION_FACTOR:g}")
    print(HEADER.replace(" " * 12, f"{'rung / rf':<12}", 1))
    for asha in ASHA_SETTINGS:
        print(_row(f"{asha[0]:g} / {asha[1]:g}", [replay(grid, "tpe+asha", seed, asha=asha)
                                                 for seed in range(args.seeds)])[0])
    print(f"\n(replays took {time.perf_counter() - started:.0f} s)")
    print(f"TPE+ASHA: median {medians['tpe+asha']:.2f} of the grid's trial-steps ({args.seeds} seeds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
