"""Where a part's body sits in the bytes that were parsed, so that an attached message (forwarded
mail, a DSN's returned message) is stored as the bytes that were sent, not as a re-serialisation.

The email package keeps no offsets, so the path from the root to the part is followed through the
raw bytes again with the same rules (header block up to the first empty line, multipart bodies cut
at their delimiter lines, the line break before a delimiter belonging to it). Whenever the bytes
and the tree disagree (part counts differ, a boundary is missing) the answer is None and the
caller falls back to serialising the parsed part.
"""

from __future__ import annotations

import itertools
import re
from email.message import Message

from gateway.parse.parts import guard, payload_list, raw_items

_BODY_SEPARATOR_RE = re.compile(rb"\r?\n\r?\n")
_LEADING_EMPTY_LINE_RE = re.compile(rb"\r?\n")


def body_bytes(source: bytes, root: Message, target: Message) -> bytes | None:
    """The raw body of `target` (a part somewhere under `root`, which was parsed from `source`)."""
    path = _path(root, target)
    if path is None:
        return None
    start, end = 0, len(source)
    for entity, child in itertools.pairwise(path):
        body = _body_start(source, start, end)
        if body is None:
            return None
        children = payload_list(entity) or []
        if _maintype(entity) == "multipart":
            spans = _split(source, body, end, _boundary(entity))
            index = next((i for i, c in enumerate(children) if c is child), None)
            if spans is None or index is None or len(spans) != len(children):
                return None
            start, end = spans[index]
        else:  # message/*: the embedded message is the whole body
            start = body
    body = _body_start(source, start, end)
    if body is None:
        return None
    located = source[body:end]
    inner = next(iter(payload_list(target) or []), None)
    first = next(iter(raw_items(inner)), None) if inner is not None else None
    name = first[0].lower().encode("utf-8", "surrogateescape") if first is not None else b""
    if name and located[:4096].lstrip()[: len(name)].lower() != name:
        return None  # not the message the parser saw: better a re-serialisation than wrong bytes
    return located


def _path(root: Message, target: Message) -> list[Message] | None:
    """The parts from root down to target (by identity), or None if target is not under root."""
    stack: list[tuple[Message, int]] = [(root, 0)]
    path: list[Message] = []
    while stack:
        part, depth = stack.pop()
        del path[depth:]
        path.append(part)
        if part is target:
            return path
        stack.extend((child, depth + 1) for child in reversed(payload_list(part) or []))
    return None


def _maintype(part: Message) -> str:
    return guard(lambda: part.get_content_maintype(), "")


def _boundary(part: Message) -> bytes | None:
    boundary = guard(lambda: part.get_boundary(), None)
    if not boundary:
        return None
    return boundary.encode("utf-8", "surrogateescape")


def _body_start(source: bytes, start: int, end: int) -> int | None:
    """Where the body of the entity at source[start:end] begins: after its first empty line."""
    leading = _LEADING_EMPTY_LINE_RE.match(source, start, end)
    if leading is not None:  # no header fields at all
        return leading.end()
    separator = _BODY_SEPARATOR_RE.search(source, start, end)
    return separator.end() if separator is not None else None


def _split(source: bytes, start: int, end: int, boundary: bytes | None) -> list[tuple[int, int]] | None:
    """The (start, end) of each body part between the delimiter lines of a multipart body."""
    if boundary is None:
        return None
    delimiter = re.compile(rb"^--" + re.escape(boundary) + rb"(--)?[ \t]*(?:\r\n|\r|\n|$)", re.M)
    spans: list[tuple[int, int]] = []
    part_start: int | None = None
    for match in delimiter.finditer(source, start, end):
        if part_start is not None:
            spans.append((part_start, _before_line_break(source, part_start, match.start())))
        if match.group(1):  # the close delimiter: the epilogue follows
            return spans
        part_start = match.end()
    if part_start is not None:  # no close delimiter: the last part runs to the end
        spans.append((part_start, end))
    return spans


def _before_line_break(source: bytes, start: int, end: int) -> int:
    """The line break before a delimiter line belongs to the delimiter (RFC 2046 5.1.1)."""
    if end - 2 >= start and source[end - 2 : end] == b"\r\n":
        return end - 2
    if end - 1 >= start and source[end - 1 : end] in (b"\n", b"\r"):
        return end - 1
    return end
