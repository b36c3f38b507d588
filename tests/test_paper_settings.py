"""The paper files run the paper's protocols, and docs/paper-settings.md accounts for every
setting each of them makes."""

import re
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from gmt_ray.config import Experiment, load_experiment
from gmt_ray.config.loading import _Loader as YamlLoader

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
GENERAL_SUITE = {"mmlu": 0, "gsm8k_cot": 8, "bbh_cot_fewshot": 3, "tydiqa_goldp": 1, "truthfulqa_mc2": 0}


def settings(path: Path) -> list[str]:
    """Every option the file sets, as dotted keys down to the schema's leaves."""

    def walk(tree: dict, model: type[BaseModel], prefix: str) -> list[str]:
        keys = []
        for key, value in tree.items():
            annotation = model.model_fields[key].annotation
            if isinstance(value, dict) and isinstance(annotation, type) and issubclass(annotation, BaseModel):
                keys += walk(value, annotation, f"{prefix}{key}.")
            else:
                keys.append(prefix + key)
        return keys

    return walk(yaml.load(path.read_text(), Loader=YamlLoader), Experiment, "")


@pytest.mark.parametrize("name", ["math", "code", "general", "dpo"])
def test_the_settings_page_gives_every_setting_of_each_paper_file(name):
    page = (ROOT / "docs" / "paper-settings.md").read_text()
    sections = re.split(r"^## ", page, flags=re.M)
    section = next(s for s in sections if s.startswith(f"{name}.yaml"))
    missing = [key for key in settings(EXPERIMENTS / f"{name}.yaml") if f"`{key}`" not in section]
    assert not missing, f"docs/paper-settings.md, section {name}.yaml, lacks {missing}"


@pytest.mark.parametrize("name", ["general", "general-13b", "dpo", "dpo-13b"])
def test_general_and_dpo_files_run_the_six_benchmarks_each_at_its_own_protocol(name):
    config = load_experiment(EXPERIMENTS / f"{name}.yaml")
    lm_eval = config.eval.lm_eval
    assert lm_eval.tasks == list(GENERAL_SUITE) and lm_eval.fewshot == GENERAL_SUITE
    assert lm_eval.num_fewshot is None  # no one count for all
    assert config.eval.benchmarks == ["humaneval"] and "humaneval_pass_at_10" in config.eval.metric_names()
    sampling = config.eval.samples("humaneval")
    assert (sampling.samples, sampling.temperature, sampling.top_p) == (20, 0.8, 0.95)
    assert config.data.template == "tulu" and config.train.warmup_ratio == 0.03


def test_13b_files_differ_from_7b_only_in_model_name_sft_source_and_per_gpu_batch():
    for small, large in (("general", "general-13b"), ("dpo", "dpo-13b")):
        a = load_experiment(EXPERIMENTS / f"{small}.yaml").model_dump()
        b = load_experiment(EXPERIMENTS / f"{large}.yaml").model_dump()
        differing = {f"{section}.{key}" for section in a if isinstance(a[section], dict)
                     for key in a[section] if a[section][key] != b[section][key]}
        differing |= {key for key in a if not isinstance(a[key], dict) and a[key] != b[key]}
        expected = {"name", "model.name", "train.micro_batch_size", "train.grad_accum"}
        assert differing == expected | ({"train.init_from"} if small == "dpo" else set()), (large, differing)
        per_step = [c["train"]["micro_batch_size"] * c["train"]["grad_accum"] for c in (a, b)]
        assert per_step[0] == per_step[1], large
    assert load_experiment(EXPERIMENTS / "dpo-13b.yaml").train.init_from == "mlflow:best:general-llama2-13b:{method}"


@pytest.mark.parametrize("name", ["math", "code"])
def test_math_and_code_grids_hold_the_papers_best_mask_ratios(name):
    assert {0.2, 0.3, 0.4} <= set(load_experiment(EXPERIMENTS / f"{name}.yaml").search.mask_ratios)


def test_code_file_evaluates_evalplus_problem_sets_with_evalplus_prompt():
    config = load_experiment(EXPERIMENTS / "code.yaml")
    assert config.eval.code_prompt == "evalplus"
    assert config.eval.benchmarks == ["humaneval", "humaneval_plus_tests", "mbpp", "mbpp_plus_tests"]
    assert config.eval.data["mbpp"] == config.eval.data["mbpp_plus_tests"]  # MBPP+'s 378 problems, base tests
