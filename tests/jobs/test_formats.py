"""The job row formats (app/jobs/formats.py): readers of CSV, JSON Lines and Parquet, and writers.

Pure code: no database, no HTTP. Each test holds what a user would notice: the rows scored, the
per-row errors naming the feature, a bad file refused as a whole, resuming after a crash giving
every row exactly once, memory bounded by the chunk whatever the input's size.
"""

from __future__ import annotations

import csv
import io
import json
import random
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.jobs import formats
from app.jobs.formats import (
    MEDIA_TYPES,
    JobFormat,
    JobInputError,
    ResultWriter,
    RowChunk,
    check_head,
    decode_results,
    encode_results,
    format_for,
    iter_chunks,
)
from app.jobs.runner import SegmentStream

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
ROOT = Path(__file__).resolve().parents[2]


class Pipe(io.RawIOBase):
    """A readable, non-seekable byte stream, like a socket or a pipe: it can only go forward."""

    def __init__(self, data: bytes | Iterator[bytes]) -> None:
        self._parts = iter([data]) if isinstance(data, bytes) else data
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            self._pending = next(self._parts, b"")
            if not self._pending:
                return 0
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def pipe(data: bytes | Iterator[bytes]) -> io.BufferedReader:
    return io.BufferedReader(Pipe(data))


def read_all(
    data: bytes, fmt: JobFormat, *, chunk_rows: int = 3, features: Sequence[str] = FEATURES
) -> list[RowChunk]:
    return list(iter_chunks(io.BytesIO(data), fmt, features, chunk_rows=chunk_rows))


def scored(chunks: list[RowChunk]) -> dict[int, list[float]]:
    """Input row -> its values as scored."""
    out: dict[int, list[float]] = {}
    for chunk in chunks:
        assert chunk.rows.dtype == np.float32
        assert chunk.rows.shape == (len(chunk.good), len(FEATURES))
        out.update(zip(chunk.good, chunk.rows.tolist(), strict=True))
    return out


def errors(chunks: list[RowChunk]) -> dict[int, str]:
    return {row: why for chunk in chunks for row, why in chunk.errors.items()}


def parquet_bytes(table: pa.Table, row_group_size: int | None = None) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=row_group_size)
    return sink.getvalue()


def iris_matrix(n: int, seed: int = 0) -> np.ndarray:
    return np.round(np.random.default_rng(seed).uniform(0, 8, (n, len(FEATURES))), 1)


def as_csv(matrix: np.ndarray) -> bytes:
    lines = [",".join(FEATURES)] + [",".join(map(repr, row)) for row in matrix.tolist()]
    return ("\n".join(lines) + "\n").encode()


def as_jsonl(matrix: np.ndarray, *, objects: bool) -> bytes:
    rows = [dict(zip(FEATURES, r, strict=True)) if objects else r for r in matrix.tolist()]
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def as_parquet(matrix: np.ndarray, row_group_size: int | None = None) -> bytes:
    table = pa.table({name: matrix[:, j] for j, name in enumerate(FEATURES)})
    return parquet_bytes(table, row_group_size)


# --- choosing the format ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "filename", "expected"),
    [
        ("text/csv", None, JobFormat.CSV),
        ("text/csv; charset=utf-8", "rows.bin", JobFormat.CSV),
        ("application/x-ndjson", None, JobFormat.JSONL),
        ("application/jsonl", None, JobFormat.JSONL),
        ("application/vnd.apache.parquet", None, JobFormat.PARQUET),
        ("application/octet-stream", "Rows.PARQUET", JobFormat.PARQUET),
        (None, "rows.jsonl", JobFormat.JSONL),
        ("", "rows.ndjson", JobFormat.JSONL),
        (None, "rows.csv", JobFormat.CSV),
    ],
)
def test_format_is_chosen_by_media_type_then_file_name(
    content_type: str | None, filename: str | None, expected: JobFormat
) -> None:
    assert format_for(content_type, filename) is expected


@pytest.mark.parametrize(
    ("content_type", "filename"), [("image/png", "rows.csv"), (None, "rows.xlsx"), (None, None)]
)
def test_an_unknown_format_is_refused_naming_the_file(content_type: str | None, filename: str | None) -> None:
    with pytest.raises(JobInputError) as caught:
        format_for(content_type, filename)
    assert caught.value.field == "file"
    assert "text/csv" in caught.value.detail


def test_media_types_name_each_format() -> None:
    assert MEDIA_TYPES == {
        JobFormat.CSV: "text/csv",
        JobFormat.JSONL: "application/x-ndjson",
        JobFormat.PARQUET: "application/vnd.apache.parquet",
    }


