"""Row formats of batch jobs: streaming readers of CSV, JSON Lines and Parquet input, and writers of results.

Pure code: no database, no HTTP. The web calls `format_for` and `check_head` on an upload so a bad
file fails at submit; the worker calls `iter_chunks` over the stored input and turns each chunk's
predictions into `ResultRow`s, stored with `encode_results` and streamed back by a `ResultWriter`.

Memory is bounded by `chunk_rows` (and, for CSV and JSON Lines, by MAX_LINE_CHARS per line) whatever
the input's size. A row that cannot be scored is reported in `RowChunk.errors`, naming the feature;
it never fails the job. A problem with the whole input (no header, a feature missing from it, not a
Parquet file) raises `JobInputError`.

Row numbering: input row `i` is the i-th data record (0-based), after the CSV header; blank lines
are not rows. CSV columns that are not features are ignored (an id column may stay in the file);
in JSON Lines an object's key that is not a feature is a row error, as on the request path.

CSV from a seekable stream (the worker's) is parsed by pyarrow's CSV reader a chunk at a time where
its bytes are plain, else by csv.reader (`_csv_chunks_seeking`).

pyarrow is imported only inside the functions that read with it: a web worker that never runs a
job does not map it. A job worker imports it at start (`load_readers`).
"""

# pyarrow is imported inside the functions that read with it only (see above).
# ruff: noqa: PLC0415

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import json.scanner
import math
import operator
import re
import shutil
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, BinaryIO, cast

import numpy as np

from app.ml.inputs import json_type

# Every model takes float32: a finite float64 beyond this range would silently become infinity.
FLOAT32_MAX = float(np.finfo(np.float32).max)
# A CSV or JSON line longer than this is a row error, not a reason to hold the line in memory.
MAX_LINE_CHARS = 1 << 20
# How much of a bad value a row error quotes.
_QUOTE_CHARS = 40
_BOM = "\ufeff"
_BOM_BYTES = _BOM.encode()
_PARQUET_MAGIC = b"PAR1"
# Marks a line that was too long in the CSV line stream (NUL cannot start a real line we accept).
_OVERLONG = "\x00overlong"


class JobFormat(StrEnum):
    CSV = "csv"
    JSONL = "jsonl"
    PARQUET = "parquet"


MEDIA_TYPES: dict[JobFormat, str] = {
    JobFormat.CSV: "text/csv",
    JobFormat.JSONL: "application/x-ndjson",
    JobFormat.PARQUET: "application/vnd.apache.parquet",
}
# Media types accepted on upload, beyond the ones we answer with.
_ACCEPTED_TYPES: dict[str, JobFormat] = {
    "text/csv": JobFormat.CSV,
    "application/csv": JobFormat.CSV,
    "application/x-ndjson": JobFormat.JSONL,
    "application/jsonl": JobFormat.JSONL,
    "application/x-jsonlines": JobFormat.JSONL,
    "application/vnd.apache.parquet": JobFormat.PARQUET,
    "application/x-parquet": JobFormat.PARQUET,
}
# Types that say nothing about the format: the file name decides.
_GENERIC_TYPES = {"", "application/octet-stream", "text/plain", "binary/octet-stream"}
_SUFFIXES: dict[str, JobFormat] = {
    ".csv": JobFormat.CSV,
    ".jsonl": JobFormat.JSONL,
    ".ndjson": JobFormat.JSONL,
    ".parquet": JobFormat.PARQUET,
    ".pq": JobFormat.PARQUET,
}


class JobInputError(ValueError):
    """A problem with the whole input, not one row: `field` names the part of the request at fault."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail


class UnsupportedJobFormat(JobInputError):
    """The upload's media type or file name names no format we read (a 415, not a 422)."""


def format_for(content_type: str | None, filename: str | None) -> JobFormat:
    """The upload's format: by its media type, or by its file name when the type says nothing."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media in _ACCEPTED_TYPES:
        return _ACCEPTED_TYPES[media]
    if media not in _GENERIC_TYPES:
        raise UnsupportedJobFormat("file", f"media type {media!r} is not one of: {_accepted()}")
    name = (filename or "").strip().lower()
    for suffix, fmt in _SUFFIXES.items():
        if name.endswith(suffix):
            return fmt
    raise UnsupportedJobFormat(
        "file",
        "cannot tell the file's format: send a media type (one of: "
        f"{_accepted()}) or a file name ending in {', '.join(_SUFFIXES)}",
    )


def _accepted() -> str:
    return ", ".join(_ACCEPTED_TYPES)


def check_head(fmt: JobFormat, head: bytes, features: Sequence[str]) -> None:
    """Refuse at submit an upload whose first bytes show it cannot be read.

    `head` is the upload's first bytes (the whole file if it is short; 64 KiB is plenty): the CSV
    header must name every feature, the first JSON line must be an object or an array, a Parquet
    file must start with its magic bytes. A first line with no line end in `head` is not judged
    (it may be cut): `iter_chunks` judges it when the job runs.
    """
    if not head.strip():
        raise JobInputError("file", "the file is empty")
    if fmt is JobFormat.CSV:
        text = _decode_head(head).lstrip("\r\n")
        if not any(end in text for end in ("\n", "\r")):
            return  # the header may be cut where the head ends: iter_chunks judges it whole
        _columns(next(csv.reader(io.StringIO(text, newline="")), []), features)
    elif fmt is JobFormat.JSONL:
        head = head.lstrip()
        if not any(end in head for end in (b"\n", b"\r")):
            return  # the first line may be cut where the head ends: it is judged as a row later
        first = head.splitlines()[0]
        try:
            value = json.loads(first.removeprefix(b"\xef\xbb\xbf"))
        except (ValueError, RecursionError) as exc:
            raise JobInputError("file", f"line 1 is not valid JSON: {exc}") from None
        if not isinstance(value, dict | list):
            raise JobInputError(
                "file",
                "line 1 is not a JSON object keyed by feature name or an array in feature order",
            )
    elif not head.startswith(_PARQUET_MAGIC):
        raise JobInputError("file", "not a Parquet file (it does not start with PAR1)")


def _decode_head(head: bytes) -> str:
    try:
        return head.decode("utf-8").removeprefix(_BOM)
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not only a character cut at the head's end
            raise JobInputError("file", f"not UTF-8 text (byte {exc.start})") from None
        return head[: exc.start].decode("utf-8").removeprefix(_BOM)


def _columns(header: Sequence[str], features: Sequence[str]) -> list[int]:
    """Each feature's column index in a CSV header (order is by name); JobInputError if one lacks."""
    names = [name.strip() for name in header]
    if names:
        names[0] = names[0].removeprefix(_BOM)
    if not any(names):
        raise JobInputError("file", "the file has no CSV header: its first line must name the columns")
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen and name in features:
            raise JobInputError("file", f"the CSV header names {name!r} twice")
        seen.setdefault(name, i)
    missing = [name for name in features if name not in seen]
    if missing:
        raise JobInputError(
            "file",
            f"the CSV header lacks the model's feature(s) {', '.join(missing)}; "
            f"the model takes: {', '.join(features)}",
        )
    return [seen[name] for name in features]


