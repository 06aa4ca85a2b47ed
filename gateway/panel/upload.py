"""Read a panel form (multipart or urlencoded) as it streams in, sizing every file on the way.

Starlette's own form parser spools whole files to disk before a route sees them; here each file
is counted while its bytes arrive, so an oversized one is known at once and its content is
dropped instead of kept. The rest of the body is still drained (up to a hard cap) so the client
reads a clean 413 instead of a reset connection; past the cap reading stops altogether.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

MAX_FIELD_BYTES = 1024 * 1024  # a text field (the body of a message) larger than this is refused


@dataclass(frozen=True)
class UploadedFile:
    filename: str
    content_type: str
    content: bytes


@dataclass(frozen=True)
class SubmittedForm:
    fields: dict[str, str]  # the first value of each non-file field
    files: list[UploadedFile]  # the parts named `files`, non-empty ones only


class FormError(Exception):
    """The body cannot be read as a form."""


class UnsupportedForm(FormError):
    """Neither multipart/form-data nor application/x-www-form-urlencoded."""


class FileTooLarge(FormError):
    def __init__(self, *, filename: str, size: int, limit: int) -> None:
        super().__init__(f"{filename!r} is {size} bytes or more, over the limit of {limit} bytes")
        self.filename, self.size, self.limit = filename, size, limit


class BodyTooLarge(FormError):
    def __init__(self, *, what: str, limit: int) -> None:
        super().__init__(f"{what} is over the limit of {limit} bytes")
        self.what, self.limit = what, limit


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None  # None: a plain field
    content_type: str = "application/octet-stream"
    data: bytearray = field(default_factory=bytearray)
    size: int = 0
    oversized: bool = False


class _MultipartCollector:
    """python-multipart callbacks that keep fields and files, and size every file as it arrives."""

    def __init__(self, *, file_field: str, max_file_bytes: int) -> None:
        self._file_field = file_field
        self._max_file_bytes = max_file_bytes
        self._part = _Part()
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_name = bytearray()
        self._header_value = bytearray()
        self.fields: dict[str, str] = {}
        self.files: list[UploadedFile] = []
        self.first_oversized: _Part | None = None

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._on_part_begin,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
            "on_header_field": lambda data, start, end: self._header_name.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self._header_value.extend(data[start:end]),
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
        }

    def _on_part_begin(self) -> None:
        self._part, self._headers = _Part(), []

    def _on_header_end(self) -> None:
        self._headers.append((bytes(self._header_name).lower(), bytes(self._header_value)))
        self._header_name.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        headers = dict(self._headers)
        _, options = parse_options_header(headers.get(b"content-disposition", b""))
        self._part.name = _decode(options.get(b"name", b""))
        if b"filename" in options:
            self._part.filename = _decode(options[b"filename"])
            content_type, _ = parse_options_header(headers.get(b"content-type", b""))
            self._part.content_type = _decode(content_type) or "application/octet-stream"

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        part.size += end - start
        limit = self._max_file_bytes if part.filename is not None else MAX_FIELD_BYTES
        if part.size > limit:
            if part.filename is None:
                raise BodyTooLarge(what=f"the field {part.name!r}", limit=MAX_FIELD_BYTES)
            part.oversized = True
            part.data = bytearray()  # never keep a byte of a file that will be refused
        if not part.oversized:
            part.data.extend(data[start:end])

    def _on_part_end(self) -> None:
        part = self._part
        if part.filename is None:
            self.fields.setdefault(part.name, _decode(bytes(part.data)))
        elif part.oversized:
            self.first_oversized = self.first_oversized or part
        elif part.name == self._file_field and (part.filename or part.size):
            # A browser sends an empty, nameless part for a file input left empty: not a file.
            self.files.append(UploadedFile(part.filename or "", part.content_type, bytes(part.data)))


def _decode(value: bytes | str) -> str:
    return value if isinstance(value, str) else value.decode("utf-8", errors="replace")


async def _limited_stream(request: Request, *, max_request_bytes: int) -> AsyncIterator[bytes]:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_request_bytes:
        raise BodyTooLarge(what="the request", limit=max_request_bytes)
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_request_bytes:
                raise BodyTooLarge(what="the request", limit=max_request_bytes)
            yield chunk
    except ClientDisconnect as error:
        raise FormError("the client went away before the form was complete") from error


async def read_form(request: Request, *, file_field: str, max_file_bytes: int, max_request_bytes: int) -> SubmittedForm:
    """The submitted fields and files; raises FormError (FileTooLarge, BodyTooLarge, ...)."""
    media_type, options = parse_options_header(request.headers.get("content-type", ""))
    chunks = _limited_stream(request, max_request_bytes=max_request_bytes)
    if media_type == b"application/x-www-form-urlencoded":
        body = b"".join([chunk async for chunk in chunks])
        pairs = parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True)
        return SubmittedForm(fields=dict(reversed(pairs)), files=[])
    if media_type != b"multipart/form-data" or not options.get(b"boundary"):
        raise UnsupportedForm("send multipart/form-data (or application/x-www-form-urlencoded without files)")
    collector = _MultipartCollector(file_field=file_field, max_file_bytes=max_file_bytes)
    parser = MultipartParser(options[b"boundary"], collector.callbacks())
    try:
        async for chunk in chunks:
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as error:
        raise FormError(f"malformed multipart body: {error}") from error
    if collector.first_oversized is not None:
        part = collector.first_oversized
        raise FileTooLarge(filename=part.filename or "", size=part.size, limit=max_file_bytes)
    return SubmittedForm(fields=collector.fields, files=collector.files)
