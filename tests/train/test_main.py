"""python -m gmt_ray.train as a user runs it (a whole run: tests/sweep/test_main_machine.py, on a live head)."""

import subprocess
import sys


def run(cwd, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", "gmt_ray.train", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def test_dry_run_prints_every_default(tmp_path):
    result = run(tmp_path, "--dry-run", "--set", "train.lr=1e-4")
    assert result.returncode == 0, result.stderr
    assert "lr: 0.0001" in result.stdout and "mask_ratio: 0.0" in result.stdout and "max_failures: 0" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_bad_config_exits_2(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  lr: -1\n")
    result = run(tmp_path, str(config))
    assert result.returncode == 2
    assert f"{config}:2: train.lr" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def test_a_run_name_is_a_new_directory_under_storage_path(tmp_path):
    # Checked before Ray starts: a path would write outside storage_path, an existing run's
    # metrics, config and model would be overwritten.
    escaping = run(tmp_path, "--run-name", "../elsewhere", "--set", f"storage_path={tmp_path / 'runs'}")
    assert escaping.returncode == 2 and "--run-name '../elsewhere': a directory name under storage_path" in \
        escaping.stderr, escaping.stderr
    (tmp_path / "runs" / "kept").mkdir(parents=True)
    (tmp_path / "runs" / "kept" / "config.yaml").write_text("mine\n")
    taken = run(tmp_path, "--run-name", "kept", "--set", f"storage_path={tmp_path / 'runs'}")
    assert taken.returncode == 2 and f"--run-name 'kept': a run of that name is at {tmp_path / 'runs' / 'kept'}" in \
        taken.stderr, taken.stderr
    assert (tmp_path / "runs" / "kept" / "config.yaml").read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"] and not (tmp_path / "elsewhere").exists()