@dataclass(frozen=True)
class RowChunk:
    first_row: int  # index of the chunk's first input row (0-based, over the whole input)
    n_rows: int  # rows in this chunk, good and bad
    rows: np.ndarray  # float32 (n_good, n_features), feature order of `features`
    good: list[int]  # input row index of each line of `rows`
    errors: dict[int, str]  # input row index -> why that row cannot be scored
    resume: bytes  # opaque resume point AFTER this chunk (pass back as `resume_from`)


def iter_chunks(
    stream: BinaryIO,
    fmt: JobFormat,
    features: Sequence[str],
    *,
    chunk_rows: int,
    resume_from: bytes | None = None,
) -> Iterator[RowChunk]:
    """The input's rows, `chunk_rows` at a time, checked and converted to float32.

    `stream` is the whole input from its first byte. To resume, pass the `resume` of the last chunk
    done: the chunks then continue exactly after it (the stream is seeked when it can be, else read
    and skipped). PARQUET wants a seekable stream (a non-seekable one is copied to a temporary file).
    """
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be at least 1")
    if not features:
        raise ValueError("features must name at least one feature")
    offset, row = _unpack_resume(resume_from, fmt)
    if fmt is JobFormat.CSV:
        return _csv_chunks(stream, list(features), chunk_rows, offset, row)
    if fmt is JobFormat.JSONL:
        return _jsonl_chunks(stream, list(features), chunk_rows, offset, row)
    return _parquet_chunks(stream, list(features), chunk_rows, row)


def load_readers() -> None:
    """Import pyarrow's CSV and Parquet readers now (37 MB, 0.1 s): a job worker does at start, so
    that they are part of its idle memory, as its models are, not of its first job's."""
    import pyarrow.csv  # type: ignore[import-untyped]
    import pyarrow.parquet  # type: ignore[import-untyped]  # noqa: F401


def _pack_resume(fmt: JobFormat, offset: int, row: int) -> bytes:
    return json.dumps({"format": fmt.value, "offset": offset, "row": row}).encode()


