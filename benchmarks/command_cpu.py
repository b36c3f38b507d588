"""Where a command's CPU goes: CPU seconds of every process it starts (its descendants, not
whatever else the machine runs meanwhile), grouped by Ray's process title
(``ray::RayTrainWorker``, ``ray::TrainController`` ...; other processes by their program),
with the wall time.

    python benchmarks/command_cpu.py -- python -m gmt_ray.sweep experiments/math.yaml --rehearse

On a CPU-bound machine a sweep's wall time follows its CPU seconds; this says whose they
are (docs/testing.md: a rehearsal's). Sampled from /proc every 0.1 s (Linux only) by
sweep_overhead.ProcessCpu: a process's CPU after its last sample is missed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from sweep_overhead import ProcessCpu  # this directory is on sys.path when run as a script


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--top", type=int, default=12, help="groups to show")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to measure after --")
    started = time.perf_counter()
    with ProcessCpu() as meter:
        returncode = subprocess.call(command)
    wall = time.perf_counter() - started
    total, groups = meter.table()
    print(f"{' '.join(command)}: exit {returncode}, {wall:.1f} s wall, {total:.1f} CPU-s in the processes it started")
    for name, (processes, cpu) in sorted(groups.items(), key=lambda kv: -kv[1][1])[:args.top]:
        print(f"  {cpu:8.1f} CPU-s  {processes:4d} process(es)  {name}")
    return returncode


if __name__ == "__main__":
    sys.exit(main())
