"""python -m gmt_ray.sweep as a user runs it: bad input and dry runs (in this process: the
command's own main), and the shared sweep read back from MLflow (tests/conftest.py). Sweeps
that test the driver's own behaviour (resume, Ctrl-C, servers, lost nodes): test_driver.py."""

import json
import re
from pathlib import Path

import pytest

from tests.helpers import (
    EVAL_DATA,
    EXPERIMENTS,
    ROOT,
    run_main,
    run_module,
    runs,
    sweep,
    sweep_in_process,
    write_experiment,
)

# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "changes, args, message",
    [
        ({"mask.mask_ratio": 1.0}, [], "mask.mask_ratio"),
        ({"search.methods": ["sft", "dare"]}, [], "search.methods.1"),
        ({"train.epochs": 3}, [], "train.epochs: unknown key"),
        ({"train.lr": "fast"}, [], "train.lr"),
        ({"data.source": "file", "data.path": "missing.jsonl"}, [], "missing.jsonl: data file not found"),
        ({}, ["--set", "search.num_samples=0"], "--set: search.num_samples"),
        ({}, ["--resume"], "--resume: no sweep named"),
        ({}, ["--set", "storage_path=/proc/gmt-ray"], "storage_path='/proc/gmt-ray': cannot create directories in /proc"),
        ({"search.methods": ["sft", "gmt"]}, ["--set", "search.methods=[sft, foo]"], "--set: search.methods.1"),
        ({}, ["--cluster", "cluster.yaml"], "--cluster plans a sweep: it goes with --dry-run"),
    ],
)
def test_bad_input_exits_2_and_starts_nothing(tmp_path, changes, args, message):
    path = write_experiment(tmp_path, **changes)
    result = sweep_in_process(tmp_path, str(path), *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert result.stderr.count("error:") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiment.yaml"]  # no mlflow.db, no runs/


@pytest.mark.parametrize("changes, message", [
    ({"eval.benchmarks": ["gsm8k"], "eval.data": {"gsm8k": "/mnt/nowhere/gsm8k_test.jsonl"}},
     "eval.data.gsm8k: /mnt/nowhere/gsm8k_test.jsonl: no such file"),
    ({"data.source": "file", "data.path": "rows.jsonl", "data.prompt_column": "query"},
     "rows.jsonl:1: missing field 'query'"),
    ({"train.init_from": "mlflow:best:never-ran:{method}"}, "there is no MLflow store at"),
])
def test_what_only_a_real_run_loads_is_checked_before_anything_starts(tmp_path, changes, message):
    (tmp_path / "rows.jsonl").write_text('{"prompt": "p", "response": "r"}\n' * 20)
    path = write_experiment(tmp_path, **changes)
    result = sweep_in_process(tmp_path, str(path))
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and result.stderr.count("error:") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiment.yaml", "rows.jsonl"]


def _interrupted_sweep(tmp_path, state):
    """The state a sweep of write_experiment's config leaves in runs/NAME when interrupted."""
    from gmt_ray.config import load_experiment
    from gmt_ray.sweep.driver import sweep_paths

    path = write_experiment(tmp_path)
    paths = sweep_paths(load_experiment(path).model_copy(update={"storage_path": str(tmp_path / "runs")}))
    paths.root.mkdir(parents=True)
    paths.state.write_text(json.dumps(state(load_experiment(path))))
    return path, paths


def test_a_resume_that_changes_what_the_trials_are_is_refused_naming_each_change(tmp_path):
    from gmt_ray.sweep.driver import fixed_settings

    path, paths = _interrupted_sweep(tmp_path, lambda config: {
        "parent_run_id": "0" * 32, "tracking_uri": "sqlite:///mlflow.db", "settings": fixed_settings(config)})
    before = paths.state.read_text()
    result = sweep_in_process(tmp_path, str(path), "--resume", "--set", "search.num_samples=7",
                              "--set", "train.max_steps=99", "--set", "resources.cpus_per_worker=2")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "was begun with other settings" in result.stderr and result.stderr.count("error:") == 1
    assert re.search(r"search\.num_samples: \d+ -> 7", result.stderr), result.stderr
    assert re.search(r"train\.max_steps: \d+ -> 99", result.stderr), result.stderr
    assert "resources" not in result.stderr  # where the trials run may change
    assert paths.state.read_text() == before and sorted(p.name for p in tmp_path.iterdir()) == ["experiment.yaml", "runs"]


def test_a_sweep_an_older_version_began_is_not_resumed(tmp_path):
    path, paths = _interrupted_sweep(tmp_path, lambda config: {"parent_run_id": "0" * 32,
                                                               "tracking_uri": "sqlite:///mlflow.db"})
    (paths.root / "optuna.db").write_bytes(b"")
    result = sweep_in_process(tmp_path, str(path), "--resume")
    assert result.returncode == 2 and "begun by an older gmt-ray" in result.stderr, result.stderr
    assert sorted(p.name for p in paths.root.iterdir()) == ["gmt_ray_sweep.json", "optuna.db"]


def test_a_state_file_that_holds_no_object_is_not_resumed(tmp_path):
    path, paths = _interrupted_sweep(tmp_path, lambda config: [1, 2])
    result = sweep_in_process(tmp_path, str(path), "--resume")
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"--resume: {paths.state} holds a JSON list, not a sweep's state" in result.stderr
    assert result.stderr.count("error:") == 1 and "Traceback" not in result.stderr
    assert paths.state.read_text() == "[1, 2]"


def _without_wandb_login(monkeypatch, tmp_path):
    """No W&B key anywhere wandb looks: the environment, ~/.netrc, wandb's settings."""
    for key in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_SETUP_API_KEY_HOOK", "WANDB_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NETRC", str(home / ".netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(home / "wandb-config"))