# --- the head check at submit -----------------------------------------------------------------


def test_head_of_a_good_upload_in_each_format_passes() -> None:
    matrix = iris_matrix(5)
    check_head(
        JobFormat.CSV, b"\xef\xbb\xbfpetal_width,id,sepal_length,sepal_width,petal_length\r\n1,", FEATURES
    )
    check_head(JobFormat.JSONL, as_jsonl(matrix, objects=True)[:30], FEATURES)  # cut: not judged
    check_head(JobFormat.JSONL, as_jsonl(matrix, objects=True), FEATURES)
    check_head(JobFormat.JSONL, b"\n" + as_jsonl(matrix, objects=False), FEATURES)
    check_head(JobFormat.PARQUET, as_parquet(matrix)[:100], FEATURES)


@pytest.mark.parametrize(
    ("fmt", "head", "says"),
    [
        (JobFormat.CSV, b"sepal_length,sepal_width,petal_length\n1,2,3\n", "petal_width"),
        (JobFormat.CSV, b"", "empty"),
        (JobFormat.CSV, b"\r\n\nsepal_length,sepal_width,petal_length\n", "petal_width"),
        (JobFormat.CSV, b"sepal_length,sepal_width,petal_length,petal_width,sepal_width\n", "twice"),
        (JobFormat.CSV, b"\xff\xfes\x00e\x00p\x00a\x00l\x00_\x00l\x00e\x00n\x00g\x00t\x00h\x00", "UTF-8"),
        (JobFormat.JSONL, b'{"sepal_length": 1,\n', "line 1"),
        (JobFormat.JSONL, b'"a string"\n', "line 1"),
        (JobFormat.PARQUET, b"sepal_length,sepal_width\n", "Parquet"),
    ],
)
def test_head_of_a_bad_upload_is_refused_naming_the_file(fmt: JobFormat, head: bytes, says: str) -> None:
    with pytest.raises(JobInputError) as caught:
        check_head(fmt, head, FEATURES)
    assert caught.value.field == "file"
    assert says in caught.value.detail


# --- CSV ----------------------------------------------------------------------------------------


def test_csv_round_trip_in_chunks() -> None:
    matrix = iris_matrix(10)
    chunks = read_all(as_csv(matrix), JobFormat.CSV, chunk_rows=4)
    assert [(c.first_row, c.n_rows) for c in chunks] == [(0, 4), (4, 4), (8, 2)]
    assert scored(chunks) == dict(enumerate(matrix.astype(np.float32).tolist()))
    assert errors(chunks) == {}


def test_csv_columns_are_matched_by_name_and_others_ignored() -> None:
    data = (
        b"id,petal_width,petal_length,note,sepal_width,sepal_length\n"
        b"a,0.2,1.4,hello,3.5,5.1\n"
        b"b,2.3,5.4,x,3.0,6.2\n"
    )
    chunks = read_all(data, JobFormat.CSV)
    assert scored(chunks) == {
        0: pytest.approx([5.1, 3.5, 1.4, 0.2]),
        1: pytest.approx([6.2, 3.0, 5.4, 2.3]),
    }


def test_csv_header_lacking_a_feature_fails_the_whole_input_naming_it() -> None:
    data = b"sepal_length,sepal_width,petal_length\n1,2,3\n"
    with pytest.raises(JobInputError) as caught:
        read_all(data, JobFormat.CSV)
    assert caught.value.field == "file"
    assert "petal_width" in caught.value.detail


def test_csv_with_nothing_in_it_fails_the_whole_input() -> None:
    with pytest.raises(JobInputError, match="empty"):
        read_all(b"", JobFormat.CSV)


def test_csv_blank_lines_before_the_header_are_skipped() -> None:
    data = b"\n\r\nsepal_length,sepal_width,petal_length,petal_width\n1,2,3,4\n"
    check_head(JobFormat.CSV, data, FEATURES)
    chunks = read_all(data, JobFormat.CSV)
    assert scored(chunks) == {0: [1.0, 2.0, 3.0, 4.0]}
    assert read_all(data, JobFormat.CSV, chunk_rows=1)[0].resume == chunks[0].resume


def test_csv_with_only_a_header_has_no_rows() -> None:
    assert read_all(b"sepal_length,sepal_width,petal_length,petal_width\n", JobFormat.CSV) == []


