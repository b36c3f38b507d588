"""Local files through datasets' loaders, with column mapping and row-level errors."""

import json

import pytest

from gmt_ray.config import DataConfig
from gmt_ray.data.sources import DataError, load_records

ROWS = [{"query": f"What is {i} + 1?", "answer_text": f"{i} + 1 = {i + 1}\n#### {i + 1}"} for i in range(20)]


def write(tmp_path, name, rows):
    path = tmp_path / name
    if name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif name.endswith(".csv"):
        import csv

        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("name", ["train.jsonl", "train.csv", "train.parquet"])
def test_file_formats_with_column_mapping(tmp_path, name):
    path = write(tmp_path, name, ROWS)
    config = DataConfig(source="file", path=str(path), prompt_column="query", response_column="answer_text",
                        validation_fraction=0.1)
    splits = load_records(config)
    assert len(splits["train"]) == 18 and len(splits["validation"]) == 2
    mapped = [{"prompt": r["query"], "response": r["answer_text"]} for r in ROWS]
    assert sorted(map(str, splits["train"] + splits["validation"])) == sorted(map(str, mapped))


def test_messages_column(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": f"hello {i}"}]}
            for i in range(10)]
    path = write(tmp_path, "chat.jsonl", rows)
    splits = load_records(DataConfig(source="file", path=str(path), messages_column="messages"))
    assert {"prompt": [{"role": "user", "content": "hi 0"}], "response": "hello 0"} in splits["train"] + splits["validation"]


def test_separate_validation_file_and_max_samples(tmp_path):
    train = write(tmp_path, "train.jsonl", ROWS)
    val = write(tmp_path, "val.jsonl", ROWS[:3])
    splits = load_records(DataConfig(source="file", path=str(train), validation_path=str(val),
                                     prompt_column="query", response_column="answer_text", max_samples=5))
    assert len(splits["train"]) == 5 and len(splits["validation"]) == 3


@pytest.mark.parametrize(
    "rows, message",
    [
        (ROWS[:3] + [{"query": "q"}] + ROWS[3:], r"row 3: missing field 'answer_text'"),
        (ROWS[:5] + [{"query": "q", "answer_text": 7}], r"row 5: field 'answer_text' must be a string, got int"),
        (ROWS[:2] + [{"query": "  ", "answer_text": "a"}], r"row 2: field 'query' is empty"),
    ],
)
def test_bad_rows_are_named(tmp_path, rows, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = DataConfig(source="file", path=str(path), prompt_column="query", response_column="answer_text")
    with pytest.raises(DataError, match=message) as error:
        load_records(config)
    assert str(path) in str(error.value)


def test_missing_empty_and_unsupported_files(tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        load_records(DataConfig(source="file", path=str(tmp_path / "none.jsonl")))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="empty|could not be read"):
        load_records(DataConfig(source="file", path=str(empty)))
    odd = tmp_path / "data.txt"
    odd.write_text("x")
    with pytest.raises(DataError, match="unsupported data file type '.txt'"):
        load_records(DataConfig(source="file", path=str(odd)))


def test_preference_records_from_file(tmp_path):
    rows = [{"prompt": f"p{i}", "chosen": "good", "rejected": "bad"} for i in range(10)]
    path = write(tmp_path, "prefs.jsonl", rows)
    splits = load_records(DataConfig(source="file", path=str(path)), kind="preference")
    assert rows[0] in splits["train"] + splits["validation"] and len(splits["train"]) == 9


def test_builtin_generator_follows_the_config():
    splits = load_records(DataConfig())
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [4000, 200, 200]


def test_preference_responses_may_be_conversations(tmp_path):
    import json

    from gmt_ray.config import DataConfig
    from gmt_ray.data.sources import load_records

    rows = [{"prompt": f"q{i}", "chosen": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "good"}],
             "rejected": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "bad"}]} for i in range(4)]
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = load_records(DataConfig(source="file", path=str(path), validation_fraction=0.25), "preference")
    assert {"prompt": "q0", "chosen": "good", "rejected": "bad"} in records["train"] + records["validation"]
    assert len(records["validation"]) == 1


def test_the_validation_split_of_a_sorted_file_is_a_seeded_random_sample(tmp_path):
    # A file sorted by length (or source, or topic): its tail is not a fair validation set.
    rows = [{"query": f"q{i}", "answer_text": "x" * (i + 1)} for i in range(200)]
    path = write(tmp_path, "sorted.jsonl", rows)

    def validation(seed):
        config = DataConfig(source="file", path=str(path), prompt_column="query", response_column="answer_text",
                            validation_fraction=0.1, shuffle_seed=seed)
        return [int(r["prompt"][1:]) for r in load_records(config)["validation"]]

    picked = validation(0)
    assert len(picked) == 20 and picked == validation(0)  # the same split every run
    assert min(picked) < 100 < max(picked)  # from all over the file, not its tail (180..199)
    assert set(picked) != set(validation(1))