def _unpack_resume(resume: bytes | None, fmt: JobFormat) -> tuple[int, int]:
    if resume is None:
        return 0, 0
    try:
        point = json.loads(resume)
        if point["format"] != fmt.value:
            raise ValueError(f"a {point['format']} resume point given for {fmt.value} input")
        offset, row = int(point["offset"]), int(point["row"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"not a resume point of iter_chunks: {exc}") from None
    return offset, row


# ---------------------------------------------------------------------------------------------
# Row checks shared by the formats


def _number_problem(name: str, text: str) -> str:
    """Why a CSV (or Parquet string) value that float() refused, or that is empty, is no number."""
    if not text.strip():
        return f"{name}: missing value"
    return f"{name}: must be a number, got {text[:_QUOTE_CHARS]!r}"


def _range_problem(name: str, value: float) -> str | None:
    if not math.isfinite(value):
        return f"{name}: must be a finite number (NaN and infinity are refused)"
    if abs(value) > FLOAT32_MAX:
        return f"{name}: is out of range for a 32-bit float"
    return None


def _bad_values(matrix: np.ndarray, features: Sequence[str], index: Sequence[int]) -> dict[int, str]:
    """Errors for the rows of a float64 matrix holding NaN, infinity or values beyond float32."""
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(matrix) | (np.abs(matrix) > FLOAT32_MAX)
    errors: dict[int, str] = {}
    for r in np.flatnonzero(bad.any(axis=1)).tolist():
        j = int(np.argmax(bad[r]))
        errors[index[r]] = _range_problem(features[j], float(matrix[r, j])) or ""
    return errors


def _assemble(
    values: Sequence[float] | Sequence[Sequence[float]] | np.ndarray,
    good: list[int],
    errors: dict[int, str],
    *,
    span: tuple[int, int],
    features: Sequence[str],
    resume: bytes,
) -> RowChunk:
    """A chunk from the float64 values of the rows that parsed: range checks, then float32."""
    matrix = np.asarray(values, dtype=np.float64).reshape(len(good), len(features))
    bad = _bad_values(matrix, features, good)
    if bad:
        keep = [i for i, row in enumerate(good) if row not in bad]
        matrix = matrix[keep]
        good = [good[i] for i in keep]
        errors.update(bad)
    return RowChunk(
        first_row=span[0],
        n_rows=span[1],
        rows=matrix.astype(np.float32),
        good=good,
        errors=dict(sorted(errors.items())),
        resume=resume,
    )


# ---------------------------------------------------------------------------------------------
# CSV


class _CsvLines:
    """Text lines of a binary stream (UTF-8, any newline) for csv.reader, and their byte offsets.

    The text is read in blocks and split into lines by C code (csv.reader pulls them through
    itertools.chain); csv.reader never reads ahead of the record it returns, so after a record
    `offset(reader.line_num)` is the byte offset just past it: the resume point. Bytes that are
    not UTF-8 pass through as lone surrogates (surrogateescape), so the count stays exact and the
    value they are in fails as "not a number". A line longer than MAX_LINE_CHARS is skipped to
    its end and handed on as one marker line (a row error), so memory stays bounded.
    """

    def __init__(self, stream: BinaryIO, start: int) -> None:
        self.text = io.TextIOWrapper(stream, encoding="utf-8", errors="surrogateescape", newline="")
        self._at_start = start == 0
        self._block: list[str] = []  # the lines being handed out
        self._block_bytes = 0
        self._base_lines = 0  # lines handed out before the block
        self._base_bytes = start  # ... and their bytes
        self._done_lines = 0  # lines of the block already measured
        self._done_bytes = 0  # ... and their bytes

    def lines(self) -> Iterator[str]:
        return itertools.chain.from_iterable(self._blocks())

    def offset(self, line_num: int) -> int:
        """The byte offset just past the first `line_num` lines handed out."""
        k = line_num - self._base_lines
        if k == len(self._block):
            return self._base_bytes + self._block_bytes
        if k < self._done_lines:
            self._done_lines = self._done_bytes = 0
        self._done_bytes += _utf8_size("".join(self._block[self._done_lines : k]))
        self._done_lines = k
        return self._base_bytes + self._done_bytes

    def release(self) -> None:
        """Leave the stream open: closing it is its owner's business."""
        if not self.text.closed:
            with contextlib.suppress(ValueError):
                self.text.detach()

    def _enter(self, block: list[str], size: int) -> list[str]:
        self._base_lines += len(self._block)
        self._base_bytes += self._block_bytes
        self._block, self._block_bytes = block, size
        self._done_lines = self._done_bytes = 0
        return block

    def _blocks(self) -> Iterator[list[str]]:
        read = self.text.read
        carry = ""
        while True:
            data = read(_BLOCK_CHARS)
            if self._at_start:
                self._at_start = False
                if data.startswith(_BOM):  # no part of the first column's name; 3 bytes all the same
                    self._base_bytes += 3
                    data = data[1:]
            if not data:
                if carry:
                    yield self._enter(_split_lines(carry), _utf8_size(carry))
                return
            data = carry + data
            # Up to the last line end; a final "\r" waits for the next read, which may start with
            # its "\n" ("\r\n" is one line end).
            end = len(data) - 1 if data.endswith("\r") else len(data)
            cut = max(data.rfind("\n", 0, end), data.rfind("\r", 0, end)) + 1
            if cut <= 0:
                carry = data
                if len(carry) > MAX_LINE_CHARS:
                    size = self._skip_line(carry)
                    carry = ""
                    yield self._enter([_OVERLONG + "\n"], size)
                continue
            complete, carry = data[:cut], data[cut:]
            lines = _split_lines(complete)
            if len(complete) > MAX_LINE_CHARS and any(len(line) > MAX_LINE_CHARS for line in lines):
                yield from self._marking_overlong(lines)
            else:
                yield self._enter(lines, _utf8_size(complete))

    def _marking_overlong(self, lines: list[str]) -> Iterator[list[str]]:
        """A line longer than MAX_LINE_CHARS whose end came in the same read becomes the marker
        too, so that a line's fate is its own, not that of where the reading started (a resume or
        a chunk read again). The marker in a block of its own, sized by the line's real bytes: the
        offsets stay exact."""
        run: list[str] = []
        for line in lines:
            if len(line.rstrip("\r\n")) > MAX_LINE_CHARS:
                if run:
                    yield self._enter(run, _utf8_size("".join(run)))
                    run = []
                yield self._enter([_OVERLONG + "\n"], _utf8_size(line))
            else:
                run.append(line)
        if run:
            yield self._enter(run, _utf8_size("".join(run)))

    def _skip_line(self, start: str) -> int:
        """Read past the end of an overlong line; its size in bytes, line end included."""
        size = _utf8_size(start)
        while True:
            data = self.text.readline(_BLOCK_CHARS)
            size += _utf8_size(data)
            if not data or data.endswith(("\n", "\r")):
                return size


# Characters str.splitlines breaks at that are no line end to csv (it knows only \r and \n).
_OTHER_BREAKS = "\x0b\x0c\x1c\x1d\x1e"
_OTHER_BREAKS_UNICODE = "\x85\u2028\u2029"
_CSV_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")
_BLOCK_CHARS = 1 << 18


def _split_lines(text: str) -> list[str]:
    others = _OTHER_BREAKS if text.isascii() else _OTHER_BREAKS + _OTHER_BREAKS_UNICODE
    if not any(c in text for c in others):  # a few memchr scans: far faster than a regex
        return text.splitlines(keepends=True)
    return _CSV_LINE.findall(text)


def _utf8_size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogateescape"))


def _csv_chunks(
    stream: BinaryIO, features: list[str], chunk_rows: int, offset: int, row: int
) -> Iterator[RowChunk]:
    if stream.seekable() and chunk_rows >= _PLAIN_MIN_ROWS:
        return _csv_chunks_seeking(stream, features, chunk_rows, offset, row)
    return _csv_chunks_reading(stream, features, chunk_rows, offset, row)


# Chunks of fewer rows are read by csv.reader: a call of pyarrow's reader costs ~0.3 ms whatever
# it reads (2,000 chunks of one row: 0.73 s against 0.09).
_PLAIN_MIN_ROWS = 32


def _csv_chunks_reading(
    stream: BinaryIO, features: list[str], chunk_rows: int, offset: int, row: int
) -> Iterator[RowChunk]:
    """A stream that cannot seek: csv.reader all the way (a resume reads and skips the rows done)."""
    source = _CsvLines(stream, 0)
    try:
        reader = csv.reader(source.lines())
        shape = _CsvShape.of(reader, features)
        if offset:
            if offset < source.offset(reader.line_num):
                raise ValueError("a resume point inside the CSV header")
            while source.offset(reader.line_num) < offset:  # read and skip the chunks done
                if next(reader, None) is None:
                    break
            if source.offset(reader.line_num) != offset:
                raise ValueError("the resume point is not at a record's end in this input")
        while chunk := _csv_records_chunk(reader, source, row, shape, chunk_rows):
            yield chunk[0]
            row += chunk[0].n_rows
    finally:
        source.release()


def _csv_chunks_seeking(
    stream: BinaryIO, features: list[str], chunk_rows: int, offset: int, row: int
) -> Iterator[RowChunk]:
    """A seekable stream: each chunk parsed by pyarrow's CSV reader (C++) when its bytes are plain,
    else by csv.reader, which the chunk's result equals either way (tests/jobs/test_formats.py).

    Plain: no quote, NUL, blank line or lone carriage return, every line under csv's field size
    limit, and then pyarrow finds exactly one record of the header's width per line, every feature
    a number. Anything else (a quoted field, a row with a value missing or not a number, ...) is
    read again from the chunk's first byte by csv.reader, which names each bad row; the next chunk
    is tried plain again. pyarrow reads the forest's 30-feature rows about 6x faster
    (docs/jobs.md)."""
    source = _CsvLines(stream, 0)
    try:
        reader = csv.reader(source.lines())
        shape = _CsvShape.of(reader, features)
        header_end = source.offset(reader.line_num)
    finally:
        source.release()
    if offset and offset < header_end:
        raise ValueError("a resume point inside the CSV header")
    at = offset or header_end
    plain = _PlainCsv(shape)
    stream.seek(at)
    lines = _ByteLines(stream)
    while True:
        region = lines.take(chunk_rows)
        chunk = plain.chunk(region, row, at) if region is not None else None
        if chunk is None:  # not plain (or the input's end): csv.reader reads this chunk
            stream.seek(at)
            source = _CsvLines(stream, at)
            try:
                done = _csv_records_chunk(csv.reader(source.lines()), source, row, shape, chunk_rows)
            finally:
                source.release()
            if done is None:
                return
            chunk, end = done
            stream.seek(end)
            lines = _ByteLines(stream)
        else:
            end = at + len(cast("bytes", region))
        yield chunk
        at, row = end, row + chunk.n_rows


@dataclass(frozen=True)
class _CsvShape:
    features: Sequence[str]
    columns: list[int]  # each feature's column in the header
    width: int  # the header's
    pick: Callable[[list[str]], Sequence[str]] | None

    @classmethod
    def of(cls, reader: Iterator[list[str]], features: Sequence[str]) -> _CsvShape:
        """From the header: the first non-blank record."""
        try:
            header = next((record for record in reader if record), [])  # after any blank lines
        except csv.Error as exc:
            raise JobInputError("file", f"the CSV header cannot be read: {exc}") from None
        if not header:
            raise JobInputError("file", "the file is empty: a CSV file starts with a header")
        columns = _columns(header, features)
        return cls(features, columns, len(header), _picker(columns, len(header)))


def _csv_records_chunk(
    reader: Any, source: _CsvLines, row: int, shape: _CsvShape, chunk_rows: int
) -> tuple[RowChunk, int] | None:
    """The next chunk read by csv.reader, and the byte offset just past it; None at the end."""
    records = _read_records(reader, chunk_rows)
    if not records:
        return None
    end = source.offset(reader.line_num)
    chunk = _csv_chunk(
        records,
        shape.features,
        shape.columns,
        width=shape.width,
        pick=shape.pick,
        span=(row, len(records)),
        resume=_pack_resume(JobFormat.CSV, end, row + len(records)),
    )
    return chunk, end


_PLAIN_BLOCK_BYTES = 1 << 20
_LF, _CR = 10, 13


class _ByteLines:
    """Whole lines of a binary stream, `n` at a time, as one bytes object (no decoding)."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._held = b""  # read, and handed out up to self._at
        self._at = 0
        self._eof = False

    def take(self, n: int) -> bytes | None:
        """The next `n` lines (fewer at the end), line ends included; None when the input has
        ended, or when a line runs past _plain_line_bytes() (csv.reader then reads it, and bounds it)."""
        held, at = self._held, self._at
        cut = _line_end_after(held, at, n)
        if cut < 0:  # fewer than n lines held: read on
            rest = held[at:]
            parts = [rest]
            count, size = _count_line_ends(rest), len(rest)
            last_end = rest.rfind(b"\n")  # offset of the last line end within what is held
            while count < n and not self._eof:
                block = self._stream.read(_PLAIN_BLOCK_BYTES)
                if not block:
                    self._eof = True
                    break
                found = _count_line_ends(block)
                if found:
                    last_end = size + block.rfind(b"\n")
                count += found
                parts.append(block)
                size += len(block)
                if size - last_end - 1 > _plain_line_bytes():
                    return None  # an overlong line: held no further
            held, at = (b"".join(parts) if len(parts) > 1 else rest), 0
            cut = _line_end_after(held, 0, n) if count >= n else len(held)
        self._held, self._at = held, cut
        return held[at:cut] if cut > at else None


def _line_end_after(data: bytes, start: int, n: int) -> int:
    """The offset just past the n-th line end of data at or after `start`; -1 if it holds fewer."""
    if n <= 64:  # a few C searches; a chunk of many lines takes one array scan instead
        end = start - 1
        for _ in range(n):
            end = data.find(b"\n", end + 1)
            if end < 0:
                return -1
        return end + 1
    if start >= len(data):
        return -1
    ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8, offset=start) == _LF)
    return start + int(ends[n - 1]) + 1 if len(ends) >= n else -1


def _count_line_ends(data: bytes) -> int:
    # numpy: 4x faster than bytes.count for one byte (0.15 against 0.67 ms a megabyte here).
    return int(np.count_nonzero(np.frombuffer(data, dtype=np.uint8) == _LF))


def _plain_line_bytes() -> int:
    """A plain line is at most this long: within csv's field size limit (a longer field is an error
    csv.reader names) and MAX_LINE_CHARS."""
    return min(csv.field_size_limit(), MAX_LINE_CHARS)


class _PlainCsv:
    """A chunk's bytes parsed by pyarrow, when they are plain (see _csv_chunks_seeking)."""

    def __init__(self, shape: _CsvShape) -> None:
        import pyarrow as pa
        import pyarrow.csv as pacsv

        names = [f"c{i}" for i in range(shape.width)]
        picked = [names[j] for j in shape.columns]
        self._pa = pa
        self._features = shape.features
        self._read_options = pacsv.ReadOptions(column_names=names, use_threads=False)
        self._parse_options = pacsv.ParseOptions(quote_char=False, ignore_empty_lines=False)
        self._convert_options = pacsv.ConvertOptions(
            column_types=dict.fromkeys(picked, pa.float64()),
            include_columns=picked,
            strings_can_be_null=False,
        )
        self._read_csv = pacsv.read_csv

    def chunk(self, data: bytes, row: int, at: int) -> RowChunk | None:
        n = _plain_lines(data)
        if n is None:
            return None
        pa = self._pa
        try:
            table = self._read_csv(
                pa.py_buffer(data),
                read_options=self._read_options,
                parse_options=self._parse_options,
                convert_options=self._convert_options,
            )
        except pa.ArrowInvalid:
            return None  # a row of another width, a value that is no number
        if table.num_rows != n:
            return None
        matrix = np.empty((n, len(self._features)), dtype=np.float64)
        for j, column in enumerate(table.columns):
            matrix[:, j] = column.to_numpy()
        if np.isnan(matrix).any():
            # A missing value (a null, NaN here) or `nan(...)`, which pyarrow reads and float()
            # refuses: csv.reader names either.
            return None
        return _assemble(
            matrix,
            list(range(row, row + n)),
            {},
            span=(row, n),
            features=self._features,
            resume=_pack_resume(JobFormat.CSV, at + len(data), row + n),
        )