def test_csv_quoted_fields_bom_crlf_and_blank_lines() -> None:
    data = (
        b'\xef\xbb\xbf"sepal_length",sepal_width,"petal_length",petal_width,comment\r\n'
        b'"5.1",3.5,1.4,0.2,"a comment, with a comma"\r\n'
        b"\r\n"
        b'6.2,3.0,5.4,2.3,"two\r\nlines and a ""quote"""\r\n'
        b"\r\n\r\n"
        b"4.9,3.0,1.4,0.2,\r\n"
        b"\r\n"
    )
    chunks = read_all(data, JobFormat.CSV, chunk_rows=2)
    assert scored(chunks) == {
        0: pytest.approx([5.1, 3.5, 1.4, 0.2]),
        1: pytest.approx([6.2, 3.0, 5.4, 2.3]),
        2: pytest.approx([4.9, 3.0, 1.4, 0.2]),
    }
    assert sum(c.n_rows for c in chunks) == 3  # blank lines are not rows


def test_csv_rows_that_cannot_be_scored_are_errors_naming_the_feature() -> None:
    data = (
        b"sepal_length,sepal_width,petal_length,petal_width\n"
        b"5.1,3.5,1.4,0.2\n"
        b"5.1,,1.4,0.2\n"
        b"5.1,3.5,abc,0.2\n"
        b"5.1,3.5,1.4,nan\n"
        b"inf,3.5,1.4,0.2\n"
        b"5.1,3.5,1e39,0.2\n"
        b"5.1,3.5,1.4\n"
        b"5.1,3.5,1.4,0.2,9\n"
        b"5.1,3.5,\xff,0.2\n"
        b"6.0,3.0,4.0,1.0\n"
    )
    chunks = read_all(data, JobFormat.CSV, chunk_rows=4)
    assert sorted(scored(chunks)) == [0, 9]
    why = errors(chunks)
    assert why[1] == "sepal_width: missing value"
    assert why[2] == "petal_length: must be a number, got 'abc'"
    assert why[3].startswith("petal_width: must be a finite number")
    assert why[4].startswith("sepal_length: must be a finite number")
    assert why[5] == "petal_length: is out of range for a 32-bit float"
    assert why[6].startswith("petal_width: missing value")
    assert "5 values" in why[7]
    assert why[8].startswith("petal_length: must be a number")
    assert sum(c.n_rows for c in chunks) == 10


def test_csv_row_longer_than_the_line_limit_is_a_row_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("app.jobs.formats.MAX_LINE_CHARS", 64)
    monkeypatch.setattr("app.jobs.formats._BLOCK_CHARS", 16)  # the text is read in small pieces
    data = b"sepal_length,sepal_width,petal_length,petal_width,note\n1,2,3,4," + b"x" * 500 + b"\n5,6,7,8,y\n"
    chunks = read_all(data, JobFormat.CSV)
    assert "longer than 64" in errors(chunks)[0]
    assert scored(chunks) == {1: [5.0, 6.0, 7.0, 8.0]}


def test_csv_line_ends_are_only_cr_and_lf_as_the_csv_module_reads_them() -> None:
    # str.splitlines would also break at form feeds, \x1c-\x1e and \u2028; csv does not.
    data = (
        "sepal_length,sepal_width,petal_length,petal_width,note\r"
        "5.1,3.5,1.4,0.2,a\x0cform feed\r"
        '6.2,3.0,5.4,2.3,"\u2028 and \x1e"\r'
        "4.9,3.0,1.4,0.2,\x85"
    ).encode()
    chunks = read_all(data, JobFormat.CSV)
    assert errors(chunks) == {}
    assert sorted(scored(chunks)) == [0, 1, 2]


@pytest.mark.parametrize("block_chars", [1, 7, 64])
def test_csv_read_in_any_block_size_gives_the_same_chunks_and_resume_points(
    monkeypatch: pytest.MonkeyPatch, block_chars: int
) -> None:
    whole = read_all(INPUTS[JobFormat.CSV], JobFormat.CSV, chunk_rows=6)
    monkeypatch.setattr("app.jobs.formats._BLOCK_CHARS", block_chars)  # cuts "\r\n" and "é" apart
    small = read_all(INPUTS[JobFormat.CSV], JobFormat.CSV, chunk_rows=6)
    assert _signature(small) == _signature(whole)
    assert [c.resume for c in small] == [c.resume for c in whole]


