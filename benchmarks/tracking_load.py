"""Tracking under load: simulated trials log through gmt_ray's own tracking path to a real
`mlflow server`, which is stopped and restarted mid-run; then every point is read back.

    python benchmarks/tracking_load.py [--backends sqlite,postgresql] [--seconds 60] [--speedup 10]

The paper sweep's logging rate (experiments/math.yaml on the nodes of docs/scaling.md):
4 trials at once, each one 8-GPU node at ~55,000 tokens/s (8P, gradient checkpointing);
an optimizer step is 128 sequences x 512 tokens = 65,536 tokens, ~1.19 s, and a trial
reports every `train.log_every` = 10 steps, ~11.9 s, ~20 metrics a report (13 step
figures, val_loss and 6 benchmark scores and bounds at evaluations; 20 is the upper end).
That is 4 x 20 / 11.9 = ~6.7 points/s. Every `train.eval_every` = 500 steps (~596 s) a
trial writes its per-sample rows: GSM8K's 1,319 and MATH's 5,000 test problems, ~42 rows/s
over 4 trials.

This script runs `--speedup` (10) times that: 4 x 10 simulated trials, each a thread at one
trial's pace (reports staggered, each trial's first evaluation at a random point of its
interval), calling `SweepRuns.log_step` and `SweepRuns.log_eval_rows` as the sweep's Tune
callback does. A quarter into the run the server is stopped (SIGTERM; `--kill`: SIGKILL)
and started again on the same port and store; logging goes on until `--seconds` have
passed and at least 10 s after the server is back. Then every metric history and every
evaluation file is read back from the server and compared with what was sent:
`lost` counts sent points that are not there, `duplicated` points that are there twice.

Per backend: SQLite, and PostgreSQL where its server binaries are installed (a throwaway
cluster on a loopback port, as the tests start it; without it the script says why and
runs SQLite alone). Everything binds 127.0.0.1. Exits 1 if anything is lost or
duplicated. The per-sample rows are shortened (`--row-chars`, the count is the paper's) so
that a run stays within a few minutes on a small machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.servers: the tests' own servers

from gmt_ray.tracking import DEFAULT_RETRY_WINDOW_S, SweepRuns, TrackingUnavailable  # noqa: E402
from tests.servers import MlflowServer, PostgresUnavailable, postgres_cluster  # noqa: E402

# The paper sweep (see the docstring).
PAPER_TRIALS = 4
TOKENS_PER_STEP = 128 * 512
TOKENS_PER_S = 55_000
LOG_EVERY = 10
EVAL_EVERY = 500
METRICS_PER_REPORT = 20
EVAL_ROWS = {"gsm8k": 1319, "math": 5000}
REPORT_INTERVAL_S = LOG_EVERY * TOKENS_PER_STEP / TOKENS_PER_S
PAPER_POINTS_PER_S = PAPER_TRIALS * METRICS_PER_REPORT / REPORT_INTERVAL_S
PAPER_ROWS_PER_S = PAPER_TRIALS * sum(EVAL_ROWS.values()) / (REPORT_INTERVAL_S * EVAL_EVERY / LOG_EVERY)
METRICS = ["loss", "lr", "grad_norm", "kept_fraction", "tokens_per_s", "samples_per_s", "time_fwd_bwd_s",
           "time_mask_s", "time_optim_s", "epoch", "step", "resumed_from_step", "peak_memory_mb", "val_loss",
           "gsm8k_accuracy", "gsm8k_accuracy_low", "gsm8k_accuracy_high", "math_accuracy", "math_accuracy_low",
           "math_accuracy_high"][:METRICS_PER_REPORT]


class Trial(threading.Thread):
    """One simulated trial: a report every interval, evaluation rows every EVAL_EVERY steps."""

    def __init__(self, runs: SweepRuns, run_id: str, index: int, interval: float, stop: threading.Event,
                 workdir: Path, row_chars: int, seed: int):
        super().__init__(name=f"trial-{index}", daemon=True)
        self.runs, self.run_id, self.interval, self.stop, self.workdir = runs, run_id, interval, stop, workdir
        self.row_chars = row_chars
        self.random = random.Random(seed)
        # Where in its run the trial is: its first evaluation falls anywhere in one eval interval.
        self.step = self.random.randrange(0, EVAL_EVERY, LOG_EVERY)
        self.sent: dict[str, list[tuple[int, float]]] = {}
        self.rows_sent: dict[str, int] = {}  # eval file name -> rows
        self.step_calls: list[tuple[float, float]] = []  # (time.monotonic() at the call, seconds it took)
        self.eval_latency: list[float] = []
        self.unlogged: list[TrackingUnavailable] = []  # reported by the tracking path, not silent

    def run(self) -> None:
        next_report = time.monotonic() + self.random.uniform(0, self.interval)
        while not self.stop.wait(max(0.0, next_report - time.monotonic())):
            next_report += self.interval
            self.step += LOG_EVERY
            metrics = {name: self.random.random() for name in METRICS}
            start = time.monotonic()
            try:
                self.runs.log_step(self.run_id, metrics, step=self.step)
            except TrackingUnavailable as e:
                self.unlogged.append(e)
            self.step_calls.append((start, time.monotonic() - start))
            for name, value in metrics.items():
                self.sent.setdefault(name, []).append((self.step, value))
            if self.step % EVAL_EVERY == 0:
                self.evaluate()

    def evaluate(self) -> None:
        with tempfile.TemporaryDirectory(dir=self.workdir) as directory:
            (Path(directory) / "eval").mkdir()
            for benchmark, count in EVAL_ROWS.items():
                name = f"step{self.step}-{benchmark}.jsonl"
                with open(Path(directory) / "eval" / name, "w") as file:
                    for i in range(count):
                        file.write(json.dumps({
                            "step": self.step, "task_id": f"{benchmark}/{i}", "prompt": "q" * (self.row_chars // 2),
                            "completion": "a" * (self.row_chars // 2), "extracted": str(i), "gold": str(i),
                            "correct": self.random.random() < 0.5}) + "\n")
                self.rows_sent[name] = count
            start = time.perf_counter()
            try:
                self.runs.log_eval_rows(self.run_id, directory)
            except TrackingUnavailable as e:
                self.unlogged.append(e)
            self.eval_latency.append(time.perf_counter() - start)


def outage(server: MlflowServer, at: float, down: float, kill: bool, record: dict) -> None:
    """Stops the server ``at`` seconds in, starts it again ``down`` seconds later."""
    time.sleep(at)
    record["stopped_at"] = time.monotonic()
    (server.kill if kill else server.stop)()
    time.sleep(down)
    server.start()
    record["back_at"] = time.monotonic()


def read_back(runs: SweepRuns, trials: list[Trial]) -> dict[str, int]:
    """Every metric history and evaluation file from the server, compared with what was sent.

    Histories come through the UI's bulk endpoint, one key of up to 100 runs a request
    (one request per run and key would make the read-back the longest part of the run).
    """
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request, verify_rest_response

    client, creds, counts, lock = runs.client, get_default_host_creds(runs.tracking_uri), Counter(), threading.Lock()
    by_run = {trial.run_id: trial for trial in trials}

    def histories(key: str, run_ids: list[str]) -> None:
        endpoint = "/ajax-api/2.0/mlflow/metrics/get-history-bulk"
        response = http_request(creds, endpoint, "GET", params={"run_id": run_ids, "metric_key": key,
                                                                 "max_results": 25000})
        points = json.loads(verify_rest_response(response, endpoint).text).get("metrics", [])
        if len(points) >= 25000:
            raise SystemExit(f"read-back: {key} of {len(run_ids)} runs reached the endpoint's 25,000 points: "
                             "fewer runs a request")
        found, mine = {run_id: Counter() for run_id in run_ids}, Counter()
        for point in points:
            found[point["run_id"]][(int(point["step"]), float(point["value"]))] += 1
        for run_id in run_ids:
            sent = by_run[run_id].sent.get(key, [])
            mine["points"] += len(sent)
            mine["lost"] += sum(1 for point in sent if found[run_id][point] == 0)
            mine["duplicated"] += sum(max(0, found[run_id][point] - 1) for point in set(sent))
            mine["unknown"] += sum(n for point, n in found[run_id].items() if point not in set(sent))
        with lock:
            counts.update(mine)

    def eval_files(trial: Trial) -> None:
        mine = Counter()
        with tempfile.TemporaryDirectory() as directory:
            for name, sent in trial.rows_sent.items():
                mine["points"] += sent
                mine["rows"] += sent
                stem = name[: -len(".jsonl")]
                try:
                    jsonl = client.download_artifacts(trial.run_id, f"eval/{name}", directory)
                    table = client.download_artifacts(trial.run_id, f"eval/{stem}.table.json", directory)
                except Exception:  # not there
                    mine["lost"] += sent
                    continue
                lines = sum(1 for line in Path(jsonl).read_text().splitlines() if line.strip())
                table_rows = len(json.loads(Path(table).read_text())["data"])
                mine["lost"] += max(0, sent - min(lines, table_rows))
                mine["duplicated"] += max(0, max(lines, table_rows) - sent)
        with lock:
            counts.update(mine)

    run_ids = [trial.run_id for trial in trials]
    with ThreadPoolExecutor(4) as pool:
        jobs = [pool.submit(histories, key, run_ids[i : i + 100]) for key in METRICS for i in range(0, len(run_ids), 100)]
        jobs += [pool.submit(eval_files, t) for t in trials]
        for job in jobs:
            job.result()
    return dict(counts)


def run_backend(name: str, backend_uri: str, args, workdir: Path) -> dict:
    server = MlflowServer(backend_uri, workdir / f"{name}-server", auth=args.auth, workers=args.workers)
    started = time.monotonic()
    server.start()
    server_start_s = time.monotonic() - started
    os.environ.update(server.client_env)  # the MLflow clients here read the admin's login from it
    try:
        runs = SweepRuns.start(server.url, "tracking-load", f"load-{name}", {"benchmark": "tracking_load"}, "")
        runs.retry_window_s = args.retry_window
        events: list[tuple[float, str, dict]] = []
        runs.notify = lambda event, **payload: events.append((time.monotonic(), event, payload))
        count = args.speedup * PAPER_TRIALS
        with ThreadPoolExecutor(8) as pool:
            run_ids = list(pool.map(lambda i: runs.open_trial(f"t{i:03d}", f"trial_{i:03d}", {"index": i}),
                                    range(count)))
        stop = threading.Event()
        trials = [Trial(runs, run_id, i, REPORT_INTERVAL_S, stop, workdir, args.row_chars, seed=i)
                  for i, run_id in enumerate(run_ids)]
        record: dict[str, float] = {}
        start = time.monotonic()
        breaker = threading.Thread(target=outage, args=(server, args.seconds / 4, args.down, args.kill, record),
                                   daemon=True)
        for thread in [*trials, breaker]:
            thread.start()
        breaker.join(timeout=args.seconds + 600)
        while time.monotonic() < max(start + args.seconds, record.get("back_at", 0) + 10):
            time.sleep(0.5)
        stop.set()
        for trial in trials:
            trial.join()
        elapsed = time.monotonic() - start
        counts = read_back(runs, trials)
    finally:
        server.stop()
    calls = [call for t in trials for call in t.step_calls]
    step_latency = sorted(seconds for _, seconds in calls)
    # Calls that neither began nor ended while the server was down: the latency of a healthy server.
    stopped, back = record.get("stopped_at", math.inf), record.get("back_at", math.inf)
    healthy = sorted(seconds for start, seconds in calls if start + seconds < stopped or start > back)
    eval_latency = sorted(x for t in trials for x in t.eval_latency)
    return {
        "name": name, "trials": count, "seconds": elapsed, "server_start_s": server_start_s,
        "down_s": record.get("back_at", math.nan) - record.get("stopped_at", math.nan), "counts": counts,
        "metric_points": counts["points"] - counts.get("rows", 0), "rows": counts.get("rows", 0),
        "step_calls": len(step_latency), "step_latency": step_latency, "eval_latency": eval_latency,
        "healthy_latency": healthy,
        "unlogged": [e for t in trials for e in t.unlogged], "events": Counter(e for _, e, _ in events),
    }


def percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def report(result: dict) -> None:
    name, counts = result["name"], result["counts"]
    steps, evals = result["step_latency"], result["eval_latency"]
    print(f"{name}: {result['trials']} trials for {result['seconds']:.0f} s: {result['metric_points']} metric points "
          f"({result['metric_points'] / result['seconds']:.1f}/s) in {result['step_calls']} log_step calls, "
          f"{result['rows']} eval rows ({result['rows'] / result['seconds']:.0f}/s) in {len(evals)} log_eval_rows calls")
    healthy = result["healthy_latency"]
    print(f"{name}: log_step p50 {percentile(steps, 0.5) * 1000:.0f} ms, p99 {percentile(steps, 0.99) * 1000:.0f} ms, "
          f"max {max(steps, default=0):.1f} s (away from the outage: p50 {percentile(healthy, 0.5) * 1000:.0f} ms, "
          f"p99 {percentile(healthy, 0.99) * 1000:.0f} ms); log_eval_rows p50 {percentile(evals, 0.5):.1f} s, "
          f"max {max(evals, default=0):.1f} s; server down {result['down_s']:.1f} s "
          f"(start-up {result['server_start_s']:.0f} s); events: "
          f"{', '.join(f'{event} x{n}' for event, n in result['events'].items()) or 'none'}")
    for error in result["unlogged"][:5]:
        print(f"{name}: reported, not logged: {error}")
    print(f"{name}: lost: {counts.get('lost', 0)} of {counts.get('points', 0)} points "
          f"({result['metric_points']} metric points + {result['rows']} eval rows); "
          f"duplicated: {counts.get('duplicated', 0)}; reported unlogged: {sum(e.points for e in result['unlogged'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--seconds", type=float, default=60.0, help="logging time per backend (at least)")
    parser.add_argument("--speedup", type=int, default=10, help="times the paper sweep's rate (trials = 4 x this)")
    parser.add_argument("--down", type=float, default=3.0, help="seconds between stopping and starting the server")
    parser.add_argument("--kill", action="store_true", help="SIGKILL the server rather than stop it")
    parser.add_argument("--retry-window", type=float, default=DEFAULT_RETRY_WINDOW_S)
    parser.add_argument("--row-chars", type=int, default=200, help="characters of prompt + completion per eval row")
    parser.add_argument("--workers", type=int, default=1, help="mlflow server --workers")
    parser.add_argument("--auth", action="store_true",
                        help="MLflow's basic-auth app as cluster.yaml runs it (no credential cache: a password hash "
                             "check per request)")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # the read-back downloads
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    began = time.monotonic()
    print(f"paper sweep's logging rate (experiments/math.yaml at docs/scaling.md's throughput): {PAPER_TRIALS} trials "
          f"x {METRICS_PER_REPORT} metrics every {REPORT_INTERVAL_S:.1f} s = {PAPER_POINTS_PER_S:.1f} points/s, and "
          f"{sum(EVAL_ROWS.values())} eval rows per trial every {REPORT_INTERVAL_S * EVAL_EVERY / LOG_EVERY:.0f} s = "
          f"{PAPER_ROWS_PER_S:.0f} rows/s")
    print(f"this run: {args.speedup}x that ({args.speedup * PAPER_TRIALS} trials, "
          f"{args.speedup * PAPER_POINTS_PER_S:.0f} points/s, {args.speedup * PAPER_ROWS_PER_S:.0f} rows/s); the server "
          f"is {'killed' if args.kill else 'stopped'} {args.seconds / 4:.0f} s in and started again after "
          f"{args.down:.0f} s; retry window {args.retry_window:.0f} s; basic auth {'on' if args.auth else 'off'}")
    failed = False
    with tempfile.TemporaryDirectory(prefix="gmt-ray-tracking-load-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        for backend in backends:
            if backend == "sqlite":
                uri = f"sqlite:///{workdir / 'sqlite-store' / 'mlflow.db'}"
                (workdir / "sqlite-store").mkdir()
            elif backend == "postgresql":
                try:
                    cluster = stack.enter_context(postgres_cluster(database="mlflow"))
                except PostgresUnavailable as e:
                    print(f"postgresql: not run: {e}")
                    continue
                uri = cluster.url("mlflow")
            else:
                raise SystemExit(f"--backends: unknown backend {backend!r} (sqlite, postgresql)")
            result = run_backend(backend, uri, args, workdir)
            report(result)
            counts = result["counts"]
            failed |= bool(counts.get("lost") or counts.get("duplicated") or counts.get("unknown"))
            sys.stdout.flush()
    print(f"total {time.monotonic() - began:.0f} s")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
