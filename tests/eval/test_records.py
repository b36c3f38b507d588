"""gmt_ray.eval.records.read_jsonl: every way a file can be unreadable is a ValueError naming it
(and its line where there is one), the one kind of error its callers turn into a message."""

import gzip

import pytest

from gmt_ray.eval.records import read_jsonl


def _lines(count):
    return b"".join(b'{"i": %d}\n' % i for i in range(count))


def test_a_gzip_file_is_read_line_by_line_blank_lines_skipped(tmp_path):
    path = tmp_path / "f.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"i": 0}\n\n{"i": "caf\xc3\xa9"}\n'))
    assert list(read_jsonl(path)) == [(1, {"i": 0}), (3, {"i": "café"})]


def test_a_bad_byte_is_placed_on_its_own_line_far_into_the_file(tmp_path):
    # Past the 8 KiB a text reader decodes at once: its error would not say which line it was.
    path = tmp_path / "f.jsonl"
    path.write_bytes(_lines(999) + b'{"i": "\xe9"}\n' + _lines(10))
    with pytest.raises(ValueError) as error:
        list(read_jsonl(path))
    assert str(error.value) == f"{path}:1000: not UTF-8"


def _flip_a_middle_byte(data):
    data = bytearray(data)
    data[len(data) // 2] ^= 0xFF
    return bytes(data)


@pytest.mark.parametrize("corrupt,message", [
    (lambda whole: _lines(3), "not a gzip file"),
    (lambda whole: b"", None),  # an empty file is an empty file: no records, no error
    (lambda whole: whole[:len(whole) // 2], "gzip data ends early (after line "),
    (_flip_a_middle_byte, "corrupt gzip data"),
    (lambda whole: whole[:-8] + b"\0\0\0\0" + whole[-4:], "corrupt gzip data (after line 2000) (CRC check failed"),
])
def test_a_file_that_is_no_gzip_is_named_not_a_traceback(tmp_path, corrupt, message):
    path = tmp_path / "f.jsonl.gz"
    path.write_bytes(corrupt(gzip.compress(_lines(2000))))
    if message is None:
        assert list(read_jsonl(path)) == []
        return
    with pytest.raises(ValueError) as error:
        list(read_jsonl(path))
    assert str(error.value).startswith(f"{path}: {message}"), error.value