# Cells a CSV may hold: numbers as people and programs write them, and every way a value goes wrong.
_CELLS = [
    "5.1", "-0.25", "3", "+4.5", ".5", "7.", "1e3", "2.5E-3", "-0", "0.1000000000000000055511151231257827",
    "3.4028235e38", "3.5e38", "1e-320", "1e400", "-1e400", "nan", "NaN", "inf", "-Infinity", "",
    " 5.1", "5.1 ", "\t2", "1_000", "0x10", "abc", "5,1", '"5.1"', '"4.9"', '"a ""quoted"" note"',
    '"line\nbreak"', "\u0665", "é", "N/A", "NULL", "#N/A", "true", "1.5f", "--1", "1e", "\x0c",
    "\ufeff5.1", "nan(ind)", "-nan()", "x\ry", "\x00",
]  # fmt: skip


@st.composite
def _csv_inputs(draw: st.DrawFn) -> tuple[bytes, int]:
    """A header (features among other columns, in any order) and rows of any cells, row widths,
    blank lines and line ends; mostly good rows, so that many chunks are plain."""
    columns = draw(st.permutations([*FEATURES, "id"]))
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    good = st.floats(-1e6, 1e6, allow_nan=False).map(repr)
    lines = [",".join(columns)]
    for _ in range(draw(st.integers(0, 30))):
        kind = draw(st.integers(0, 9))
        if kind == 0:
            lines.append("")
            continue
        width = len(columns) if kind != 1 else draw(st.integers(1, len(columns) + 1))
        cell = st.sampled_from(_CELLS) if kind == 2 else good
        lines.append(",".join(draw(cell) for _ in range(width)))
    text = newline.join(lines) + draw(st.sampled_from(["", newline, newline * 2]))
    return text.encode(), draw(st.integers(1, 7))


def _both_readers(data: bytes, chunk_rows: int, features: Sequence[str] = FEATURES) -> tuple[Any, Any]:
    """What a seekable stream (pyarrow where it can) and a pipe (csv.reader) give for `data`."""

    def read(stream: Any) -> str | list[Any]:
        try:
            chunks = list(iter_chunks(stream, JobFormat.CSV, features, chunk_rows=chunk_rows))
        except JobInputError as exc:
            return str(exc)
        return [(*signature, c.resume) for c, signature in zip(chunks, _signature(chunks), strict=True)]

    return read(io.BytesIO(data)), read(pipe(data))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_csv_inputs(), st.sampled_from([1, 5, 64, 1 << 20]))
def test_csv_chunks_are_the_same_parsed_by_pyarrow_or_by_csv_reader(
    case: tuple[bytes, int], block_bytes: int
) -> None:
    """A seekable input's plain chunks are parsed by pyarrow, the rest by csv.reader (which a
    stream that cannot seek always gets): the rows, errors and resume points are the same, however
    the bytes are read (blocks of `block_bytes`: lines cut across reads)."""
    data, chunk_rows = case
    defaults = formats._PLAIN_BLOCK_BYTES, formats._PLAIN_MIN_ROWS
    formats._PLAIN_BLOCK_BYTES, formats._PLAIN_MIN_ROWS = block_bytes, 1
    try:
        seekable, piped = _both_readers(data, chunk_rows)
    finally:
        formats._PLAIN_BLOCK_BYTES, formats._PLAIN_MIN_ROWS = defaults
    assert seekable == piped


@pytest.mark.parametrize(
    ("data", "row", "says"),
    [
        # pyarrow skips a BOM at the start of what it is given: every chunk, not only the file's.
        (b"a,b\n1,2\n\xef\xbb\xbf3,4\n", 1, "a: must be a number, got '\\ufeff3'"),
        # pyarrow reads nan(...); float() does not.
        (b"a,b\n1,2\n3,nan(ind)\n", 1, "b: must be a number, got 'nan(ind)'"),
    ],
)
def test_what_pyarrow_would_take_and_csv_reader_refuses_is_refused(
    monkeypatch: pytest.MonkeyPatch, data: bytes, row: int, says: str
) -> None:
    monkeypatch.setattr("app.jobs.formats._PLAIN_MIN_ROWS", 1)
    seekable, piped = _both_readers(data, 1, ["a", "b"])
    assert seekable == piped
    assert errors(read_all(data, JobFormat.CSV, chunk_rows=1, features=["a", "b"])) == {row: says}


@pytest.mark.parametrize("block_chars", [16, 50, 1000])
def test_a_line_over_the_limit_is_a_row_error_wherever_the_reading_started(
    monkeypatch: pytest.MonkeyPatch, block_chars: int
) -> None:
    """Whether a long line is refused depends on the line alone: not on how the text was cut into
    reads, which differs between a whole read, a resume, and a chunk read again by csv.reader."""
    monkeypatch.setattr("app.jobs.formats.MAX_LINE_CHARS", 64)
    monkeypatch.setattr("app.jobs.formats._BLOCK_CHARS", block_chars)
    monkeypatch.setattr("app.jobs.formats._PLAIN_MIN_ROWS", 1)
    data = b"a,b\n1,22222222\n1," + b"2" * 67 + b"\n5,6\n"
    seekable, piped = _both_readers(data, 1, ["a", "b"])
    assert seekable == piped
    chunks = read_all(data, JobFormat.CSV, chunk_rows=1, features=["a", "b"])
    assert errors(chunks) == {1: "the row is longer than 64 characters"}
    assert {row for chunk in chunks for row in chunk.good} == {0, 2}


