"""The config schema: defaults, YAML and --set through one validation, errors all at once."""

from pathlib import Path

import pytest

from gmt_ray.config import (
    ConfigError,
    Experiment,
    confirm_seed_clash,
    load_experiment,
    parse_overrides,
    to_yaml,
)


def test_defaults_validate_and_round_trip(tmp_path):
    config = load_experiment()
    assert isinstance(config, Experiment) and config.mask.method == "gmt"
    path = tmp_path / "resolved.yaml"
    path.write_text(to_yaml(config))
    assert load_experiment(path) == config


def test_yaml_and_overrides_merge(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("train:\n  lr: 0.01\nmask:\n  method: rmt\n")
    config = load_experiment(path, ["train.lr=3e-4", "mask.mask_ratio=0.9", "data.arithmetic.max_ops=3"])
    assert config.train.lr == 3e-4 and config.mask.method == "rmt" and config.mask.mask_ratio == 0.9
    assert config.data.arithmetic.max_ops == 3


def test_every_problem_is_reported_at_once_with_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: ok\n"
        "mask:\n"
        "  method: dare\n"            # line 3: unknown method
        "  mask_ratio: 1.0\n"         # line 4: out of range
        "train:\n"
        "  lr: fast\n"                # line 6: wrong type
        "  epochs: 3\n"               # line 7: unknown key
    )
    with pytest.raises(ConfigError) as error:
        load_experiment(path, ["train.max_steps=0"])
    lines = str(error.value).splitlines()
    assert len(lines) == 5
    text = str(error.value)
    assert f"{path}:3: mask.method" in text and "'dare'" in text
    assert f"{path}:4: mask.mask_ratio" in text
    assert f"{path}:6: train.lr" in text and "'fast'" in text
    assert f"{path}:7: train.epochs: unknown key" in text
    assert "--set: train.max_steps" in text


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["oops"], "expected key=value"),
        (["train.lr=[1"], "not valid YAML"),
        (["data.source=file"], "data.path is required"),
        (["model.tiny.hidden_size=30", "model.tiny.num_heads=4"], "not divisible"),
        (["data.arithmetic.min_ops=3"], "min_ops=3 is larger than max_ops=2"),
        (["name=a/b"], "name must be non-empty"),
    ],
)
def test_bad_overrides(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_experiment(None, overrides)


def test_missing_file_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="experiment file not found"):
        load_experiment(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train:\n  lr: [1\n")
    with pytest.raises(ConfigError, match=r"broken.yaml:\d+: not valid YAML"):
        load_experiment(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_experiment(listing)


def test_parse_overrides_reads_values_as_yaml():
    assert parse_overrides(["a.b=1e-3", "c=[1, 2]", "d=true", "e=text"]) == {
        "a.b": 1e-3, "c": [1, 2], "d": True, "e": "text",
    }


def test_every_shipped_experiment_file_validates():
    files = sorted(Path(__file__).parents[1].joinpath("experiments").glob("*.yaml"))
    assert files, "no experiment files shipped"
    for path in files:
        assert isinstance(load_experiment(path), Experiment), path


@pytest.mark.parametrize("overrides, message", [
    (["search.metric=accuracy"], "search.metric: 'accuracy' is not a metric this experiment reports"),
    (["eval.benchmarks=[gsm8k]"], "eval.data.gsm8k is required"),
    (["eval.benchmarks=[arithmetic]", "data.source=file", "data.path=x.jsonl"], "'arithmetic' evaluates generated data"),
    (["eval.data={math: m.jsonl}"], "eval.data.math: not a benchmark"),
    (["train.objective=dpo", "train.parallelism=fsdp"], "keeps an unsharded copy: use 'precomputed' with fsdp"),
    (["search.asha.metric=humaneval_pass_at_1"], "search.asha.metric"),
    (["eval.benchmarks=[humaneval]", "eval.sampling={humaneval: {samples: 20}}"],
     "samples=20 at temperature 0 are one greedy completion repeated"),
    (["eval.benchmarks=[arithmetic]", "eval.sampling={arithmetic: {samples: 2, temperature: 1.0}}"],
     "eval.sampling.arithmetic: sampling is for code benchmarks"),
    (["eval.sampling={mbpp: {samples: 2, temperature: 1.0}}"], "eval.sampling.mbpp: not a benchmark of this evaluation"),
    (["eval.lm_eval.tasks=[mmlu]", "eval.lm_eval.fewshot={bbh: 3}"], "fewshot.bbh: not one of tasks"),
    (["eval.lm_eval.tasks=[mmlu]", "eval.lm_eval.fewshot={mmlu: 0}", "eval.lm_eval.num_fewshot=5"],
     "give num_fewshot .every task. or fewshot .per task., not both"),
    (["eval.benchmarks=[humaneval]", "search.metric=humaneval_pass_at_10"], "'humaneval_pass_at_10' is not a metric"),
])
def test_evaluation_options_are_checked_against_each_other(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_experiment(None, overrides)


def test_evaluation_metrics_become_valid_objectives_on_their_validation_problems():
    config = load_experiment(None, ["eval.benchmarks=[arithmetic, humaneval]", "search.metric=val_humaneval_pass_at_1",
                                    "search.mode=max"])
    assert "arithmetic_accuracy_high" in config.eval.metric_names()
    assert "val_arithmetic_accuracy_low" in config.eval.metric_names()
    assert load_experiment(None, ["search.metric=lm_eval/mmlu/acc"]).search.metric == "lm_eval/mmlu/acc"
    sampled = load_experiment(None, ["eval.benchmarks=[humaneval]", "search.metric=val_humaneval_pass_at_10", "search.mode=max",
                                     "eval.sampling={humaneval: {samples: 20, temperature: 0.8}}"])
    test = ["humaneval_pass_at_1", "humaneval_pass_at_1_low", "humaneval_pass_at_1_high", "humaneval_pass_at_10"]
    assert sampled.eval.metric_names() == [*test, *(f"val_{name}" for name in test)]
    # The test problems' score is what the sweep reports: choosing on it is refused.
    with pytest.raises(ConfigError, match="choose on the validation problems, 'val_humaneval_pass_at_1'"):
        load_experiment(None, ["eval.benchmarks=[humaneval]", "search.metric=humaneval_pass_at_1", "search.mode=max"])


CHOOSE_ON_ARITHMETIC = ["eval.benchmarks=[arithmetic]", "search.metric=val_arithmetic_accuracy", "search.mode=max"]


@pytest.mark.parametrize("overrides, message", [
    (["confirm.seeds=2"], "choose on one .search.metric val_<benchmark>_<score>, not 'val_loss'. or name it"),
    (["confirm.seeds=2", "confirm.benchmark=gsm8k"], "confirm.benchmark: 'gsm8k' is not in eval.benchmarks"),
    (["confirm.seeds=2", "eval.benchmarks=[arithmetic]", "search.metric=val_arithmetic_accuracy",
      "search.scheduler=asha"], "with search.scheduler 'asha' ASHA would stop some"),
    (["confirm.seeds=1", "confirm.until_decisive=true"], "until_decisive needs seeds >= 2"),
    (["confirm.seeds=4", "confirm.until_decisive=true", "confirm.max_seeds=3"], "max_seeds=3 is below seeds=4"),
    (["eval.validation_data={gsm8k: x.jsonl}"], "eval.validation_data.gsm8k: not a benchmark of this evaluation"),
])
def test_a_confirmation_stage_that_cannot_compare_is_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_experiment(None, overrides)


@pytest.mark.parametrize("overrides, clash", [
    (["confirm.seeds=3", "train.seed=1002"],
     "confirm.first_seed: the confirmation's seeds 1000..1002 include the search's (train.seed=1002 and, where a "
     "group has nothing to search, up to 1005)"),
    (["confirm.seeds=2", "confirm.until_decisive=true", "confirm.max_seeds=6",
      "search.space={train.seed: {type: choice, values: [1, 1005]}}"], "seeds 1000..1005 include the search's"),
    (["confirm.seeds=2", "search.space={train.seed: {type: int, low: 990, high: 1000}}"],
     "include the search's (search.space.train.seed [990, 1000])"),
    (["confirm.seeds=3", "train.seed=998", "search.num_samples=4"],
     "include the search's (train.seed=998 and, where a group has nothing to search, up to 1001)"),
    (["confirm.seeds=3", "train.seed=1003"], None),
    (["confirm.seeds=0", "train.seed=1000"], None),
])
def test_confirmation_seeds_must_be_apart_from_the_search_s(overrides, clash):
    # A sweep-level check (gmt_ray.sweep refuses the sweep): each confirmation trial's own
    # config has train.seed set to a confirmation seed.
    found = confirm_seed_clash(load_experiment(None, [*CHOOSE_ON_ARITHMETIC, *overrides]))
    assert found == clash if clash is None else clash in found


def test_an_empty_experiment_file_is_refused(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing here yet\n")
    with pytest.raises(ConfigError, match="empty.yaml: the experiment file is empty"):
        load_experiment(empty)


def test_a_problem_in_a_value_given_by_set_is_attributed_to_set(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("search:\n  methods:\n    - sft\n    - gmt\n")
    with pytest.raises(ConfigError) as error:
        load_experiment(path, ["search.methods=[sft, foo]"])
    assert str(error.value).startswith("--set: search.methods.1") and "e.yaml" not in str(error.value)


def test_keys_holding_dots_are_reached_in_brackets(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("search:\n  space:\n    train.lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}\n")
    config = load_experiment(path, ["search.space[train.lr].high=3e-2",
                                    "search.space[mask.mask_ratio]={type: uniform, low: 0.1, high: 0.9}"])
    assert config.search.space["train.lr"].high == 3e-2 and config.search.space["train.lr"].low == 1e-4
    assert config.search.space["mask.mask_ratio"].type == "uniform"
    with pytest.raises(ConfigError, match=r"--set 'search.space\[train.lr.high=1': cannot read key"):
        load_experiment(path, ["search.space[train.lr.high=1"])
    with pytest.raises(ConfigError, match="--set: search.space.train.lr.high"):
        load_experiment(path, ["search.space[train.lr].high=fast"])


def test_packing_is_refused_for_dpo_and_flash_attention_without_a_gpu():
    with pytest.raises(ConfigError) as error:
        load_experiment(None, ["data.packing=true", "train.objective=dpo", "search.metric=val_loss",
                               "model.attn_implementation=flash_attention_2"])
    message = str(error.value)
    assert "data.packing: DPO batches are not packed" in message and "set data.packing: false" in message
    assert "flash_attention_2 runs on GPUs only" in message
    assert load_experiment(None, ["data.packing=true"]).data.packing


@pytest.mark.parametrize("text, line, first", [
    ("name: dup\ntrain:\n  lr: 0.1\ntrain:\n  max_steps: 3\n", 4, 2),  # a whole section given twice
    ("train:\n  lr: 0.1\n  max_steps: 3\n  lr: 0.2\n", 4, 2),  # an option given twice in its section
    ("search:\n  space:\n    train.lr: {type: loguniform, low: 1.0e-4, low: 1.0e-3, high: 1.0e-2}\n", 3, 3),
])
def test_a_key_given_twice_is_refused_with_both_lines(tmp_path, text, line, first):
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"dup.yaml:{line}: not valid YAML: duplicate key '\w+' "
                                          rf"\(first on line {first}\)"):
        load_experiment(path)


def test_a_merged_key_may_be_overridden(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("name: merged\nmask: &base {method: rmt, mask_ratio: 0.5}\n"
                    "search:\n  space:\n    mask.mask_ratio:\n      <<: {type: uniform, low: 0.1, high: 0.9}\n      high: 0.8\n"
                    "  mask_ratios: []\n")
    config = load_experiment(path)
    assert config.mask.method == "rmt" and config.search.space["mask.mask_ratio"].high == 0.8


QUICKSTART = Path(__file__).parents[1] / "experiments" / "quickstart.yaml"


@pytest.mark.parametrize("override, message", [
    # Checks across sections name their key: the --set that gave it owns the problem.
    ("search.metric=acc", "--set: search.metric: 'acc' is not a metric"),
    ("search.space[train.lrr]={type: uniform, low: 0, high: 1}", "--set: search.space.train.lrr: no such option"),
    ("eval.data={math: m.jsonl}", "--set: eval.data.math: not a benchmark of this evaluation"),
    # A --set below the key with the problem (a range's bound) or above it (a string made a mapping).
    ("search.space[train.lr].low=-1", "--set: search.space.train.lr: loguniform needs low > 0"),
    ("name.foo=1", "--set: name: Input should be a valid string"),
])
def test_a_problem_a_set_caused_is_attributed_to_set_not_to_the_file(override, message):
    with pytest.raises(ConfigError) as error:
        load_experiment(QUICKSTART, [override])
    assert str(error.value).startswith(message), str(error.value)
    assert "quickstart.yaml" not in str(error.value) and "(top level)" not in str(error.value)


def test_a_problem_across_sections_is_attributed_to_the_line_of_its_key(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("name: x\nsearch:\n  metric: acc\n  space:\n    train.lrr: {type: uniform, low: 0, high: 1}\n")
    with pytest.raises(ConfigError) as error:
        load_experiment(path)
    lines = str(error.value).splitlines()
    assert any(line.startswith(f"{path}:3: search.metric: 'acc' is not a metric") for line in lines), lines
    assert f"{path}:5: search.space.train.lrr: no such option" in lines
    with pytest.raises(ConfigError) as error:
        load_experiment(path, ["search.metric=val_loss"])
    assert str(error.value) == f"{path}:5: search.space.train.lrr: no such option"
    with pytest.raises(ConfigError) as error:
        load_experiment(path, ["search.metric=acc2"])
    lines = str(error.value).splitlines()
    assert f"{path}:5: search.space.train.lrr: no such option" in lines
    assert any(line.startswith("--set: search.metric: 'acc2' is not a metric") for line in lines), lines


@pytest.mark.parametrize("path", [QUICKSTART, None])  # the list in the file, or only in the defaults
def test_a_list_item_cannot_be_set_by_index(path):
    with pytest.raises(ConfigError) as error:
        load_experiment(path, ["search.methods.0=sft", "train.lr=1e-3"])
    example = "[sft, gmt, rmt]" if path else "[gmt]"
    assert str(error.value) == ("--set search.methods.0: search.methods is a list, and list items cannot be set "
                                f"by index: give the whole list, e.g. --set 'search.methods={example}'")


def test_the_value_a_message_already_quotes_is_not_repeated():
    with pytest.raises(ConfigError) as error:
        load_experiment(None, ["name=a/b"])
    assert str(error.value).count("'a/b'") == 1, str(error.value)
    with pytest.raises(ConfigError, match=r"train.lr: .*\(got 'fast'\)"):
        load_experiment(None, ["train.lr=fast"])
