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
    [  # a JSON Lines file's rows are named by their line, 1-based
        (ROWS[:3] + [{"query": "q"}] + ROWS[3:], r"bad.jsonl:4: missing field 'answer_text' \(row has \['query'\]\)"),
        (ROWS[:3] + [{"query": "q", "answer_text": None}], r"bad.jsonl:4: field 'answer_text' is null"),
        (ROWS[:5] + [{"query": "q", "answer_text": 7}], r"bad.jsonl:6: field 'answer_text' must be a string, got int"),
        (ROWS[:2] + [{"query": "  ", "answer_text": "a"}], r"bad.jsonl:3: field 'query' is empty"),
    ],
)
def test_bad_rows_are_named(tmp_path, rows, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = DataConfig(source="file", path=str(path), prompt_column="query", response_column="answer_text")
    with pytest.raises(DataError, match=message) as error:
        load_records(config)
    assert str(error.value).startswith(f"{path}:")


@pytest.mark.parametrize("name", ["bad.csv", "bad.parquet"])
def test_a_field_a_row_lacks_is_not_said_to_be_there(tmp_path, name):
    # datasets fills the field a row lacks with null: the row is not said to have it.
    rows = [dict(r) for r in ROWS]
    rows[3]["answer_text"] = None
    path = write(tmp_path, name, rows)
    config = DataConfig(source="file", path=str(path), prompt_column="query", response_column="answer_text")
    with pytest.raises(DataError) as error:
        load_records(config)
    assert str(error.value) == (f"{path}: row 3: missing field 'answer_text' "
                                "(absent or null; the row's non-null fields: ['query'])")


GOOD = "".join(json.dumps(r) + "\n" for r in ROWS)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", r"bad.jsonl: the file is empty \(no rows\)$"),
        (b"\n  \n\n", r"bad.jsonl: the file is empty \(no rows\)$"),
        (GOOD.replace("What is 17", "What is 17\"", 1).encode(), r"bad.jsonl:18: not JSON \(Expecting ',' delimiter: column \d+\)$"),
        (b"hello\nworld\n", r"bad.jsonl:1: not JSON \(Expecting value: column 1\)$"),
        (GOOD.encode() + b'{"query": "caf\xe9", "answer_text": "x"}\n', r"bad.jsonl:21: not UTF-8 \(invalid continuation byte"),
        (json.dumps(ROWS).encode() + b"\n", r"bad.jsonl:1: not a JSON object \(a JSON array\); a .jsonl file holds one"),
        (GOOD.encode() + b"7\n", r"bad.jsonl:21: not a JSON object \(a JSON number\)$"),
        # blank lines are counted, and skipped
        (b"\n" + GOOD.encode() + b"\n\n" + b'{"query": "q"}\n', r"bad.jsonl:24: missing field 'answer_text'"),
    ],
    ids=["empty", "blank", "bad-line", "not-json", "not-utf8", "array", "number", "blank-lines-counted"],
)
def test_a_jsonl_file_that_is_not_json_lines_is_named_by_line(tmp_path, capfd, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    config = DataConfig(source="file", path=str(path), prompt_column="query", response_column="answer_text")
    with pytest.raises(DataError, match=message) as error:
        load_records(config)
    assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)
    assert "Failed to load" not in "".join(capfd.readouterr())  # the one message is the error


def test_jsonl_with_crlf_a_byte_order_mark_and_blank_lines_loads(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes("\ufeff".encode() + GOOD.replace("\n", "\r\n\r\n").encode())
    config = DataConfig(source="file", path=str(path), prompt_column="query", response_column="answer_text")
    splits = load_records(config)
    assert len(splits["train"] + splits["validation"]) == len(ROWS)
    assert {"prompt": ROWS[0]["query"], "response": ROWS[0]["answer_text"]} in splits["train"] + splits["validation"]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("bad.json", b"", r"bad.json: the file is empty \(no rows\)$"),
        ("bad.json", b'[\n {"query": "q", "answer_text": "a"},\n {"query": "q" "answer_text": "a"}\n]\n',
         r"bad.json:3: not JSON \(Expecting ',' delimiter: column 16\)$"),
        ("bad.json", GOOD.encode() + b'{"query": "q",\n', r"bad.json:21: not JSON \(Expecting property name"),
        ("bad.json", b"nonsense\n", r"bad.json:1: not JSON \(Expecting value: column 1\)$"),
        ("bad.csv", b"query,answer_text\nq,a\ncaf\xe9,x\n", r"bad.csv:3: not UTF-8 \(invalid continuation byte"),
        ("bad.csv", b"", r"bad.csv: the file is empty \(no rows\)$"),
        ("bad.csv", b"query,answer_text\n", r"bad.csv: the file has a header and no rows$"),
    ],
    ids=["json-empty", "json-array", "json-lines", "json-nonsense", "csv-not-utf8", "csv-empty", "csv-header-only"],
)
def test_json_and_csv_files_that_cannot_be_read_are_named_by_line(tmp_path, capfd, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    config = DataConfig(source="file", path=str(path), prompt_column="query", response_column="answer_text")
    with pytest.raises(DataError, match=message) as error:
        load_records(config)
    assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)
    assert "Failed to load" not in "".join(capfd.readouterr())


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