def test_plain_chunks_are_parsed_by_pyarrow(monkeypatch: pytest.MonkeyPatch) -> None:
    """The property above would hold with csv.reader alone: this one shows pyarrow takes the plain
    chunks and csv.reader only the one holding a quoted field."""
    taken: list[bool] = []
    real = formats._PlainCsv.chunk

    def spy(self: Any, data: bytes, row: int, at: int) -> RowChunk | None:
        chunk = real(self, data, row, at)
        taken.append(chunk is not None)
        return chunk

    monkeypatch.setattr(formats._PlainCsv, "chunk", spy)
    monkeypatch.setattr(formats, "_PLAIN_MIN_ROWS", 1)
    text = as_csv(iris_matrix(12)).decode().splitlines()
    text[6] = '"5.5",1,2,3'  # row 5, in the second chunk of 4
    chunks = read_all(("\n".join(text) + "\n").encode(), JobFormat.CSV, chunk_rows=4)
    assert taken == [True, False, True]
    assert [(c.first_row, c.n_rows) for c in chunks] == [(0, 4), (4, 4), (8, 4)]
    assert scored(chunks)[5] == [5.5, 1.0, 2.0, 3.0]


# --- JSON Lines ---------------------------------------------------------------------------------


@pytest.mark.parametrize("objects", [True, False])
def test_jsonl_round_trip_of_objects_and_of_lists(objects: bool) -> None:
    matrix = iris_matrix(7)
    chunks = read_all(as_jsonl(matrix, objects=objects), JobFormat.JSONL, chunk_rows=3)
    assert [(c.first_row, c.n_rows) for c in chunks] == [(0, 3), (3, 3), (6, 1)]
    assert scored(chunks) == dict(enumerate(matrix.astype(np.float32).tolist()))


def test_jsonl_object_keys_in_any_order_bom_crlf_and_blank_lines() -> None:
    data = (
        b'\xef\xbb\xbf{"petal_width": 0.2, "petal_length": 1.4, "sepal_width": 3.5, "sepal_length": 5.1}\r\n'
        b"\r\n"
        b"[6.2, 3.0, 5.4, 2.3]\r\n"
        b"   \n"
    )
    chunks = read_all(data, JobFormat.JSONL)
    assert scored(chunks) == {0: pytest.approx([5.1, 3.5, 1.4, 0.2]), 1: pytest.approx([6.2, 3.0, 5.4, 2.3])}


def test_jsonl_bad_lines_are_row_errors_not_a_job_failure() -> None:
    data = (
        b"[5.1, 3.5, 1.4, 0.2]\n"
        b'{"sepal_length": 5.1, "sepal_width": \n'
        b'{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4}\n'
        b'{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 1, "colour": 2}\n'
        b"[5.1, true, 1.4, 0.2]\n"
        b'[5.1, 3.5, "1.4", 0.2]\n'
        b"[5.1, 3.5, 1.4, null]\n"
        b"[5.1, 3.5, NaN, 0.2]\n"
        b"[5.1, 3.5]\n"
        b'"just a string"\n'
        b"[6.0, 3.0, 4.0, 1.0]\n"
    )
    chunks = read_all(data, JobFormat.JSONL, chunk_rows=4)
    assert sorted(scored(chunks)) == [0, 10]
    why = errors(chunks)
    assert why[1].startswith("not valid JSON")
    assert why[2] == "petal_width: missing value"
    assert why[3].startswith("colour: unknown feature")
    assert why[4] == "sepal_width: must be a number, got a boolean"
    assert why[5] == "petal_length: must be a number, got a string"
    assert why[6] == "petal_width: missing value"
    assert why[7].startswith("petal_length: must be a finite number")
    assert "expected 4 values" in why[8]
    assert "got a string" in why[9]


def test_jsonl_line_holding_two_rows_is_one_row_error_among_good_rows() -> None:
    data = (
        b"[5.1, 3.5, 1.4, 0.2]\n  [6.2, 3.0, 5.4, 2.3]  \n[1, 2, 3, 4] [5, 6, 7, 8]\n[4.9, 3.0, 1.4, 0.2]\n"
    )
    chunks = read_all(data, JobFormat.JSONL, chunk_rows=10)
    assert sorted(scored(chunks)) == [0, 1, 3]
    assert errors(chunks)[2].startswith("not valid JSON: Extra data")


