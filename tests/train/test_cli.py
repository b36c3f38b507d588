"""python -m gmt_ray.train as a user runs it."""

import subprocess
import sys

import pytest


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


@pytest.mark.e2e
def test_one_run_end_to_end(tmp_path):
    result = run(tmp_path, "--run-name", "one", "--set", "train.max_steps=4", "--set", "train.eval_every=2",
                 "--set", "data.arithmetic.train_size=128", "--set", "model.tiny.num_layers=1",
                 "--set", "mask.mask_ratio=0.5")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "step 4, loss" in result.stdout and "val_loss" in result.stdout
    # Progress (piped: plain lines on stderr) while it trains: step N/max_steps and the loss.
    assert "train  step 0/4  starting" in result.stderr and "train  step 4/4  loss " in result.stderr, result.stderr
    model_dir = tmp_path / "runs" / "one" / "model"
    assert (model_dir / "config.json").exists() and (model_dir / "tokenizer.json").exists()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(model_dir)  # the exported model loads back
    AutoTokenizer.from_pretrained(model_dir)
