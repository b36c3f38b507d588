"""Reports from a real MLflow store holding runs written through MLflow's client."""

import math
import re
import statistics
import time

import pytest

from gmt_ray import tracking
from gmt_ray.report import collect, method_table, ratio_curves, speed_table
from gmt_ray.report.__main__ import main
from gmt_ray.tracking import SweepRuns, find_parent_run

# (method, drop strategy, mask ratio, lr, seed, accuracy, tokens/s per report)
TRIALS = [
    ("sft", None, 0.0, 1e-3, 0, 0.50, [900, 1000, 1000]),
    ("sft", None, 0.0, 1e-3, 1, 0.54, [900, 1000, 1020]),
    ("sft", None, 0.0, 3e-3, 0, 0.40, [900, 1000, 980]),
    ("gmt", None, 0.3, 1e-3, 0, 0.55, [900, 950, 950]),
    ("gmt", None, 0.6, 1e-3, 0, 0.60, [900, 940, 960]),
    ("gmt", None, 0.6, 3e-3, 0, 0.58, [900, 950, 950]),
    ("gmt", None, 0.9, 1e-3, 0, 0.45, [900, 950, 950]),
    ("rmt", None, 0.3, 1e-3, 0, 0.49, [900, 990, 990]),
    ("rmt", None, 0.6, 1e-3, 0, 0.47, [900, 990, 990]),
    ("hft", None, 0.0, 1e-3, 0, 0.52, [900, 1100, 1100]),
    ("drop", "trivial", 0.3, 1e-3, 0, 0.52, [900, 1000, 1000]),
    ("drop", "trivial", 0.9, 1e-3, 0, 0.50, [900, 1000, 1000]),
    ("drop", "random", 0.3, 1e-3, 0, 0.51, [900, 1000, 1000]),
    ("drop", "random", 0.9, 1e-3, 0, 0.30, [900, 1000, 1000]),
    ("drop", "salient", 0.3, 1e-3, 0, 0.20, [900, 1000, 1000]),
    ("drop", "salient", 0.9, 1e-3, 0, 0.02, [900, 1000, 1000]),
]


@pytest.fixture
def store(tmp_path):
    uri = tracking.resolve_tracking_uri(None, base=tmp_path)
    config = {"search": {"metric": "arithmetic_accuracy", "mode": "max"}, "mask": {"drop_strategy": "random"},
              "train": {"seed": 0}}
    runs = SweepRuns.start(uri, "reports", "paper", config, "name: paper\n")
    parent, client = runs.parent_run_id, runs.client
    for index, (method, strategy, ratio, lr, seed, accuracy, speeds) in enumerate(TRIALS):
        params = {"mask.method": method, "mask.mask_ratio": ratio, "train.lr": lr, "train.seed": seed}
        if strategy:
            params["mask.drop_strategy"] = strategy
        run_id = runs.open_trial(f"t{index:02d}", f"trial_{index:02d}", params)
        for step, speed in enumerate(speeds, 1):
            client.log_metric(run_id, "tokens_per_s", speed, step=step)
            client.log_metric(run_id, "samples_per_s", speed / 100, step=step)
        client.log_metric(run_id, "arithmetic_accuracy", accuracy, step=3)
        client.log_metric(run_id, "arithmetic_accuracy_low", accuracy - 0.05, step=3)
        client.log_metric(run_id, "arithmetic_accuracy_high", accuracy + 0.05, step=3)
        client.log_metric(run_id, "val_loss", 2 - accuracy, step=3)
        client.set_terminated(run_id, "FINISHED")
    # An early-stopped and a failed trial count for nothing.
    for name, tag in (("stopped", True), ("failed", False)):
        run_id = runs.open_trial(name, name, {"mask.method": "gmt", "mask.mask_ratio": 0.6,
                                                              "train.lr": 5e-3, "train.seed": 0})
        client.log_metric(run_id, "arithmetic_accuracy", 0.99)
        if tag:
            client.set_tag(run_id, "gmt_ray.early_stopped", "step 2")
        client.set_terminated(run_id, "FINISHED" if tag else "FAILED")
    client.set_terminated(parent, "FINISHED")
    return uri, parent, tmp_path


def test_method_table_takes_each_methods_best_configuration(store):
    uri, parent, _ = store
    sweep = collect(uri, parent)
    assert sweep.metric == "arithmetic_accuracy" and sweep.mode == "max" and len(sweep.trials) == 18
    table = method_table(sweep)
    rows = {r["method"]: r for r in table["rows"]}
    assert list(rows) == ["sft", "gmt", "rmt", "hft", "drop-trivial", "drop-random", "drop-salient"]
    # sft's best configuration (lr 1e-3) has two seeds: mean and t-interval over them.
    sft = rows["sft"]["values"]["arithmetic_accuracy"]
    half = 12.706204736174694 * statistics.stdev([0.50, 0.54]) / math.sqrt(2)  # t(0.975, 1 df)
    assert rows["sft"]["seeds"] == 2 and sft["mean"] == pytest.approx(0.52)
    assert (sft["low"], sft["high"]) == pytest.approx((0.52 - half, 0.52 + half))
    # gmt's best is 0.6 at 1e-3 (the early-stopped 0.99 does not count); one seed: its own interval.
    gmt = rows["gmt"]
    assert (gmt["mask_ratio"], gmt["lr"]) == (0.6, 1e-3)
    assert gmt["values"]["arithmetic_accuracy"] == {"mean": 0.6, "low": pytest.approx(0.55), "high": pytest.approx(0.65), "n": 1}
    assert table["best"] == {"arithmetic_accuracy": "gmt", "val_loss": "gmt"}