def test_a_wandb_project_without_a_wandb_key_is_refused_before_anything_starts(tmp_path, monkeypatch):
    # Ray's W&B logger would find that out once Ray and the sweep had started, with a traceback.
    _without_wandb_login(monkeypatch, tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    path = write_experiment(work, **{"wandb.project": "p"})
    result = sweep_in_process(work, str(path))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "wandb.project='p' logs to Weights & Biases, but no W&B API key was found" in result.stderr
    assert result.stderr.count("error:") == 1 and "Traceback" not in result.stderr
    assert sorted(p.name for p in work.iterdir()) == ["experiment.yaml"]


@pytest.mark.parametrize("env", [{"WANDB_MODE": "offline"}, {"WANDB_API_KEY": "k" * 40}, {"netrc": True}])
def test_a_wandb_key_or_offline_mode_lets_a_wandb_project_through(tmp_path, monkeypatch, env):
    from gmt_ray.config import Experiment
    from gmt_ray.preflight import check_wandb

    _without_wandb_login(monkeypatch, tmp_path)
    config = Experiment.model_validate({"wandb": {"project": "p"}})
    for key, value in env.items():
        if key == "netrc":  # as `wandb login` leaves it
            netrc = tmp_path / "home" / ".netrc"
            netrc.write_text(f"machine api.wandb.ai\n  login user\n  password {'k' * 40}\n")
            netrc.chmod(0o600)
        else:
            monkeypatch.setenv(key, value)
    check_wandb(config)  # no error (without any of them it fails: the test above)


def test_an_empty_experiment_file_starts_nothing(tmp_path):
    (tmp_path / "experiment.yaml").write_text("\n")
    result = sweep_in_process(tmp_path, "experiment.yaml")
    assert result.returncode == 2 and "experiment.yaml: the experiment file is empty" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiment.yaml"]


def test_an_experiment_file_that_is_not_text_is_named_and_starts_nothing(tmp_path):
    (tmp_path / "experiment.yaml").write_bytes(b"name: x\n\x89PNG\r\n\x1a\n\x00\xff")
    result = sweep_in_process(tmp_path, "experiment.yaml")
    assert result.returncode == 2, result.stderr
    assert "experiment.yaml: not an experiment file: byte 0x89 at offset 8 is not UTF-8 text" in result.stderr
    assert result.stderr.count("error:") == 1 and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiment.yaml"]


def test_missing_experiment_file_in_a_fresh_process(tmp_path):
    # Once as a separate process: the exit code and stderr a shell sees.
    result = sweep(tmp_path, "nope.yaml", timeout=120)
    assert result.returncode == 2 and "nope.yaml: experiment file not found" in result.stderr
    assert "Traceback" not in result.stderr and list(tmp_path.iterdir()) == []


def test_dry_run_prints_the_plan_and_starts_nothing(tmp_path):
    path = write_experiment(tmp_path, **{"search.mask_ratios": [0.5, 0.9], "search.methods": ["sft", "gmt", "rmt"]})
    result = sweep_in_process(tmp_path, str(path), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert '"trials": 5' in result.stdout and '"concurrent_trials": 2' in result.stdout
    assert "method=gmt,mask_ratio=0.9" in result.stdout and '"CPU": 1.01' in result.stdout
    assert "mask_ratio: 0.0" in result.stdout  # the resolved config, every default written out
    assert "warning: confirm.seeds" not in result.stderr  # no benchmark: nothing a test set would score
    assert sorted(p.name for p in tmp_path.iterdir()) == ["experiment.yaml"]


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
def test_confirmation_seeds_a_search_trial_trains_with_are_refused_before_anything_starts(tmp_path, dry_run):
    result = sweep_in_process(tmp_path, str(EXPERIMENTS / "quickstart.yaml"), *dry_run, "--set", "confirm.seeds=2",
                              "--set", "train.seed=1001")
    assert result.returncode == 2, result.stderr
    assert ("confirm.first_seed: the confirmation's seeds 1000..1001 include the search's (train.seed=1001 and, "
            "where a group has nothing to search, up to 1003)") in result.stderr
    assert result.stderr.count("error:") == 1 and list(tmp_path.iterdir()) == []


def test_dry_run_warns_that_without_confirmation_nothing_is_scored_on_test_problems(tmp_path):
    result = sweep_in_process(tmp_path, str(EXPERIMENTS / "quickstart.yaml"), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert ("warning: confirm.seeds is 0: trials are scored on validation problems only, so ['arithmetic'] get no "
            "test score") in result.stderr
    with_confirmation = sweep_in_process(tmp_path, str(EXPERIMENTS / "quickstart.yaml"), "--dry-run",
                                         "--set", "confirm.seeds=2")
    assert with_confirmation.returncode == 0 and "confirm.seeds is 0" not in with_confirmation.stderr


@pytest.mark.parametrize("name", ["math", "code", "general", "dpo"])
def test_paper_experiments_dry_run_against_the_cluster_file(tmp_path, name):
    result = sweep_in_process(tmp_path, str(EXPERIMENTS / f"{name}.yaml"), "--dry-run", "--cluster",
                              str(ROOT / "cluster.yaml"))
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout[result.stdout.index("\n{") + 1:])
    assert plan["concurrent_trials"] == 4 and plan["per_trial"]["GPU"] == 8
    assert plan["estimate"]["gpu_hours_total"] > 10
    assert any("loaded at run time" in note for note in plan["not_checked"])
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing started, nothing written


# ----------------------------------------------------------------------------- the shared sweep


def test_a_sweep_logs_nested_runs_to_mlflow(shared_sweep):
    out = shared_sweep.stdout
    assert "mlflow ui --backend-store-uri sqlite:///" in out
    assert "/runs?workflowType=machine_learning" in out  # the page of the runs table
    assert out.count("  start  ") == 8 and out.count("  done   ") == 8  # 4 search trials, 4 confirmation runs
    # Piped, the console shows each trial's progress as step N/TOTAL (TOTAL: train.max_steps) before its end.
    for trial_id in re.findall(r"  start  (\w+)", out):
        before_end = out[: out.index(f"  done   {trial_id}")]
        assert re.search(rf"  step   {trial_id}  step [1-6]/6  loss \d", before_end), out
    # What the sweep really ran, said honestly: 2 trials per group is no TPE.
    assert "search: sobol (tpe never starts: 2 trials per group, no more than its 10 start-up trials)" in out

    client = shared_sweep.client()
    (parent,) = runs(client, "sweep")
    children = runs(client, "trial")
    assert parent.info.status == "FINISHED"
    assert parent.data.params["mask.method"] == "gmt" and parent.data.params["train.max_steps"] == "6"
    assert parent.data.tags["version.torch"].startswith("2.") and "mlflow.source.git.commit" in parent.data.tags
    assert parent.data.tags["gmt_ray.sampler_used"].startswith("sobol")
    assert "config.yaml" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert sorted(c.data.params["mask.method"] for c in children) == ["gmt"] * 4 + ["sft"] * 4
    search = [c for c in children if c.data.tags["gmt_ray.stage"] == "search"]
    assert len(search) == 4
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        history = client.get_metric_history(child.info.run_id, "loss")
        assert sorted(m.step for m in history) == [1, 2, 3, 4, 5, 6]
        assert len(client.get_metric_history(child.info.run_id, "val_loss")) == 3
    for child in search:  # chosen on the validation loss: never evaluated on the test problems
        assert "arithmetic_accuracy" not in child.data.metrics
        assert not client.list_artifacts(child.info.run_id, "eval")
    losses = {c.info.run_id: c.data.metrics["val_loss"] for c in search}  # the objective (min)
    assert parent.data.metrics["best_val_loss"] == pytest.approx(min(losses.values()))
    assert losses[parent.data.tags["gmt_ray.best_run_id"]] == min(losses.values())
    # What the MLflow UI shows: a training experiment, runs named for what they are, their
    # datasets, models and system metrics, and each method's best model in the registry.
    assert client.get_experiment(parent.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert parent.info.run_name == "tiny-sweep"
    for child in children:
        method, stage = child.data.params["mask.method"], child.data.tags["gmt_ray.stage"]
        suffix = r" s0" if stage == "search" else r" s100[01] confirm"
        assert re.fullmatch(rf"{method}( r=0\.\d\d)? lr=\d\.\de-0\d{suffix}", child.info.run_name), child.info.run_name
        inputs = {i.dataset.name: [t.value for t in i.tags if t.key == "mlflow.data.context"]
                  for i in child.inputs.dataset_inputs}
        expected = {"arithmetic-train": ["train"], "arithmetic-validation": ["validation"]}
        assert inputs == ({**expected, "arithmetic-test": ["eval"]} if stage == "confirm" else expected)
        (output,) = child.outputs.model_outputs
        model = client.get_logged_model(output.model_id)
        assert model.source_run_id == child.info.run_id
        assert Path(model.tags["gmt_ray.model"], "config.json").is_file()
        assert model.tags["gmt_ray.model"] == child.data.tags["gmt_ray.model"]
        assert "system/cpu_utilization_percentage" in child.data.metrics
        assert "system/system_memory_usage_megabytes" in child.data.metrics
    for method in ("sft", "gmt"):
        # The registry's best is the search's choice: confirmation runs repeat it, they do not compete.
        best = min((c for c in search if c.data.params["mask.method"] == method),
                   key=lambda c: c.data.metrics["val_loss"])
        version = client.get_model_version_by_alias(f"tiny-sweep-{method}", "best")
        assert version.run_id == best.info.run_id
        assert version.source == f"models:/{best.outputs.model_outputs[0].model_id}"
        assert f"best {method} model: models:/tiny-sweep-{method}@best" in out


def test_confirmation_retrains_each_groups_choice_with_fresh_seeds_on_the_test_problems(shared_sweep):
    client = shared_sweep.client()
    children = runs(client, "trial")
    search = [c for c in children if c.data.tags["gmt_ray.stage"] == "search"]
    confirm = [c for c in children if c.data.tags["gmt_ray.stage"] == "confirm"]
    for method in ("sft", "gmt"):
        chosen = min((c for c in search if c.data.params["mask.method"] == method),
                     key=lambda c: c.data.metrics["val_loss"])
        mine = [c for c in confirm if c.data.params["mask.method"] == method]
        assert sorted(c.data.params["train.seed"] for c in mine) == ["1000", "1001"]  # fresh, and alike for both
        for run in mine:
            for key in ("train.lr", "mask.mask_ratio"):  # the group's chosen configuration
                assert run.data.params.get(key) == chosen.data.params.get(key), key
            assert 0 <= run.data.metrics["arithmetic_accuracy_low"] <= run.data.metrics["arithmetic_accuracy"] <= \
                run.data.metrics["arithmetic_accuracy_high"] <= 1
            eval_files = {a.path for a in client.list_artifacts(run.info.run_id, "eval")}
            assert eval_files == {"eval/step6-arithmetic.jsonl", "eval/step6-arithmetic.table.json"}
            rows = client.download_artifacts(run.info.run_id, "eval/step6-arithmetic.jsonl",
                                             str(shared_sweep.directory / f"download-{run.info.run_id}"))
            assert len(Path(rows).read_text().splitlines()) == 8  # the test split's 8 problems
    # The closing table gives each score its interval, and the verdicts follow it.
    out = shared_sweep.stdout
    assert re.search(r"confirm .* \d\.\d{4} \[\d\.\d{4}, \d\.\d{4}\]", out), out
    assert "verdicts (a - b on the test problems" in out
    assert re.search(r"gmt@0\.\d+ - sft +[+-]\d\.\d{4} \[", out), out


def test_finished_trial_drivers_take_the_next_trial(shared_sweep):
    # Without ASHA a finished trial's driver process (its imports, its MLflow client) takes the next trial.
    results = (shared_sweep.directory / "runs" / "tiny-sweep").glob("train_trial_*_*/result.json")
    pids = {json.loads(f.read_text().splitlines()[0])["pid"] for f in results}
    assert 1 <= len(pids) < 8


def test_the_registered_best_model_is_what_evaluation_takes(shared_sweep, tmp_path):
    # Progress on stderr, the score on stdout.
    evaluation = run_module("gmt_ray.evaluate", "--benchmark", "gsm8k", "--data", EVAL_DATA / "gsm8k_sample.jsonl",
                            "--model", "models:/tiny-sweep-gmt@best", "--max-new-tokens", "4", "--out",
                            tmp_path / "eval", cwd=shared_sweep.directory, timeout=300)
    assert evaluation.returncode == 0, evaluation.stderr
    assert "generate gsm8k  samples 3/3" in evaluation.stderr and "gsm8k: accuracy" in evaluation.stdout


def test_the_report_reads_the_runs_back_and_writes_the_verdicts(shared_sweep, tmp_path):
    import statistics

    from gmt_ray.report.__main__ import main

    report = run_main(main, str(shared_sweep.experiment), "--out", str(tmp_path / "report"),
                      cwd=shared_sweep.directory)
    assert report.returncode == 0, report.stderr
    markdown = (tmp_path / "report" / "report.md").read_text()
    client = shared_sweep.client()
    children = runs(client, "trial")
    search = [c for c in children if c.data.tags["gmt_ray.stage"] == "search"]
    for child in search:
        assert f"| {child.data.params['mask.method']} |" in markdown
    assert f"{min(c.data.metrics['val_loss'] for c in search):.4f}" in markdown
    assert "## Confirmation" in markdown and "### Verdicts" in markdown
    # verdicts.json: gmt against sft, its difference the mean test accuracies' difference of the confirmation runs.
    (verdict,) = json.loads((tmp_path / "report" / "verdicts.json").read_text())
    confirm = [c for c in children if c.data.tags["gmt_ray.stage"] == "confirm"]
    mean = {m: statistics.fmean(c.data.metrics["arithmetic_accuracy"] for c in confirm if c.data.params["mask.method"] == m)
            for m in ("gmt", "sft")}
    ratio = next(float(c.data.params["mask.mask_ratio"]) for c in confirm if c.data.params["mask.method"] == "gmt")
    assert verdict["a"] == {"method": "gmt", "mask_ratio": pytest.approx(ratio)} and \
        verdict["b"] == {"method": "sft", "mask_ratio": 0.0}
    assert verdict["difference"] == pytest.approx(mean["gmt"] - mean["sft"])
    assert verdict["seeds"] == 2 and verdict["problems"] == 8
    assert set(verdict) >= {"low", "high", "p_value", "min_detectable_effect"}
    (parent,) = runs(client, "sweep")
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/verdicts.json"} <= logged
    assert client.get_run(parent.info.run_id).data.metrics[f"verdict/gmt-{ratio:g}_vs_sft/difference"] == \
        pytest.approx(verdict["difference"])


def test_the_same_name_again_without_resume_is_refused(shared_sweep):
    again = sweep_in_process(shared_sweep.directory, str(shared_sweep.experiment))
    assert again.returncode == 2 and "already exists" in again.stderr
