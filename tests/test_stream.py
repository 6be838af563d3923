"""Reading JSONL: file resolution, bad lines (skipped and counted, or strict), line counts, shuffling."""

import gzip
import logging
import random

import pytest

from sr_lightning.data.format import BadRecord
from sr_lightning.data.stream import (
    BadInputError,
    LineReport,
    count_lines,
    iter_raw_lines,
    parse_line,
    resolve_files,
    shuffled,
)
from tests.helpers import numbered_fixture_lines, write_lines


def test_resolve_files_expands_globs_and_lists(tmp_path):
    a = write_lines(tmp_path / "a.jsonl", ["{}"])
    b = write_lines(tmp_path / "b.jsonl", ["{}"])
    assert resolve_files(str(tmp_path / "*.jsonl")) == [a, b]
    assert resolve_files([b, str(a)]) == [b, a]
    assert resolve_files(None) == []


def test_missing_file_and_empty_glob_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="data file not found: .*nope.jsonl"):
        resolve_files(tmp_path / "nope.jsonl")
    with pytest.raises(FileNotFoundError, match="no file matches the pattern"):
        resolve_files(str(tmp_path / "*.jsonl"))


BAD_LINES = {
    "malformed JSON": '{"context": "c", ',
    "expected a JSON object": "[1, 2, 3]",
    "missing field 'target'": '{"context": "c", "population": "p"}',
    "is int, not a string": '{"context": "c", "population": 3, "target": "x0"}',
    "empty target": '{"context": "c", "population": "p", "target": ""}',
}


@pytest.mark.parametrize("reason, line", BAD_LINES.items())
def test_each_bad_line_is_reported_with_file_and_line(tmp_path, reason, line):
    path = write_lines(tmp_path / "d.jsonl", [numbered_fixture_lines(1)[0], line])
    report = LineReport()
    parsed, errors = [], []
    for source, raw in iter_raw_lines([path], report):
        try:
            parsed.append(parse_line(raw, source))
        except BadRecord as error:
            errors.append(f"{source}: {error}")
    assert len(parsed) == 1 and parsed[0].source == f"{path}:1"
    assert len(errors) == 1 and errors[0].startswith(f"{path}:2: ") and reason in errors[0]


def test_non_utf8_line_is_a_bad_record():
    with pytest.raises(BadRecord, match="invalid UTF-8"):
        parse_line(b'{"target": "\xff"}\n', "f:1")


def test_truncated_gzip_is_counted_not_fatal(tmp_path):
    lines = numbered_fixture_lines(200)
    whole = gzip.compress("".join(line + "\n" for line in lines).encode())
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(whole[: len(whole) // 2])
    report = LineReport()
    read = list(iter_raw_lines([path], report))
    assert 0 < len(read) < 200
    assert report.counts["unreadable file data"] == 1
    assert report.examples[0].startswith(f"{path}:{len(read) + 1}: unreadable file data")
    assert count_lines(path) >= len(read)  # counting a broken stream warns instead of failing


def test_strict_mode_raises_with_the_place(tmp_path):
    report = LineReport(strict=True)
    with pytest.raises(BadInputError, match=r"f.jsonl:7: malformed JSON"):
        report.skip("f.jsonl:7", "malformed JSON (x)")


def test_skips_are_counted_by_reason_and_logged_for_the_first_few(caplog):
    report = LineReport(max_logged=2)
    with caplog.at_level(logging.WARNING):
        for i in range(5):
            report.skip(f"f:{i}", "malformed JSON (at column 3)")
    assert report.counts == {"malformed JSON": 5} and report.total == 5
    assert len(report.examples) == 2 and "f:0: malformed JSON" in caplog.text


def test_empty_file_reads_nothing(tmp_path, caplog):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with caplog.at_level(logging.WARNING):
        assert list(iter_raw_lines([path], LineReport())) == []
    assert "empty" in caplog.text
    assert count_lines(path) == 0


def test_count_lines_counts_a_last_line_without_newline_and_caches(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("a\nb\nc")
    assert count_lines(path) == 3
    assert (tmp_path / ".d.jsonl.lines.json").is_file()
    assert count_lines(path) == 3
    path.write_text("a\nb\nc\nd\n")  # new size: the cache no longer applies
    assert count_lines(path) == 4


def test_gzip_lines_are_read_like_plain_ones(tmp_path):
    lines = numbered_fixture_lines(5)
    path = tmp_path / "d.jsonl.gz"
    path.write_bytes(gzip.compress("".join(line + "\n" for line in lines).encode()))
    assert [raw.decode().rstrip("\n") for _, raw in iter_raw_lines([path], LineReport())] == lines
    assert count_lines(path) == 5


def test_shuffled_is_a_seeded_permutation():
    first = list(shuffled(range(100), 10, random.Random(1)))
    assert sorted(first) == list(range(100)) and first != list(range(100))
    assert first == list(shuffled(range(100), 10, random.Random(1)))