def test_ratio_curves_and_speed(store):
    uri, parent, _ = store
    sweep = collect(uri, parent)
    curves = ratio_curves(sweep)
    assert [(p["mask_ratio"], p["mean"]) for p in curves["gmt"]] == [(0.3, 0.55), (0.6, 0.60), (0.9, 0.45)]
    assert [p["mean"] for p in curves["drop-salient"]] == [0.20, 0.02]
    speed = {r["method"]: r for r in speed_table(sweep)}
    # Throughput skips each run's first report: sft's trials average 1000, 1010, 990 -> median 1000.
    assert speed["sft"]["tokens_per_s"] == pytest.approx(1000)
    assert speed["gmt"]["tokens_per_s"] == pytest.approx(950)
    assert speed["gmt"]["ratio_to_sft"] == pytest.approx(0.95)
    assert speed["hft"]["ratio_to_sft"] == pytest.approx(1.1)


def test_cli_writes_markdown_and_pngs_and_logs_them_to_the_parent_run(store, monkeypatch, capsys):
    uri, parent, tmp_path = store
    monkeypatch.chdir(tmp_path)  # the default tracking URI: ./mlflow.db
    assert main(["paper", "--out", str(tmp_path / "out")]) == 0
    assert "report of sweep 'paper': 16 search trials and 0 confirmation runs finished, of 18" in capsys.readouterr().out
    markdown = (tmp_path / "out" / "report.md").read_text()
    gmt_row = next(line for line in markdown.splitlines() if line.startswith("| gmt | 0.60 |"))
    assert "**0.6000 [0.5500, 0.6500]**" in gmt_row
    sft_row = next(line for line in markdown.splitlines() if line.startswith("| sft |"))
    assert re.search(r"\| 2 \| 0\.5200 \[", sft_row)
    assert "| gmt | 9.5 | 950 | 0.950 | 4 |" in markdown
    assert "![drop](drop.png)" in markdown
    pngs = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert pngs == ["drop.png", "lr_mask_ratio.png", "mask_ratio.png", "methods.png", "speed.png"]
    import matplotlib.image

    for name in pngs:
        data = (tmp_path / "out" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        image = matplotlib.image.imread(tmp_path / "out" / name)
        assert image.shape[0] > 200 and image.shape[1] > 300 and image.std() > 0.01  # not blank
    logged = {a.path for a in tracking.client(uri).list_artifacts(parent, "report")}
    assert logged == {f"report/{n}" for n in ["report.md", *pngs]}


def test_unknown_sweeps_and_stores_are_clear_errors(store, capsys):
    uri, parent, tmp_path = store
    assert main(["nope", "--tracking-uri", uri]) == 2
    assert "no sweep named 'nope'" in capsys.readouterr().err
    assert main(["paper", "--tracking-uri", f"sqlite:///{tmp_path / 'missing.db'}"]) == 2
    assert "no MLflow store" in capsys.readouterr().err
    assert main(["paper", "--tracking-uri", uri, "--half-width", "3"]) == 2
    assert "--half-width 3: a fraction of the score, between 0 and 1" in capsys.readouterr().err
    from tests.helpers import free_port

    # A server address where none answers: one message within seconds, not MLflow's minutes of retries.
    started = time.monotonic()
    assert main(["paper", "--tracking-uri", f"http://127.0.0.1:{free_port()}"]) == 2
    assert "no MLflow server answers there" in capsys.readouterr().err and time.monotonic() - started < 30
    child = SweepRuns(uri, parent).find_trial("t00").info.run_id
    with pytest.raises(ValueError, match="not a sweep's parent run"):
        find_parent_run(uri, child)


def test_intervals_over_many_seeds_use_the_exact_t_quantile():
    from gmt_ray.report import Trial
    from gmt_ray.report.tables import summarize_values

    values = [0.50 + 0.01 * i for i in range(12)]
    trials = [Trial(run_id=str(i), name=f"t{i}", status="FINISHED", params={}, metrics={"acc": v})
              for i, v in enumerate(values)]
    summary = summarize_values(trials, "acc")
    # t(0.975, 11 df) = 2.20099 (a normal 1.96 would be 11% too narrow).
    half = 2.200985160082949 * statistics.stdev(values) / math.sqrt(12)
    assert summary["n"] == 12 and summary["mean"] == pytest.approx(statistics.fmean(values))
    assert (summary["low"], summary["high"]) == pytest.approx((summary["mean"] - half, summary["mean"] + half), rel=1e-9)


def test_an_interval_only_where_there_is_one_and_how_many_learning_rates_were_tried(store):
    uri, parent, _ = store
    sweep = collect(uri, parent)
    gmt = next(r for r in method_table(sweep)["rows"] if r["method"] == "gmt")
    # One seed of val_loss: a single number, no interval around it (not a zero-width one).
    assert gmt["values"]["val_loss"]["low"] is None and gmt["values"]["val_loss"]["high"] is None
    curves = ratio_curves(sweep)
    # At 0.6 gmt tried two learning rates (1e-3 and 3e-3; the early-stopped 5e-3 does not count).
    assert [(p["mask_ratio"], p["lrs_tried"]) for p in curves["gmt"]] == [(0.3, 1), (0.6, 2), (0.9, 1)]