def _plain_lines(data: bytes) -> int | None:
    """The number of lines of data if they are plain: no quote, NUL, leading BOM, blank line or
    lone carriage return, none longer than _plain_line_bytes(). Array scans, not bytes.count and
    2-byte searches (3.7 ms a chunk of forest rows, as much as pyarrow's parse)."""
    if b'"' in data or b"\x00" in data or data.startswith(_BOM_BYTES):
        return None  # (pyarrow skips a BOM at its input's start: csv.reader keeps it in the value)
    raw = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(raw == _LF)
    lengths = np.diff(ends, prepend=-1)  # each line's, its line end included
    tail = len(data) - 1 - int(ends[-1]) if len(ends) else len(data)  # a last line with no end
    if max(int(lengths.max(initial=0)), tail) > _plain_line_bytes() or (lengths == 1).any():
        return None  # too long, or a blank line
    if b"\r" in data:
        returns = np.flatnonzero(raw == _CR)
        if returns[-1] == len(raw) - 1 or (raw[returns + 1] != _LF).any():
            return None  # a carriage return that ends a line on its own
        if ((lengths == 2) & (raw[ends - 1] == _CR)).any():
            return None  # a blank line ending in CRLF
    return len(ends) + (tail > 0)


def _picker(columns: list[int], width: int) -> Callable[[list[str]], Sequence[str]] | None:
    """Takes a record's feature values in feature order; None when the record already is that."""
    if columns == list(range(width)):
        return None
    if len(columns) == 1:
        only = columns[0]
        return lambda record: (record[only],)
    return operator.itemgetter(*columns)


