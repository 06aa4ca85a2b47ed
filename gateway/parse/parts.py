"""Guarded access to the email package's parts: every accessor that may raise on malformed input is
wrapped, and raw header values come back unfolded with 8-bit bytes already read as text."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from email import headerregistry
from email import policy as email_policy
from email.message import Message
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from gateway.parse.charsets import guess


class HeaderCache:
    """Parsed header objects by (name, value), for values that come back message after message.

    A header object is immutable (a str with its parse result), so one parse can serve every read.
    It also keeps its parse tree, about 400 bytes per character of the value (4 096 address lists
    of 512 characters took 865 MB), so the bound is on the characters cached, not on the entries:
    short values only, and when the total would pass `max_total_chars` the cache starts afresh.
    A stranger's mail can make it useless, never large; a parse that raises is not kept.
    """

    def __init__(self, *, max_value_chars: int, max_total_chars: int) -> None:
        self.max_value_chars = max_value_chars
        self.max_total_chars = max_total_chars
        self._objects: dict[tuple[str, str], Any] = {}
        self.chars = 0  # of the values cached now

    def get(self, name: str, value: str, make: Callable[[str, str], Any]) -> Any:
        if len(value) > self.max_value_chars:
            return make(name, value)
        key = (name, value)
        found = self._objects.get(key)
        if found is None:
            found = make(name, value)
            if self.chars + len(value) > self.max_total_chars:
                self._objects.clear()
                self.chars = 0
            self._objects[key] = found
            self.chars += len(value)
        return found

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._objects


class _OnceParsingPolicy(email_policy.EmailPolicy):
    """email.policy.default, parsing each distinct header value once.

    The email package (3.11) builds a new header object every time a header is read: a part's
    Content-Type is read half a dozen times while the tree is walked (maintype, params, charset,
    filename...), and those parses were two thirds of parse_message's time. One parse serves every
    read, in this message and the next ones (every message has a `text/plain; charset=utf-8`).
    """

    def header_fetch_parse(self, name: str, value: str) -> Any:
        if not isinstance(value, str) or hasattr(value, "name"):
            return super().header_fetch_parse(name, value)
        return PARSED_HEADERS.get(name, value, super().header_fetch_parse)


class _ClassKeepingHeaderRegistry(headerregistry.HeaderRegistry):
    """email.headerregistry.HeaderRegistry, making each header class once.

    The registry (Python 3.11's email package) builds the class of a header with type() every time
    it builds a header: about 26 µs of the 80 µs a header took, a sixth of parse_message's time on a
    2 KB message (cProfile of 2 000 bench messages: 18 002 calls, 0.47 s). The class depends only
    on the registered class the name maps to, so one is kept per registered class: the cache is as
    small as the registry (every unknown name maps to the default class), whatever a sender writes.
    """

    def __init__(self) -> None:
        super().__init__()
        self._classes: dict[type, type] = {}

    def __getitem__(self, name: str) -> type:
        registered = self.registry.get(name.lower(), self.default_class)
        made = self._classes.get(registered)
        if made is None:
            made = self._classes[registered] = super().__getitem__(name)
        return made


# Per cache, at most 32 768 characters of values (about 13 MB of parse trees at worst), each at most
# 256 characters: a To with the support address, a Content-Type with its charset fit many times over.
CACHED_VALUE_CHARS = 256
CACHED_TOTAL_CHARS = 32 * 1024
# The policy's reads (header_fetch_parse), and headers.read_header's objects (the policy's header
# factory on an unfolded value): two caches, as the same key can stand for differently folded values.
PARSED_HEADERS = HeaderCache(max_value_chars=CACHED_VALUE_CHARS, max_total_chars=CACHED_TOTAL_CHARS)
HEADER_OBJECTS = HeaderCache(max_value_chars=CACHED_VALUE_CHARS, max_total_chars=CACHED_TOTAL_CHARS)
POLICY = _OnceParsingPolicy(header_factory=_ClassKeepingHeaderRegistry())
_T = TypeVar("_T")

LINEBREAK_RE = re.compile(r"\r\n|\r|\n")
_UNQUOTED_NAME_RE = re.compile(r"""(?:^|;)\s*(?:file)?name\s*=\s*([^";=][^";]*)""", re.I)
_QUOTED_NAME_RE = re.compile(r'(?:^|;)\s*(?:file)?name\s*=\s*"([^"]+)"', re.I)
# The codec of the message's undeclared 8-bit header text, guessed once from all of it (a longer
# sample guesses better than one Subject); set for the duration of one parse_message call.
_HEADER_CODEC: ContextVar[str | None] = ContextVar("header_codec", default=None)


@contextmanager
def header_codec(codec: str | None) -> Iterator[None]:
    token = _HEADER_CODEC.set(codec)
    try:
        yield
    finally:
        _HEADER_CODEC.reset(token)


def guard(func: Callable[[], _T], default: _T) -> _T:
    """Call an email-package accessor that may raise on malformed input; default on any error."""
    try:
        return func()
    except Exception:
        return default


def raw_items(part: Message) -> list[tuple[str, str]]:
    """The part's (name, source value) pairs, or none when the header block cannot be read."""
    return guard(lambda: [(str(k), str(v)) for k, v in part.raw_items()], [])


def payload_list(part: Message) -> list[Message] | None:
    """The sub-parts of a container part, or None for a leaf (or a payload that cannot be read)."""
    payload = guard(lambda: part.get_payload(), None)
    if not isinstance(payload, list):
        return None
    return [child for child in payload if isinstance(child, Message)]


def raw_payload(part: Message) -> bytes:
    """The undecoded body bytes of a non-container part.

    Read from `_payload` because `get_payload()` re-decodes 8-bit text with a charset guess and
    `get_payload(decode=True)` copies base64 line by line; both cost memory on large parts.
    """
    payload = getattr(part, "_payload", None)
    if isinstance(payload, bytes):
        return payload
    if not isinstance(payload, str):
        return b""
    try:
        return payload.encode("ascii", "surrogateescape")
    except UnicodeEncodeError:  # a programmatically built message holding real non-ASCII text
        return payload.encode("utf-8", "surrogateescape")


def has_content(part: Message) -> bool:
    return re.search(rb"\S", raw_payload(part)) is not None  # no copy, stops at the first hit


def transfer_encoding(part: Message) -> str:
    """base64 | quoted-printable | uuencode | identity, tolerating "quoted printable" and "base64;"."""
    value = str(guard(lambda: part.get("content-transfer-encoding", ""), "") or "")
    token = re.sub(r"[\s_]+", "-", value.strip().lower()).split(";")[0].strip("-")
    if token.startswith("base64"):
        return "base64"
    if token.startswith("quoted-printable") or token == "qp":
        return "quoted-printable"
    if token in ("x-uuencode", "uuencode", "x-uue", "uue"):
        return "uuencode"
    return "identity"


def raw_header(part: Message, name: str) -> str:
    """The first source value of a header, unfolded, without the policy's parsing."""
    value = next((v for k, v in raw_items(part) if k.lower() == name), "")
    return unfold(repair_8bit(value))


def declared_filename(part: Message) -> str | None:
    """The filename/name parameter, RFC 2231 and encoded-words decoded by the email package."""
    name = guard(lambda: part.get_filename(), None)
    if name and "\ufffd" in name:
        # Raw 8-bit in the parameter: the email package replaced it; we read it like other 8-bit headers.
        name = _raw_8bit_name(part) or name
    if name and " " not in name:
        # An unquoted name with spaces (name=This is a test.txt) is cut at the first space.
        for header in ("content-disposition", "content-type"):
            match = _UNQUOTED_NAME_RE.search(raw_header(part, header))
            if match and match.group(1).strip().startswith(name) and match.group(1).strip() != name:
                return match.group(1).strip()
    return name or None


def _raw_8bit_name(part: Message) -> str | None:
    for header in ("content-disposition", "content-type"):
        value = next((v for k, v in raw_items(part) if k.lower() == header), "")
        if value.isascii():
            continue
        match = _QUOTED_NAME_RE.search(unfold(repair_8bit(value))) or _UNQUOTED_NAME_RE.search(
            unfold(repair_8bit(value))
        )
        if match and match.group(1).strip():
            return match.group(1).strip()
    return None


def location_name(part: Message) -> str | None:
    """The last segment of Content-Location (how MHTML names its parts)."""
    location = raw_header(part, "content-location").strip()
    name = guard(lambda: unquote(urlsplit(location).path.rsplit("/", 1)[-1]), "") if location else ""
    return name or None


def content_id(part: Message) -> str | None:
    value = str(guard(lambda: part.get("content-id", ""), "") or "")
    value = repair_8bit(value).strip().strip("<>").strip()
    return value or None


def param(part: Message, name: str) -> str:
    """A Content-Type parameter as text ("" when absent or unreadable)."""
    value = guard(lambda: part.get_param(name), None)
    if isinstance(value, tuple):  # an RFC 2231 value the email package left undecoded
        value = value[2]
    return str(value or "")


def part_defects(part: Message) -> list[object]:
    return guard(lambda: list(part.defects), [])


def defect_text(defect: object) -> str:
    detail = str(defect)
    name = type(defect).__name__
    return f"{name}: {detail}" if detail and detail != name else name


def repair_8bit(value: str) -> str:
    """Raw 8-bit header bytes arrive as surrogate escapes; read them as UTF-8 (RFC 6532) or Polish."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        data = value.encode("utf-8", "surrogateescape")
    return _read_8bit(data)[1]


def _read_8bit(data: bytes) -> tuple[str, str]:
    """(codec, text): RFC 6532 UTF-8 first (it is never accidental), then the message's guess."""
    codec = _HEADER_CODEC.get()
    for candidate in ("utf-8", codec) if codec else ():
        try:
            return candidate, data.decode(candidate)
        except UnicodeDecodeError:
            pass
    return guess(data)


def eight_bit_guess(part: Message) -> str | None:
    """The codec a part's undeclared non-UTF-8 header text is read as (to be recorded), or None."""
    sample = eight_bit_sample(raw_items(part))
    return _read_8bit(sample)[0] if sample else None


def eight_bit_sample(items: list[tuple[str, str]]) -> bytes:
    """The raw bytes of every header value that carries undeclared 8-bit text other than UTF-8."""
    values = (v.encode("utf-8", "surrogateescape") for _, v in items if not v.isascii())
    return b" ".join(data for data in values if not _is_utf8(data))


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def unfold(value: str) -> str:
    return LINEBREAK_RE.sub("", value)