# --- Parquet ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seekable", [True, False])
def test_parquet_round_trip_across_row_groups(seekable: bool) -> None:
    matrix = iris_matrix(25)
    data = as_parquet(matrix, row_group_size=7)
    stream: Any = io.BytesIO(data) if seekable else pipe(data)
    chunks = list(iter_chunks(stream, JobFormat.PARQUET, FEATURES, chunk_rows=10))
    assert [(c.first_row, c.n_rows) for c in chunks] == [(0, 10), (10, 10), (20, 5)]
    assert scored(chunks) == dict(enumerate(matrix.astype(np.float32).tolist()))


def test_parquet_columns_by_name_with_nulls_strings_and_integers() -> None:
    table = pa.table(
        {
            "id": ["a", "b", "c", "d"],
            "petal_width": pa.array([0.2, None, 0.2, float("inf")], pa.float32()),
            "petal_length": [1, 2, 3, 4],
            "sepal_width": ["3.5", "3.0", "x", "1"],
            "sepal_length": pa.array([5.1, 6.2, 4.9, 5.0], pa.float64()),
        }
    )
    chunks = read_all(parquet_bytes(table), JobFormat.PARQUET)
    assert scored(chunks) == {0: pytest.approx([5.1, 3.5, 1.0, 0.2])}
    why = errors(chunks)
    assert why[1] == "petal_width: missing value"
    assert why[2] == "sepal_width: must be a number, got 'x'"
    assert why[3].startswith("petal_width: must be a finite number")


def test_parquet_lacking_a_feature_column_fails_the_whole_input() -> None:
    table = pa.table({name: [1.0] for name in FEATURES[:3]})
    with pytest.raises(JobInputError, match="petal_width"):
        read_all(parquet_bytes(table), JobFormat.PARQUET)


@pytest.mark.parametrize(
    "data",
    [
        as_parquet(iris_matrix(100))[:-30],  # truncated: the footer is gone
        as_parquet(iris_matrix(100))[:200],
        b"PAR1 but nothing after",
        b"sepal_length,sepal_width,petal_length,petal_width\n1,2,3,4\n",
        b"",
    ],
)
def test_truncated_or_non_parquet_file_fails_the_whole_input(data: bytes) -> None:
    with pytest.raises(JobInputError) as caught:
        read_all(data, JobFormat.PARQUET)
    assert caught.value.field == "file"
    assert "Parquet" in caught.value.detail


def test_importing_the_formats_does_not_import_pyarrow() -> None:
    code = "import sys, app.jobs.formats; print('pyarrow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- resuming -------------------------------------------------------------------------------------


def _messy_csv() -> bytes:
    lines = ["id,sepal_length,sepal_width,petal_length,petal_width"]
    for i in range(40):
        if i % 7 == 3:
            lines.append("")
        note = f'"note\n{i}, ""é"""' if i % 5 == 0 else f"n{i}"
        value = "bad" if i % 11 == 4 else f"{i}.5"
        lines.append(f"{note},{value},1,2,3")
    return ("\r\n".join(lines) + "\r\n").encode()


def _messy_jsonl() -> bytes:
    out = []
    for i in range(40):
        if i % 7 == 3:
            out.append("")
        if i % 11 == 4:
            out.append("{broken")
        elif i % 2:
            out.append(json.dumps([i + 0.5, 1, 2, 3]))
        else:
            out.append(
                json.dumps(
                    dict(zip(FEATURES, [i + 0.5, 1, 2, 3], strict=True)) | {"é": None}
                    if i % 13 == 0
                    else dict(zip(FEATURES, [i + 0.5, 1, 2, 3], strict=True))
                )
            )
    return ("\n".join(out) + "\n").encode()


INPUTS = {
    JobFormat.CSV: _messy_csv(),
    JobFormat.JSONL: _messy_jsonl(),
    JobFormat.PARQUET: as_parquet(
        np.where(np.arange(40)[:, None] % 9 == 2, np.nan, iris_matrix(40)), row_group_size=9
    ),
}


def _signature(chunks: list[RowChunk]) -> list[tuple[int, int, list[int], dict[int, str], list[list[float]]]]:
    return [(c.first_row, c.n_rows, c.good, c.errors, c.rows.tolist()) for c in chunks]