def _read_records(reader: Iterator[list[str]], chunk_rows: int) -> list[list[str] | str]:
    """Up to chunk_rows non-blank records; a record csv cannot parse becomes its error message."""
    records: list[list[str] | str] = []
    while len(records) < chunk_rows:
        want = chunk_rows - len(records)
        got: list[list[str]] = []
        try:
            got.extend(itertools.islice(reader, want))  # keeps what it read before an error
        except csv.Error as exc:
            records += [r for r in got if r]
            records.append(f"the row cannot be read as CSV: {exc}")
            continue
        records += [r for r in got if r]  # blank lines are not rows
        if len(got) < want:
            break
    return records


def _csv_chunk(
    records: list[list[str] | str],
    features: Sequence[str],
    columns: list[int],
    *,
    width: int,
    pick: Callable[[list[str]], Sequence[str]] | None,
    span: tuple[int, int],
    resume: bytes,
) -> RowChunk:
    first_row, n = span
    # Fast path: every record well formed, every value a number; C loops all the way.
    try:
        if set(map(len, records)) == {width} and set(map(type, records)) == {list}:
            fields = cast("list[list[str]]", records)
            picked: Iterable[Sequence[str]] = fields if pick is None else map(pick, fields)
            flat = list(map(float, itertools.chain.from_iterable(picked)))
            good = list(range(first_row, first_row + n))
            return _assemble(flat, good, {}, span=span, features=features, resume=resume)
    except ValueError:
        pass
    values: list[list[float]] = []
    good = []
    errors: dict[int, str] = {}
    for i, record in enumerate(records, start=first_row):
        problem = _csv_row(record, features, columns, width, values)
        if problem is None:
            good.append(i)
        else:
            errors[i] = problem
    return _assemble(values, good, errors, span=span, features=features, resume=resume)


def _csv_row(
    record: list[str] | str,
    features: Sequence[str],
    columns: list[int],
    width: int,
    out: list[list[float]],
) -> str | None:
    """Append the record's values to `out`, or say why it cannot be scored."""
    if isinstance(record, str):
        return record
    if record == [_OVERLONG]:
        return f"the row is longer than {MAX_LINE_CHARS} characters"
    if len(record) != width:
        lacking = [features[k] for k, j in enumerate(columns) if j >= len(record)]
        if lacking:
            return f"{lacking[0]}: missing value (the row has {len(record)} values, the header {width})"
        return f"the row has {len(record)} values, the header {width}"
    row: list[float] = []
    for name, j in zip(features, columns, strict=True):
        text = record[j]
        try:
            row.append(float(text))
        except ValueError:
            return _number_problem(name, text)
    out.append(row)
    return None


# ---------------------------------------------------------------------------------------------
# JSON Lines


def _json_row(line: bytes, features: Sequence[str]) -> tuple[str | None, list[float] | None]:
    """One JSON line to its values in feature order, or the reason it cannot be scored."""
    try:
        value = json.loads(line)
    except (ValueError, RecursionError) as exc:
        return f"not valid JSON: {exc}", None
    return _json_values(value, features)


def _json_items(value: object, features: Sequence[str]) -> str | Sequence[object]:
    """A row's values in feature order (not yet checked), or why the row has the wrong shape."""
    if isinstance(value, dict):
        unknown = [key for key in value if key not in features]
        if unknown:
            return f"{str(unknown[0])[:_QUOTE_CHARS]}: unknown feature; expected: {', '.join(features)}"
        lacking = [name for name in features if name not in value]
        if lacking:
            return f"{lacking[0]}: missing value"
        return [value[name] for name in features]
    if isinstance(value, list):
        if len(value) != len(features):
            return f"expected {len(features)} values in this order: {', '.join(features)}; got {len(value)}"
        return value
    return f"not an object keyed by feature name or an array in feature order, got {json_type(value)}"


