"""Dataset descriptions for trackers: names, sources and digests of what a run uses."""

import json
from pathlib import Path

from gmt_ray.config import load_experiment
from gmt_ray.data.catalog import describe_datasets, file_digest, records_digest
from gmt_ray.data.sources import load_records
from gmt_ray.eval.datasets import evaluation_datasets

GSM8K = Path(__file__).parents[1] / "eval" / "data" / "gsm8k_sample.jsonl"
SMALL = ["data.arithmetic.train_size=40", "data.arithmetic.validation_size=8", "data.arithmetic.test_size=8"]


def _described(overrides):
    config = load_experiment(None, SMALL + overrides)
    records = load_records(config.data)
    return {d.name: d for d in [*describe_datasets(config, records), *evaluation_datasets(config, records.get("test"))]}


def test_generated_data_has_a_stable_digest_that_follows_its_settings():
    first = _described(["eval.benchmarks=[arithmetic]"])
    assert sorted(first) == ["arithmetic-test", "arithmetic-train", "arithmetic-validation"]
    train = first["arithmetic-train"]
    assert (train.context, train.split, train.rows, train.source_type) == ("train", "train", 40, "code")
    assert train.source["tags"]["mlflow.source.name"] == "gmt_ray.data.arithmetic.generate_arithmetic"
    assert json.loads(train.source["tags"]["gmt_ray.generator.config"])["seed"] == 0
    assert first["arithmetic-test"].context == "eval" and first["arithmetic-validation"].context == "validation"
    again = _described(["eval.benchmarks=[arithmetic]"])
    assert again["arithmetic-train"].digest == train.digest  # the same data, the same digest
    reseeded = _described(["eval.benchmarks=[arithmetic]", "data.arithmetic.seed=1"])
    assert reseeded["arithmetic-train"].digest != train.digest


def test_files_are_named_for_themselves_and_digested_by_content(tmp_path):
    rows = [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(20)]
    path = tmp_path / "mydata.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    described = _described(["data.source=file", f"data.path={path}", "eval.benchmarks=[gsm8k]",
                            f"eval.data={{gsm8k: {GSM8K}}}"])
    assert sorted(described) == ["gsm8k-test", "mydata-train", "mydata-validation"]
    assert described["mydata-train"].source == {"uri": str(path)} and described["mydata-train"].rows == 19
    gsm8k = described["gsm8k-test"]
    assert (gsm8k.source_type, gsm8k.source, gsm8k.context, gsm8k.digest) == (
        "local", {"uri": str(GSM8K.resolve())}, "eval", file_digest(GSM8K))


def test_record_digests_ignore_key_order_but_not_content():
    assert records_digest([{"a": 1, "b": 2}]) == records_digest([{"b": 2, "a": 1}])
    assert records_digest([{"a": 1}]) != records_digest([{"a": 2}])
    assert len(records_digest([])) == 16