@pytest.mark.parametrize("fmt", list(JobFormat))
@pytest.mark.parametrize("seekable", [True, False])
def test_resume_after_each_chunk_gives_exactly_the_remaining_chunks(fmt: JobFormat, seekable: bool) -> None:
    data = INPUTS[fmt]
    whole = read_all(data, fmt, chunk_rows=6)
    assert sum(c.n_rows for c in whole) == 40
    assert errors(whole)  # the inputs hold bad rows too
    for k, done in enumerate(whole):
        stream: Any = io.BytesIO(data) if seekable else pipe(data)
        rest = list(iter_chunks(stream, fmt, FEATURES, chunk_rows=6, resume_from=done.resume))
        assert _signature(rest) == _signature(whole[k + 1 :])


@pytest.mark.parametrize("fmt", list(JobFormat))
def test_any_sequence_of_interruptions_yields_every_row_exactly_once(fmt: JobFormat) -> None:
    data = INPUTS[fmt]
    rng = random.Random(23)
    for _ in range(20):
        chunk_rows = rng.randint(1, 9)
        seen: list[int] = []
        resume: bytes | None = None
        while True:
            # A worker takes a few chunks, commits each, and dies; the next resumes.
            budget = rng.randint(1, 3)
            chunks = iter_chunks(io.BytesIO(data), fmt, FEATURES, chunk_rows=chunk_rows, resume_from=resume)
            for taken, chunk in enumerate(chunks, start=1):
                seen += chunk.good + list(chunk.errors)
                assert sorted(chunk.good + list(chunk.errors)) == list(
                    range(chunk.first_row, chunk.first_row + chunk.n_rows)
                )
                resume = chunk.resume
                if taken == budget:
                    break
            else:
                break
        assert sorted(seen) == list(range(40))
        assert len(seen) == 40


# --- memory ---------------------------------------------------------------------------------------