def _json_values(value: object, features: Sequence[str]) -> tuple[str | None, list[float] | None]:
    items = _json_items(value, features)
    if isinstance(items, str):
        return items, None
    out: list[float] = []
    for name, item in zip(features, items, strict=True):
        kind = type(item)
        if kind is not float and kind is not int:
            what = "missing value" if item is None else f"must be a number, got {json_type(item)}"
            return f"{name}: {what}", None
        try:
            number = float(item)  # type: ignore[arg-type]  # int or float, checked above
        except OverflowError:
            return f"{name}: is out of range for a 32-bit float", None
        problem = _range_problem(name, number)
        if problem:
            return problem, None
        out.append(number)
    return None, out


def _skip_to(stream: BinaryIO, offset: int) -> None:
    if stream.seekable():
        stream.seek(offset)
        return
    position = 0
    while position < offset:
        skipped = stream.read(min(offset - position, 1 << 20))
        if not skipped:
            raise ValueError("the resume point is past the end of this input")
        position += len(skipped)


def _jsonl_chunks(
    stream: BinaryIO, features: list[str], chunk_rows: int, offset: int, row: int
) -> Iterator[RowChunk]:
    if offset:
        _skip_to(stream, offset)
    position = offset
    readline = stream.readline
    while True:
        lines: list[bytes] = []  # the chunk's rows, as read
        too_long: list[int] = []  # ... of which these are only their first bytes
        while len(lines) < chunk_rows:
            line = readline(MAX_LINE_CHARS)
            if not line:
                break
            position += len(line)
            if len(line) == MAX_LINE_CHARS and not line.endswith(b"\n"):
                while line and not line.endswith(b"\n"):
                    line = readline(MAX_LINE_CHARS)
                    position += len(line)
                too_long.append(len(lines))
                lines.append(b"")
                continue
            if position == len(line):
                line = line.removeprefix(b"\xef\xbb\xbf")
            if line.strip():  # blank lines are not rows
                lines.append(line)
        if not lines:
            return
        yield _jsonl_chunk(
            lines,
            too_long,
            features,
            span=(row, len(lines)),
            resume=_pack_resume(JobFormat.JSONL, position, row + len(lines)),
        )
        row += len(lines)


# json's own C scanner, without json.loads's per-call encoding detection and whitespace regex.
_SCAN_JSON = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]  # typeshed: the C type


def _parse_lines(lines: list[bytes]) -> list[Any]:
    """Each line's JSON value; ValueError if any line is not one JSON value (then: line by line)."""
    texts = b"".join(lines).decode("utf-8").split("\n")  # JSON holds no raw "\n": one per line
    if texts[-1] == "":
        texts.pop()
    texts = list(map(str.strip, texts))
    scanned = list(map(_SCAN_JSON, texts, itertools.repeat(0)))  # a StopIteration ends it short
    if len(scanned) != len(lines) or list(map(len, texts)) != list(map(operator.itemgetter(1), scanned)):
        raise ValueError("not one JSON value per line")
    return list(map(operator.itemgetter(0), scanned))


def _jsonl_chunk(
    lines: list[bytes],
    too_long: list[int],
    features: Sequence[str],
    *,
    span: tuple[int, int],
    resume: bytes,
) -> RowChunk:
    first_row, n = span
    # Fast path: every line a well-formed row of numbers, all objects or all arrays; C loops.
    if not too_long:
        try:
            parsed = _parse_lines(lines)
            if all(type(v) is list and len(v) == len(features) for v in parsed):
                flat = list(itertools.chain.from_iterable(parsed))
            elif all(type(v) is dict and len(v) == len(features) for v in parsed):
                names = features
                flat = list(itertools.chain.from_iterable([v[f] for f in names] for v in parsed))
            else:
                flat = None
            if flat is not None and set(map(type, flat)) <= {float, int}:
                good = list(range(first_row, first_row + n))
                return _assemble(flat, good, {}, span=span, features=features, resume=resume)
        except (ValueError, RecursionError, KeyError, OverflowError):
            pass
    values: list[list[float]] = []
    good = []
    errors: dict[int, str] = {}
    for i, line in enumerate(lines):
        if i in too_long:
            errors[first_row + i] = f"the row is longer than {MAX_LINE_CHARS} bytes"
            continue
        problem, numbers = _json_row(line, features)
        if numbers is None:
            errors[first_row + i] = problem or ""
        else:
            values.append(numbers)
            good.append(first_row + i)
    return _assemble(values, good, errors, span=span, features=features, resume=resume)


# ---------------------------------------------------------------------------------------------
# Parquet


def _check_parquet_schema(schema: Any, features: Sequence[str]) -> None:
    import pyarrow as pa

    missing = [name for name in features if schema.get_field_index(name) < 0]
    if missing:
        raise JobInputError(
            "file",
            f"the Parquet file lacks the model's feature column(s) {', '.join(missing)}; "
            f"the model takes: {', '.join(features)}",
        )
    readable = (
        pa.types.is_integer,
        pa.types.is_floating,
        pa.types.is_decimal,
        pa.types.is_string,
        pa.types.is_large_string,
        pa.types.is_null,
    )
    for name in features:
        kind = schema.field(name).type
        if not any(test(kind) for test in readable):
            raise JobInputError("file", f"the Parquet column {name!r} holds {kind}, not numbers")


