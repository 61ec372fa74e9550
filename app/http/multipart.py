"""A file in a multipart/form-data body, streamed: the form's text fields before it, then its bytes
as they arrive (Starlette's `request.form()` spools a whole file to disk before the route sees a
byte, and so could neither check a CSV header while the upload streams nor answer 413 at the limit).

python-multipart (Starlette's own parser, already a dependency) splits the stream. The file must be
the last part that matters: text fields after it would arrive once the file is stored, so one is
refused (422 naming it) rather than silently ignored."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import python_multipart
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header

from app.core.errors import BadRequest, ValidationFailed

FIELD_BYTES = 1024
"""The most a text field may hold (a model's name, a version): a form is not a way to send rows."""
MOST_FIELDS = 16


def _invalid(name: str, message: str) -> ValidationFailed:
    return ValidationFailed(f"{name}: {message}", errors=[{"field": name, "message": message}])


def _malformed(message: str) -> BadRequest:
    return BadRequest(
        f"The multipart/form-data body is malformed: {message}.",
        errors=[{"field": "file", "message": message}],
    )


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    content_type: str | None = None
    data: bytearray = field(default_factory=bytearray)
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


@dataclass
class FilePart:
    """The form's text fields that came before the file, the file's name and media type (from its
    part's headers), and its bytes (`body`: read it to the end, which also reads the form's end)."""

    fields: dict[str, str]
    filename: str | None
    content_type: str | None
    body: AsyncIterator[bytes]


class _Reader:
    """python-multipart's callbacks, kept as state: the parts seen, and the file's bytes not yet
    handed on."""

    def __init__(self, file_field: str) -> None:
        self.file_field = file_field
        self.fields: dict[str, str] = {}
        self.part = _Part()
        self.header_name = b""
        self.header_value = b""
        self.file: _Part | None = None
        self.file_done = False
        self.pending: list[bytes] = []
        self.ended = False

    def on_part_begin(self) -> None:
        self.part = _Part()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.part.headers.append((self.header_name.lower(), self.header_value))
        self.header_name = self.header_value = b""

    def on_headers_finished(self) -> None:
        part = self.part
        headers = dict(part.headers)
        _, options = parse_options_header(headers.get(b"content-disposition", b""))
        if b"name" not in options:
            raise _malformed('a part without a Content-Disposition "name"')
        part.name = options[b"name"].decode("utf-8", "replace")
        if b"filename" in options:
            part.filename = options[b"filename"].decode("utf-8", "replace")
        if b"content-type" in headers:
            part.content_type = headers[b"content-type"].decode("latin-1")
        if self.file_done and part.name:
            raise _invalid(part.name, f"send every field before `{self.file_field}`")
        if part.name == self.file_field:
            if self.file is not None:
                raise _invalid(self.file_field, "one file per job")
            self.file = part
        elif len(self.fields) >= MOST_FIELDS:
            raise _malformed(f"more than {MOST_FIELDS} fields")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.part is self.file:
            self.pending.append(data[start:end])
            return
        self.part.data += data[start:end]
        if len(self.part.data) > FIELD_BYTES:
            raise _invalid(self.part.name, f"at most {FIELD_BYTES} bytes")

    def on_part_end(self) -> None:
        if self.part is self.file:
            self.file_done = True
        elif self.part.name and not self.file_done:
            try:
                self.fields[self.part.name] = self.part.data.decode()
            except UnicodeDecodeError:
                raise _invalid(self.part.name, "not UTF-8 text") from None

    def on_end(self) -> None:
        self.ended = True


async def file_part(content_type: str, stream: AsyncIterator[bytes], *, file_field: str = "file") -> FilePart:
    """Reads `stream` up to the start of the file part named `file_field`; its bytes then come from
    the answer's `body`. 400 for a body that is not multipart, 422 naming the field for a file that
    is missing or a field that comes after it."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise _malformed("no boundary in its Content-Type")
    reader = _Reader(file_field)
    parser = python_multipart.MultipartParser(
        boundary,
        {
            "on_part_begin": reader.on_part_begin,
            "on_part_data": reader.on_part_data,
            "on_part_end": reader.on_part_end,
            "on_header_field": reader.on_header_field,
            "on_header_value": reader.on_header_value,
            "on_header_end": reader.on_header_end,
            "on_headers_finished": reader.on_headers_finished,
            "on_end": reader.on_end,
        },
    )

    def feed(piece: bytes) -> None:
        try:
            parser.write(piece)
        except FormParserError as exc:
            raise _malformed(str(exc).rstrip(".") or "cannot be parsed") from None

    def finish() -> None:
        if not reader.ended:
            raise _malformed("it ends before its closing boundary")

    pieces = aiter(stream)
    async for piece in pieces:
        feed(piece)
        if reader.file is not None:
            break
    else:
        finish()
    if reader.file is None:
        raise _invalid(file_field, "required: the rows to score, as a file part")

    async def body() -> AsyncIterator[bytes]:
        while True:
            if reader.pending:
                held = reader.pending
                reader.pending = []
                for data in held:
                    if data:
                        yield data
            try:
                piece = await anext(pieces)
            except StopAsyncIteration:
                break
            feed(piece)
        finish()

    file = reader.file
    return FilePart(reader.fields, file.filename, file.content_type, body())