def _generated_csv(rows: int, pad: int) -> Iterator[bytes]:
    """A CSV made on the fly, never whole: a header, then rows each carrying `pad` bytes of note."""
    yield (",".join(["note", *FEATURES]) + "\n").encode()
    note = b'"' + b"x" * (pad // 2) + b", " + b"y" * (pad // 2) + b'"'
    block = []
    for i in range(rows):
        block.append(note + b",%d.5,3.5,1.4,0.2\n" % (i % 8))
        if len(block) == 1000:
            yield b"".join(block)
            block = []
    yield b"".join(block)


def test_a_csv_of_hundreds_of_megabytes_streams_in_bounded_memory() -> None:
    rows, pad = 100_000, 2000  # ~200 MB of input
    size = rows * (pad + 20)
    tracemalloc.start()
    try:
        count = 0
        for chunk in iter_chunks(pipe(_generated_csv(rows, pad)), JobFormat.CSV, FEATURES, chunk_rows=1000):
            count += len(chunk.good)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == rows
    assert size > 200_000_000
    assert peak < size / 8  # measured 12 MB: a chunk of 1000 rows of 2 KB and buffers, not the input


# --- results --------------------------------------------------------------------------------------

CLASSES = ["setosa", "versicolor", "virginica"]
CLASS_ROWS = [
    {"row": 0, "label": "setosa", "probabilities": {"setosa": 0.9, "versicolor": 0.07, "virginica": 0.03}},
    {"row": 1, "error": 'petal_width: must be a number, got "x, y"'},
    {"row": 2, "label": "virginica", "probabilities": {"setosa": 0.0, "versicolor": 0.25, "virginica": 0.75}},
]
VALUE_ROWS = [
    {"row": 0, "value": 151.5},
    {"row": 1, "error": "bmi: missing value"},
    {"row": 2, "value": -3.25},
]


@pytest.mark.parametrize(
    "rows",
    [
        CLASS_ROWS,
        VALUE_ROWS,
        [],
        [{"row": i, "label": "b", "probabilities": {"a": 0.25, "b": 0.75}} for i in range(1000)],
        [  # shapes the packed form does not take: kept exactly (an int stays an int)
            {"row": 0, "value": 3},
            {"row": 1, "value": 2.5},
            {"row": 2, "label": "a", "probabilities": {"a": 1, "b": 0}},
            {"row": 3, "label": "a", "probabilities": {"a": 0.5, "b": 0.5}, "note": "extra"},
        ],
        [  # classes in another order, and a value beside class rows
            {"row": 7, "label": "a", "probabilities": {"a": 0.5, "b": 0.5}},
            {"row": 8, "label": "b", "probabilities": {"b": 0.5, "a": 0.5}},
            {"row": 9, "value": -1.0},
            {"row": 10, "error": "x: missing value"},
        ],
    ],
)
def test_results_survive_their_stored_form(rows: list[dict[str, Any]]) -> None:
    back = decode_results(encode_results(rows))
    assert json.dumps(back) == json.dumps(rows)  # the same values, types and key order


def _write(fmt: JobFormat, classes: list[str] | None, rows: list[dict[str, Any]]) -> bytes:
    writer = ResultWriter(fmt, classes)
    # One write per stored chunk, as the results are streamed.
    return (
        writer.start() + writer.write(rows[:1]) + writer.write([]) + writer.write(rows[1:]) + writer.finish()
    )


def test_csv_results_read_back_with_the_csv_module() -> None:
    out = list(csv.DictReader(io.StringIO(_write(JobFormat.CSV, CLASSES, CLASS_ROWS).decode())))
    assert list(out[0]) == [
        "row",
        "label",
        "probability_setosa",
        "probability_versicolor",
        "probability_virginica",
        "error",
    ]
    assert [r["row"] for r in out] == ["0", "1", "2"]
    assert out[0]["label"] == "setosa"
    assert float(out[0]["probability_setosa"]) == 0.9
    assert out[1]["error"] == CLASS_ROWS[1]["error"]
    assert out[1]["label"] == ""
    assert float(out[2]["probability_virginica"]) == 0.75
    values = list(csv.DictReader(io.StringIO(_write(JobFormat.CSV, None, VALUE_ROWS).decode())))
    assert [(r["row"], r["value"], r["error"]) for r in values] == [
        ("0", "151.5", ""),
        ("1", "", "bmi: missing value"),
        ("2", "-3.25", ""),
    ]


def test_jsonl_results_read_back_line_by_line() -> None:
    for classes, rows in ((CLASSES, CLASS_ROWS), (None, VALUE_ROWS)):
        text = _write(JobFormat.JSONL, classes, rows).decode()
        assert text.endswith("\n")
        assert [json.loads(line) for line in text.splitlines()] == rows


def test_parquet_results_read_back_with_pyarrow() -> None:
    table = pq.read_table(io.BytesIO(_write(JobFormat.PARQUET, CLASSES, CLASS_ROWS)))
    assert table.column_names == [
        "row",
        "label",
        "probability_setosa",
        "probability_versicolor",
        "probability_virginica",
        "error",
    ]
    assert table.column("row").to_pylist() == [0, 1, 2]
    assert table.column("label").to_pylist() == ["setosa", None, "virginica"]
    assert table.column("probability_virginica").to_pylist() == [0.03, None, 0.75]
    assert table.column("error").to_pylist() == [None, CLASS_ROWS[1]["error"], None]
    values = pq.read_table(io.BytesIO(_write(JobFormat.PARQUET, None, VALUE_ROWS)))
    assert values.to_pylist() == [
        {"row": 0, "value": 151.5, "error": None},
        {"row": 1, "value": None, "error": "bmi: missing value"},
        {"row": 2, "value": -3.25, "error": None},
    ]


def test_parquet_results_of_no_rows_are_a_valid_empty_file() -> None:
    writer = ResultWriter(JobFormat.PARQUET, None)
    table = pq.read_table(io.BytesIO(writer.start() + writer.finish()))
    assert table.num_rows == 0
    assert table.column_names == ["row", "value", "error"]


# --- the worker's stream of stored segments ---------------------------------------------------------


def test_a_csv_read_again_chunk_by_chunk_fetches_each_stored_segment_about_once() -> None:
    """The worker reads an upload back from its stored segments (app.jobs.runner.SegmentStream):
    chunks that csv.reader reads again (here every one: a quoted column) seek back into the segment
    before the one the read-ahead reached; each segment is still fetched from the database about
    once, and the rows are those of the whole file."""
    lines = [",".join(["note", *FEATURES])] + [f'"n{i}",5.1,3.5,1.4,0.2' for i in range(60_000)]
    data = ("\n".join(lines) + "\n").encode()
    segments = [data[i : i + (1 << 20)] for i in range(0, len(data), 1 << 20)]
    fetched: list[int] = []

    def fetch(seq: int) -> bytes:
        fetched.append(seq)
        return segments[seq]

    stream = io.BufferedReader(SegmentStream(fetch, [len(s) for s in segments]), buffer_size=1 << 20)
    chunks = list(iter_chunks(stream, JobFormat.CSV, FEATURES, chunk_rows=4096))
    assert sum(len(c.good) for c in chunks) == 60_000
    assert len(segments) >= 2
    assert len(fetched) <= len(segments) + 2, fetched