def _parquet_chunks(stream: BinaryIO, features: list[str], chunk_rows: int, row: int) -> Iterator[RowChunk]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with contextlib.ExitStack() as cleanup:
        if not stream.seekable():
            spool = cleanup.enter_context(tempfile.TemporaryFile())
            shutil.copyfileobj(stream, spool, 1 << 20)
            spool.seek(0)
            stream = spool
        try:
            parquet = pq.ParquetFile(stream)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise JobInputError("file", f"not a readable Parquet file: {exc}") from None
        _check_parquet_schema(parquet.schema_arrow, features)
        # Resume: skip whole row groups before the row, then the rows before it in its group.
        metadata = parquet.metadata
        group, skip = 0, row
        while group < metadata.num_row_groups and skip >= metadata.row_group(group).num_rows:
            skip -= metadata.row_group(group).num_rows
            group += 1
        groups = list(range(group, metadata.num_row_groups))
        pending: list[Any] = []  # record batches not yet in a chunk
        held = 0
        try:
            for read in parquet.iter_batches(batch_size=chunk_rows, row_groups=groups, columns=features):
                batch = read.slice(min(skip, read.num_rows)) if skip else read
                skip -= read.num_rows - batch.num_rows
                if not batch.num_rows:
                    continue
                pending.append(batch)
                held += batch.num_rows
                while held >= chunk_rows:
                    table = pa.Table.from_batches(pending)
                    rest = table.slice(chunk_rows)
                    pending, held = rest.to_batches(), rest.num_rows
                    yield _parquet_chunk(table.slice(0, chunk_rows), features, row)
                    row += chunk_rows
            if held:
                yield _parquet_chunk(pa.Table.from_batches(pending), features, row)
        except (pa.ArrowException, OSError) as exc:
            raise JobInputError("file", f"the Parquet file cannot be read: {exc}") from None


def _parquet_chunk(table: Any, features: Sequence[str], first_row: int) -> RowChunk:
    import pyarrow as pa
    import pyarrow.compute as pc  # type: ignore[import-untyped]

    n = int(table.num_rows)
    matrix = np.empty((n, len(features)), dtype=np.float64)
    errors: dict[int, str] = {}
    for j, name in enumerate(features):
        column = table.column(name).combine_chunks()
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            for r, text in enumerate(column.to_pylist()):
                try:
                    matrix[r, j] = float(text) if text is not None else math.nan
                except ValueError:
                    errors.setdefault(first_row + r, _number_problem(name, text))
                    matrix[r, j] = 0.0
        else:
            matrix[:, j] = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
        for r in np.flatnonzero(pc.is_null(column).to_numpy(zero_copy_only=False)).tolist():
            errors.setdefault(first_row + r, f"{name}: missing value")
    keep = [r for r in range(n) if first_row + r not in errors]
    return _assemble(
        matrix[keep],
        [first_row + r for r in keep],
        errors,
        span=(first_row, n),
        features=features,
        resume=_pack_resume(JobFormat.PARQUET, 0, first_row + n),
    )


# ---------------------------------------------------------------------------------------------
# Results

ResultRow = dict[str, Any]
# {"row": i, "label": str, "probabilities": {class: p}} | {"row": i, "value": v} | {"row": i, "error": "..."}

_JSON_RESULTS = b"\x01"  # compact JSON of the rows, deflated: any rows at all
_PACKED_RESULTS = b"\x02"  # a JSON header and numpy arrays, deflated: the rows of the usual shapes
_CLASS, _VALUE, _OTHER = 0, 1, 2


def encode_results(rows: Sequence[ResultRow]) -> bytes:
    """A chunk's results as stored, deflated at the fast level (it runs once per chunk).

    Rows of the usual shapes (label and float probabilities over the same classes, a float value,
    an error) are packed as arrays: no float is printed as text, which costs the most in JSON. Any
    other row is kept as JSON in the header. decode_results gives back equal rows either way.
    """
    packed = _pack_results(rows)
    if packed is None:
        body = json.dumps(list(rows), separators=(",", ":"), allow_nan=False).encode()
        return _JSON_RESULTS + zlib.compress(body, 1)
    return _PACKED_RESULTS + zlib.compress(packed, 1)


def encode_outputs(chunk: RowChunk, labels: Sequence[str] | None, outputs: np.ndarray) -> bytes | None:
    """What encode_results stores for a chunk's rows, made from the runtime's outputs as arrays,
    without a dict per row (a job's hot path: bench/analysis.md, jobs). `outputs` has a line per
    row of `chunk.good` (increasing); `labels` names a classifier's columns (None: a regressor's
    one value). None where the rows are not of the packed shapes (then build the rows and use
    encode_results)."""
    first_row, n_rows, good, errors = chunk.first_row, chunk.n_rows, chunk.good, chunk.errors
    if not len(good) or not np.isfinite(outputs).all():
        return None
    at = np.asarray(good, dtype=np.int64) - first_row
    if at[0] < 0 or at[-1] >= n_rows or (np.diff(at) <= 0).any():
        return None
    kinds = np.full(n_rows, _OTHER, dtype=np.uint8)
    values = np.empty(0, dtype=np.float64)
    label_of = np.empty(0, dtype=np.int32)
    probabilities = np.empty(0, dtype=np.float64)
    if labels is None:
        kinds[at] = _VALUE
        values = np.ascontiguousarray(outputs[:, 0], dtype=np.float64)
        classes: list[str] | None = None
    else:
        if len(set(labels)) != len(labels) or outputs.shape[1] != len(labels):
            return None
        kinds[at] = _CLASS
        label_of = outputs.argmax(axis=1).astype(np.int32)
        probabilities = np.ascontiguousarray(outputs, dtype=np.float64)
        classes = list(labels)
    good_set = set(good)
    others = [
        {"row": row, "error": errors.get(row, "not scored")}
        for row in range(first_row, first_row + n_rows)
        if row not in good_set
    ]
    header = json.dumps(
        {"n": n_rows, "classes": classes, "labels": classes or [], "others": others},
        separators=(",", ":"),
        allow_nan=False,
    ).encode()
    packed = b"".join(
        [
            len(header).to_bytes(4, "little"),
            header,
            np.arange(first_row, first_row + n_rows, dtype=np.int64).tobytes(),
            kinds.tobytes(),
            label_of.tobytes(),
            probabilities.tobytes(),
            values.tobytes(),
        ]
    )
    return _PACKED_RESULTS + zlib.compress(packed, 1)


def _pack_results(rows: Sequence[ResultRow]) -> bytes | None:
    classes: tuple[str, ...] | None = None
    labels: dict[str, int] = {}
    index, kinds, label_of, probabilities, values = [], [], [], [], []
    others: list[ResultRow] = []
    for row in rows:
        number = row.get("row")
        if type(number) is not int:
            return None
        index.append(number)
        if len(row) == 3 and type(row.get("label")) is str and type(row.get("probabilities")) is dict:
            shown = tuple(row["probabilities"])
            if classes is None:
                classes = shown
            if shown == classes:
                kinds.append(_CLASS)
                label_of.append(labels.setdefault(row["label"], len(labels)))
                probabilities.append(row["probabilities"].values())
                continue
        elif len(row) == 2 and type(row.get("value")) is float:
            kinds.append(_VALUE)
            values.append(row["value"])
            continue
        kinds.append(_OTHER)
        others.append(row)
    flat = list(itertools.chain.from_iterable(probabilities))
    if set(map(type, flat)) - {float} or not all(map(math.isfinite, flat + values)):
        return None  # ints would come back as floats, NaN has no JSON: the JSON form keeps them
    header = json.dumps(
        {"n": len(index), "classes": classes, "labels": list(labels), "others": others},
        separators=(",", ":"),
        allow_nan=False,
    ).encode()
    return b"".join(
        [
            len(header).to_bytes(4, "little"),
            header,
            np.array(index, dtype=np.int64).tobytes(),
            np.array(kinds, dtype=np.uint8).tobytes(),
            np.array(label_of, dtype=np.int32).tobytes(),
            np.array(flat, dtype=np.float64).tobytes(),
            np.array(values, dtype=np.float64).tobytes(),
        ]
    )


def decode_results(data: bytes) -> list[ResultRow]:
    """The rows given to encode_results, equal and in the same order."""
    if data[:1] == _JSON_RESULTS:
        rows: list[ResultRow] = json.loads(zlib.decompress(data[1:]))
        return rows
    if data[:1] != _PACKED_RESULTS:
        raise ValueError("not results stored by encode_results")
    body = zlib.decompress(data[1:])
    size = int.from_bytes(body[:4], "little")
    header = json.loads(body[4 : 4 + size])
    n = header["n"]
    arrays = memoryview(body)[4 + size :]
    index = np.frombuffer(arrays, np.int64, n).tolist()
    kinds = np.frombuffer(arrays, np.uint8, n, 8 * n).tolist()
    n_class = kinds.count(_CLASS)
    classes = header["classes"] or []
    at = 9 * n
    label_of = np.frombuffer(arrays, np.int32, n_class, at).tolist()
    at += 4 * n_class
    probabilities = np.frombuffer(arrays, np.float64, n_class * len(classes), at)
    at += 8 * n_class * len(classes)
    values = iter(np.frombuffer(arrays, np.float64, kinds.count(_VALUE), at).tolist())
    labels = header["labels"]
    by_class = iter(zip(label_of, probabilities.reshape(n_class, len(classes)).tolist(), strict=True))
    others = iter(header["others"])
    out: list[ResultRow] = []
    for number, kind in zip(index, kinds, strict=True):
        if kind == _CLASS:
            label, shares = next(by_class)
            out.append(
                {
                    "row": number,
                    "label": labels[label],
                    "probabilities": dict(zip(classes, shares, strict=True)),
                }
            )
        elif kind == _VALUE:
            out.append({"row": number, "value": next(values)})
        else:
            out.append(next(others))
    return out


def _probability_column(label: str) -> str:
    return f"probability_{label}"


class ResultWriter:
    """Results streamed in a chosen format: one output row per input row, in the order given.

    Columns (CSV and Parquet): `row`, then `label` and one `probability_<class>` per class when
    `classes` is given (a classifier), else `value`; then `error`, empty unless the row failed.
    JSON Lines writes each ResultRow as it is.
    """

    def __init__(self, fmt: JobFormat, classes: Sequence[str] | None) -> None:
        self.fmt = fmt
        self.classes = list(classes) if classes is not None else None
        if self.classes is None:
            self.columns = ["row", "value", "error"]
        else:
            self.columns = ["row", "label", *map(_probability_column, self.classes), "error"]
        self._sink: _Sink | None = None
        self._parquet: Any = None
        self._schema: Any = None

    def start(self) -> bytes:
        if self.fmt is JobFormat.CSV:
            return self._csv([self.columns])
        if self.fmt is JobFormat.PARQUET:
            import pyarrow as pa
            import pyarrow.parquet as pq

            fields = [pa.field("row", pa.int64())]
            if self.classes is None:
                fields.append(pa.field("value", pa.float64()))
            else:
                fields.append(pa.field("label", pa.string()))
                fields += [pa.field(_probability_column(c), pa.float64()) for c in self.classes]
            fields.append(pa.field("error", pa.string()))
            self._sink = _Sink()
            self._schema = pa.schema(fields)
            self._parquet = pq.ParquetWriter(pa.PythonFile(self._sink, mode="w"), self._schema)
            return self._sink.drain()
        return b""

    def write(self, rows: Sequence[ResultRow]) -> bytes:
        if not rows:
            return b""
        if self.fmt is JobFormat.JSONL:
            dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
            return ("\n".join(map(dumps, rows)) + "\n").encode()
        table = [self._cells(row) for row in rows]
        if self.fmt is JobFormat.CSV:
            return self._csv(table)
        import pyarrow as pa

        if self._parquet is None or self._sink is None:
            raise RuntimeError("ResultWriter.start() was not called")
        columns = list(zip(*table, strict=True))
        batch = pa.table(
            [pa.array(col, type=self._schema.field(i).type) for i, col in enumerate(columns)],
            schema=self._schema,
        )
        self._parquet.write_table(batch)
        return self._sink.drain()

    def finish(self) -> bytes:
        if self.fmt is JobFormat.PARQUET and self._parquet is not None and self._sink is not None:
            self._parquet.close()
            return self._sink.drain()
        return b""

    def _cells(self, row: ResultRow) -> list[Any]:
        error = row.get("error")
        if self.classes is None:
            return [row["row"], row.get("value"), error]
        probabilities = row.get("probabilities") or {}
        return [
            row["row"],
            row.get("label"),
            *(probabilities.get(c) for c in self.classes),
            error,
        ]

    @staticmethod
    def _csv(table: Iterable[Sequence[Any]]) -> bytes:
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows(table)
        return out.getvalue().encode()


class _Sink(io.RawIOBase):
    """A write-only file that hands its bytes out as they come (ParquetWriter's output)."""

    def __init__(self) -> None:
        super().__init__()
        self._parts: list[bytes] = []
        self._position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._parts.append(chunk)
        self._position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._position

    def drain(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data
