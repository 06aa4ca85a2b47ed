"""bytes -> ParsedMessage: text, HTML, attachments, threading headers, defects. No database.

`parse_message` never raises, whatever the bytes: every part access is guarded, and what cannot be
decoded is degraded (best-effort text) and recorded in `defects`.
"""

from __future__ import annotations

import binascii
import hashlib
import mimetypes
import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy as email_policy
from email.errors import MissingHeaderBodySeparatorDefect
from email.feedparser import BytesFeedParser
from email.message import Message
from email.parser import BytesHeaderParser, BytesParser
from email.utils import getaddresses, parsedate_to_datetime
from typing import TypeVar
from urllib.parse import unquote, urlsplit

from gateway.parse.charsets import best_effort, decode_bytes
from gateway.parse.text import html_to_text, unflow
from gateway.parse.tnef import TnefContent, TnefError, unpack_tnef


@dataclass(frozen=True)
class ParsedAttachment:
    filename: str  # decoded display name, never a path ("" replaced by a generated name)
    content_type: str  # lower-case "type/subtype" as declared
    content: bytes  # decoded content
    content_id: str | None = None  # without angle brackets
    inline: bool = False  # an inline part referenced from the HTML by cid:

    @property
    def size(self) -> int:
        return len(self.content)


@dataclass(frozen=True)
class DeliveryReport:
    """The machine-readable part of a DSN (multipart/report; report-type=delivery-status)."""

    original_message_id: str | None  # of the message that bounced, without angle brackets
    recipients: tuple[str, ...]
    action: str  # failed | delayed | delivered | relayed | expanded | ""
    status: str  # e.g. "5.1.1"
    diagnostic: str


@dataclass(frozen=True)
class ParsedMessage:
    message_id: str  # without angle brackets; synthesised from the raw bytes' hash when missing
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]
    subject: str
    from_address: str  # lower-case; "" when none could be read
    from_name: str
    from_header: str  # decoded, for display
    to: tuple[str, ...]  # lower-case addresses
    cc: tuple[str, ...]
    reply_to: tuple[str, ...]
    to_header: str
    cc_header: str
    date: datetime | None  # naive UTC
    text: str  # the text part; derived from the HTML when there is none
    html: str | None
    attachments: tuple[ParsedAttachment, ...]
    # Every header as (lower-case name, decoded value), in order; for classification rules.
    headers: tuple[tuple[str, str], ...] = ()
    defects: tuple[str, ...] = ()
    delivery_report: DeliveryReport | None = None
    message_id_synthesised: bool = field(default=False)

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        wanted = name.lower()
        for key, value in self.headers:
            if key == wanted:
                return value
        return None


def parse_message(raw: bytes) -> ParsedMessage:
    """Parse one RFC 5322 message. Never raises: what cannot be read is degraded and listed in defects."""
    try:
        msg, repairs = _parse_tree(raw)
    except Exception as exc:  # the parser is lenient, but nothing may escape from here
        return _unparseable(raw, f"message not parseable: {type(exc).__name__}: {exc}")
    try:
        return _Parser(raw, msg, repairs).parse()
    except Exception as exc:  # a bug or an edge nobody foresaw: keep the bytes readable, record why
        return _unparseable(raw, f"parser failed: {type(exc).__name__}: {exc}")


def _parse_tree(raw: bytes) -> tuple[Message, list[str]]:
    """The email package's tree, after undoing two breakages that would turn all headers into body."""
    repairs: list[str] = []
    data = raw
    if data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM) :]  # slicing copies, but only for this rare case
        repairs.append("message starts with a byte order mark; ignored")
    msg = _feed(data)
    if any(isinstance(d, MissingHeaderBodySeparatorDefect) for d in msg.defects):
        fixed = _repair_header_block(data)
        if fixed is not None:
            retry = _feed(fixed)
            if not any(isinstance(d, MissingHeaderBodySeparatorDefect) for d in retry.defects):
                repairs.append("header block had lines that were neither fields nor folded; joined to the field before")
                msg = retry
    return msg, repairs


def _feed(data: bytes) -> Message:
    """Parse in slices: handing the parser one huge string would keep a decoded copy of the whole
    message alive next to its line list, about 1.5x the message size more at the peak."""
    parser = BytesFeedParser(policy=_POLICY)
    view = memoryview(data)
    for offset in range(0, len(data), _FEED_CHUNK):
        parser.feed(bytes(view[offset : offset + _FEED_CHUNK]))
    return parser.close()


def _repair_header_block(data: bytes) -> bytes | None:
    """Re-fold stray lines in the header block (broken folding, "Name  :" spacing); None if it isn't one."""
    end = re.search(rb"\r?\n\r?\n", data)
    head_end = end.start() if end else len(data)
    lines = data[:head_end].split(b"\n")
    fields = [bool(_FIELD_LINE_RE.match(line)) for line in lines]
    last_field = max((i for i, is_field in enumerate(fields) if is_field), default=-1)
    out = []
    for index, line in enumerate(lines):
        if fields[index]:
            out.append(_FIELD_LINE_RE.sub(rb"\1:", line, count=1))
        elif line[:1] in (b" ", b"\t") or (index == 0 and line.startswith(b"From ")):
            out.append(line)
        elif 0 < index < last_field:
            out.append(b" " + line)  # a stray line between two fields belongs to the one before
        else:
            return None  # text before the first field or after the last: not a header problem we know
    return b"\n".join(out) + data[head_end:]


# ---------------------------------------------------------------------------------------------
# Constants

_POLICY = email_policy.default
# For re-serialising embedded messages: source headers are written back as they came (no refolding).
_GEN_POLICY = _POLICY.clone(refold_source="none", linesep="\r\n")
_T = TypeVar("_T")

_LINEBREAK_RE = re.compile(r"\r\n|\r|\n")
_ANGLE_ID_RE = re.compile(r"<([^<>]*)>")
_ENCODED_WORD_RE = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_BOUNDARY_RE = re.compile(r"""boundary\s*=\s*(?:"([^"]+)"|([^\s;"]+))""", re.I)
_SRC_RE = re.compile(r"""\b(?:src|background)\s*=\s*["']?([^"'\s>]+)""", re.I)
_CID_REF_RE = re.compile(r"""cid:([^"'\s>)]+)""", re.I)
_META_CHARSET_RE = re.compile(rb"""<meta[^>]{0,200}?charset\s*=\s*["']?([\w.:-]+)""", re.I)
_STATUS_RE = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")
_DSN_TYPE_PREFIX_RE = re.compile(r"^[\w.-]+\s*;\s*")
_UNQUOTED_NAME_RE = re.compile(r"""(?:^|;)\s*(?:file)?name\s*=\s*([^";=][^";]*)""", re.I)
_FEED_CHUNK = 1 << 20
_BARE_ADDRESS_RE = re.compile(r"[^\s<>,;:\"()\[\]]+@[^\s<>,;:\"()\[\]]+")
_UTF8_BOM = b"\xef\xbb\xbf"
_FIELD_LINE_RE = re.compile(rb"^([!-9;-~]+)[ \t]*:")
_HEADER_MSGID_RE = re.compile(r"^message-id[ \t]*:(.*(?:\n[ \t].*)*)", re.I | re.M)

_TNEF_TYPES = frozenset({"application/ms-tnef", "application/vnd.ms-tnef"})
_DSN_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status"})
_RETURNED_TYPES = frozenset({"message/rfc822", "message/global", "text/rfc822-headers", "message/global-headers"})
# Extensions mimetypes does not know for the message/* and report parts we keep as attachments.
_EXTENSIONS = {
    "message/rfc822": ".eml",
    "message/global": ".eml",
    "message/delivery-status": ".txt",
    "message/global-delivery-status": ".txt",
    "message/disposition-notification": ".txt",
    "message/feedback-report": ".txt",
    "text/rfc822-headers": ".txt",
    "text/plain": ".txt",
    "application/octet-stream": ".bin",
}
_STRUCTURED_LIMIT = 8 * 1024  # longest header value given to the policy's (superlinear) parser
_STRUCTURED_BUDGET = 128 * 1024  # header text per message after which every header takes the fast path
_MAX_FILENAME = 200
_MAX_BODY_DEPTH = 50
_EMBEDDED_HEAD = 64 * 1024  # where to look for an embedded message's Subject


# ---------------------------------------------------------------------------------------------
# The parser: one instance per message, so defects have one home


@dataclass
class _Header:
    name: str  # lower-case
    raw: str  # unfolded source value, 8-bit bytes already decoded
    obj: object | None  # the policy's header object, None when it could not be built
    text: str  # decoded, for display


@dataclass
class _Pending:
    """An attachment before names are generated and inline flags are known."""

    filename: str
    content_type: str
    content: bytes
    content_id: str | None
    inline_hint: bool  # Content-Disposition: inline with a Content-ID inside multipart/related
    location: str | None = None  # Content-Location, which MHTML pages reference instead of cid:


class _Parser:
    def __init__(self, raw: bytes, msg: Message, repairs: list[str]) -> None:
        self.raw = raw
        self.msg = msg
        self.defects: list[str] = list(repairs)
        self._recovered: dict[int, Message | None] = {}
        self._ctypes: dict[int, str] = {}

    def parse(self) -> ParsedMessage:
        headers = self._read_headers(self.msg)
        message_id, synthesised = self._message_id(headers)
        from_pairs = _addresses(_first(headers, "from"))
        from_name, from_address = from_pairs[0] if from_pairs else ("", "")
        root = self._resolve(self.msg)
        plain_part, html_part = self._bodies(root)
        text = self._text_of(plain_part) if plain_part is not None else ""
        html = self._text_of(html_part) if html_part is not None else None
        pending: list[_Pending] = []
        tnef_bodies: list[TnefContent] = []
        for part, in_related in self._leaves(root):
            if part is plain_part or part is html_part:
                continue
            self._add_attachment(part, in_related, pending, tnef_bodies)
        for content in tnef_bodies:
            text, html = self._adopt_tnef_body(content, text, html, pending)
        if not text.strip() and html:
            text = html_to_text(html)
        report = self._guarded_report(root)
        date = self._date(headers)
        self._collect_part_defects(root)  # last: every step above may have added defects
        return ParsedMessage(
            message_id=message_id,
            in_reply_to=tuple(_ids(_joined(headers, "in-reply-to"))),
            references=tuple(_ids(_joined(headers, "references"))),
            subject=_first_text(headers, "subject"),
            from_address=from_address,
            from_name=from_name,
            from_header=_first_text(headers, "from"),
            to=tuple(a for _, a in _addresses(_all(headers, "to")) if a),
            cc=tuple(a for _, a in _addresses(_all(headers, "cc")) if a),
            reply_to=tuple(a for _, a in _addresses(_all(headers, "reply-to")) if a),
            to_header=", ".join(h.text for h in _all(headers, "to")),
            cc_header=", ".join(h.text for h in _all(headers, "cc")),
            date=date,
            text=text,
            html=html,
            attachments=_finish_attachments(pending, html),
            headers=tuple((h.name, h.text) for h in headers),
            defects=tuple(dict.fromkeys(self.defects)),  # de-duplicated, first occurrence kept
            delivery_report=report,
            message_id_synthesised=synthesised,
        )

    # -- headers ------------------------------------------------------------------------------

    def _read_headers(self, msg: Message) -> list[_Header]:
        headers = []
        budget = _STRUCTURED_BUDGET
        for name, value in _guard(lambda: list(msg.raw_items()), []):
            header = self._read_header(str(name), str(value), structured=budget > 0)
            budget -= len(header.raw)
            headers.append(header)
        return headers

    def _read_header(self, name: str, value: str, *, structured: bool = True) -> _Header:
        name = _repair_8bit(name).strip().lower()
        raw = _unfold(_repair_8bit(value))
        if not structured or len(raw) > _STRUCTURED_LIMIT:
            # The policy's header parser slows down quadratically (16 KB of addresses: 0.5 s);
            # huge or numerous headers are decoded by our linear path instead.
            self.defects.append(f"header {name}: {len(raw)} characters, read without the structured parser")
            return _Header(
                name, raw, None, _CONTROL_RE.sub(" ", _decode_words(raw, f"header {name}", self.defects)).strip()
            )
        try:
            obj: object | None = _POLICY.header_factory(name, raw)
            text = str(obj)
        except Exception as exc:  # e.g. AttributeError 'Group' object has no attribute 'local_part'
            self.defects.append(f"header {name}: not parseable ({type(exc).__name__}: {exc}); kept as text")
            obj, text = None, _decode_words(raw, f"header {name}", self.defects)
        if obj is not None:
            for defect in _guard(lambda: list(getattr(obj, "defects", ())), []):
                self.defects.append(f"header {name}: {_defect_text(defect)}")
            # The policy silently turns an unknown charset in an encoded-word into U+FFFD.
            if "\ufffd" in text and "\ufffd" not in raw and "=?" in raw:
                text = _decode_words(raw, f"header {name}", self.defects)
        return _Header(name, raw, obj, _CONTROL_RE.sub(" ", text).strip())

    def _message_id(self, headers: list[_Header]) -> tuple[str, bool]:
        value = _first_raw(headers, "message-id")
        ids = _ids(value)
        if ids:
            return ids[0], False
        token = value.strip().strip("<>").split()
        if token:
            self.defects.append("Message-ID without angle brackets")
            return token[0], False
        return f"{hashlib.sha256(self.raw).hexdigest()[:32]}@synthesised.invalid", True

    def _date(self, headers: list[_Header]) -> datetime | None:
        value = _first_raw(headers, "date").strip()
        if not value:
            return None
        try:
            parsed = parsedate_to_datetime(value)
            if parsed.tzinfo is not None:  # a naive result means "-0000": UTC with unknown origin
                parsed = parsed.astimezone(UTC).replace(tzinfo=None)
            return parsed
        except Exception as exc:
            self.defects.append(f"Date not understood ({value[:80]!r}: {type(exc).__name__})")
            return None

    # -- content types (cached: the email package re-parses Content-Type on every call) ---------

    def _content_type(self, part: Message) -> str:
        key = id(part)
        if key not in self._ctypes:
            self._ctypes[key] = _guard(lambda: part.get_content_type().lower(), "application/octet-stream")
        return self._ctypes[key]

    def _kind(self, part: Message) -> str:
        """multipart | broken (a multipart the parser could not split) | message | leaf."""
        maintype = self._content_type(part).partition("/")[0]
        is_list = isinstance(_guard(lambda: part.get_payload(), None), list)
        if maintype == "multipart":
            return "multipart" if is_list else "broken"
        return "message" if maintype == "message" else "leaf"

    def _effective_type(self, part: Message) -> str:
        """A multipart that stayed unsplit is read as the plain text it effectively is."""
        return "text/plain" if self._kind(part) == "broken" else self._content_type(part)

    def _related_root(self, part: Message, children: list[Message]) -> Message | None:
        """RFC 2387: the part named by "start", else the first; MHTML writers sometimes put the HTML
        later and say so only in "type", so a first part of another type defers to that."""
        start = str(_guard(lambda: part.get_param("start"), "") or "").strip().strip("<>")
        if start:
            for child in children:
                if _content_id(child) == start:
                    return child
        root_type = str(_guard(lambda: part.get_param("type"), "") or "").strip().lower()
        if children and root_type and self._content_type(children[0]) != root_type:
            return next((c for c in children if self._content_type(c) == root_type), children[0])
        return children[0] if children else None

    # -- structure ----------------------------------------------------------------------------

    def _resolve(self, part: Message) -> Message:
        """The part itself, or the multipart we re-split when the parser never found its boundary."""
        if self._kind(part) != "broken":
            return part
        key = id(part)
        if key not in self._recovered:
            self._recovered[key] = self._recover_multipart(part)
        return self._recovered[key] or part

    def _recover_multipart(self, part: Message) -> Message | None:
        ctype = self._content_type(part)
        raw_ct = _raw_header(part, "content-type")
        for defect in _guard(lambda part=part: list(part.defects), []):
            self.defects.append(f"{ctype}: {_defect_text(defect)}")
        match = _BOUNDARY_RE.search(raw_ct)
        body = _raw_payload(part)
        if match:
            boundary = (match.group(1) or match.group(2)).strip()
            if b"--" + boundary.encode("utf-8", "surrogateescape") in body:
                # Typically an unquoted boundary containing "=", which the parser cuts short.
                head = f'Content-Type: {ctype}; boundary="{boundary}"\r\n\r\n'.encode("utf-8", "surrogateescape")
                sub = _guard(lambda: BytesParser(policy=_POLICY).parsebytes(head + body), None)
                if sub is not None and self._kind(sub) == "multipart":
                    self.defects.append(f"{ctype}: boundary {boundary!r} recovered from the raw header")
                    return sub
        self.defects.append(f"{ctype}: boundary never found; the body is kept as plain text")
        return None

    def _children(self, part: Message) -> list[Message]:
        payload = _guard(lambda: part.get_payload(), [])
        if not isinstance(payload, list):
            return []
        return [self._resolve(child) for child in payload if isinstance(child, Message)]

    def _bodies(self, part: Message, depth: int = 0) -> tuple[Message | None, Message | None]:
        """The text/plain and text/html parts that make up the message body (either may be None)."""
        kind = self._kind(part)
        if kind in ("leaf", "broken"):
            if self._is_attachment(part) or not _has_content(part):
                return None, None  # a blank text part must not hide the real body behind it
            ctype = self._effective_type(part)
            return (part, None) if ctype == "text/plain" else (None, part) if ctype == "text/html" else (None, None)
        if kind != "multipart":
            return None, None  # message/*: an embedded message is an attachment, not our body
        if depth > _MAX_BODY_DEPTH:
            self.defects.append(f"parts nested deeper than {_MAX_BODY_DEPTH} levels are kept as attachments")
            return None, None
        children = self._children(part)
        subtype = self._content_type(part).partition("/")[2]
        if subtype == "related":
            root = self._related_root(part, children)
            return self._bodies(root, depth + 1) if root is not None else (None, None)
        if subtype == "alternative":
            plain = html = None
            for child in children:
                child_plain, child_html = self._bodies(child, depth + 1)
                plain = plain or child_plain
                html = child_html or html  # alternatives go from plainest to richest
            return plain, html
        for child in children:  # mixed, signed, report...: the first part that has a body is it
            found = self._bodies(child, depth + 1)
            if found != (None, None):
                return found
        return None, None

    def _leaves(self, root: Message) -> Iterator[tuple[Message, bool]]:
        """Every non-container part in document order, with whether it sits inside multipart/related."""
        stack: list[tuple[Message, bool]] = [(root, False)]
        while stack:
            part, in_related = stack.pop()
            if self._kind(part) == "multipart":
                related = in_related or self._content_type(part) == "multipart/related"
                stack.extend((child, related) for child in reversed(self._children(part)))
            else:
                yield part, in_related

    def _collect_part_defects(self, root: Message) -> None:
        stack = [root]
        while stack:
            part = stack.pop()
            label = "message" if part is self.msg or part is root else self._content_type(part)
            for defect in _guard(lambda part=part: list(part.defects), []):
                self.defects.append(f"{label}: {_defect_text(defect)}")
            if self._kind(part) == "multipart":
                stack.extend(reversed(self._children(part)))
        if root is not self.msg:
            for defect in _guard(lambda: list(self.msg.defects), []):
                self.defects.append(f"message: {_defect_text(defect)}")

    def _is_attachment(self, part: Message) -> bool:
        disposition = _guard(lambda: part.get_content_disposition(), None)
        if disposition == "attachment":
            return True
        return disposition != "inline" and bool(_declared_filename(part))

    # -- content ------------------------------------------------------------------------------

    def _text_of(self, part: Message) -> str:
        """Decoded text of a text/* part (or of a multipart we could not split)."""
        ctype = self._effective_type(part)
        data = self._payload_bytes(part, ctype)
        charset = _guard(lambda: part.get_content_charset(), None)
        if not charset and ctype == "text/html":
            sniffed = _META_CHARSET_RE.search(data[:4096])
            charset = sniffed.group(1).decode("ascii", "replace") if sniffed else None
        text = decode_bytes(data, charset, ctype, self.defects)
        text = _LINEBREAK_RE.sub("\n", text)
        if ctype == "text/plain" and str(_guard(lambda: part.get_param("format"), "")).lower() == "flowed":
            delsp = str(_guard(lambda: part.get_param("delsp"), "")).lower() == "yes"
            text = unflow(text, delsp)
        return text

    def _payload_bytes(self, part: Message, ctype: str) -> bytes:
        encoding = _transfer_encoding(part)
        payload = getattr(part, "_payload", None)
        if encoding == "base64" and isinstance(payload, str) and payload.isascii():
            return self._base64(payload, ctype)  # binascii reads ASCII str directly: no bytes copy
        data = _raw_payload(part)
        if encoding == "base64":
            return self._base64(data, ctype)
        if encoding == "quoted-printable":
            return binascii.a2b_qp(data)
        if encoding == "uuencode":
            decoded = _guard(lambda: part.get_payload(decode=True), None)
            if isinstance(decoded, bytes):
                return decoded
            self.defects.append(f"{ctype}: uuencoded body not decodable; kept as is")
        return data

    def _base64(self, data: bytes | str, ctype: str) -> bytes:
        try:
            # Non-strict mode skips line breaks and stray characters without copying line by line.
            return binascii.a2b_base64(data)
        except (binascii.Error, ValueError) as exc:
            self.defects.append(f"{ctype}: damaged base64 ({exc}); decoded best effort")
        if isinstance(data, str):
            data = data.encode("ascii", "surrogateescape")
        alphabet = re.sub(rb"[^A-Za-z0-9+/]", b"", data)
        alphabet = alphabet[: len(alphabet) - len(alphabet) % 4 if len(alphabet) % 4 == 1 else len(alphabet)]
        return binascii.a2b_base64(alphabet + b"=" * (-len(alphabet) % 4))

    def _part_bytes(self, part: Message, ctype: str) -> bytes:
        """Bytes to store for an attachment; message/* parts are serialised back to RFC 5322."""
        if ctype.startswith("message/") and isinstance(_guard(lambda: part.get_payload(), None), list):
            return self._embedded_bytes(part, ctype)
        return self._payload_bytes(part, ctype)

    def _embedded_bytes(self, part: Message, ctype: str) -> bytes:
        chunks = []
        for inner in _guard(lambda: list(part.get_payload()), []):
            try:
                chunks.append(inner.as_bytes(policy=_GEN_POLICY))
            except Exception as exc:
                self.defects.append(f"{ctype}: embedded message not re-serialisable ({type(exc).__name__})")
                chunks.append(_guard(lambda inner=inner: str(inner).encode("utf-8", "surrogateescape"), b""))
        data = b"".join(chunks)
        # A message/rfc822 part in base64 breaks RFC 2046, but it happens: the parser then saw only
        # base64 lines as the "message", which we decode back into the real one.
        if _transfer_encoding(part) == "base64":
            return self._base64(data.partition(b"\r\n\r\n")[2] or data, ctype)
        return data

    # -- attachments --------------------------------------------------------------------------

    def _add_attachment(
        self, part: Message, in_related: bool, pending: list[_Pending], tnef_bodies: list[TnefContent]
    ) -> None:
        ctype = self._effective_type(part)
        name = _clean_filename(_raw_filename(part) or "")
        if "\ufffd" in name:
            self.defects.append(f"{ctype}: attachment name {name!r} not fully decodable")
        cid = _content_id(part)
        content = self._part_bytes(part, ctype)
        if not name and ctype in ("message/rfc822", "message/global"):
            name = self._embedded_name(content)
        if not name and ctype.startswith("text/") and re.search(rb"\S", content) is None:
            return  # an empty unnamed text part (e.g. a blank alternative) is no attachment
        if ctype in _TNEF_TYPES or name.lower() == "winmail.dat":
            unpacked = self._unpack_tnef(content)
            if unpacked is not None:
                pending.extend(
                    _Pending(_clean_filename(f.name), f.content_type, f.content, f.content_id, False)
                    for f in unpacked.files
                )
                tnef_bodies.append(unpacked)
                return
        disposition = _guard(lambda: part.get_content_disposition(), None)
        hint = in_related and disposition != "attachment"
        location = _raw_header(part, "content-location").strip() or None
        pending.append(_Pending(name, self._content_type(part), content, cid, hint, location if in_related else None))

    def _embedded_name(self, content: bytes) -> str:
        """ "<subject>.eml", read from the header block only (no copy of a large embedded message)."""
        head = re.split(rb"\r?\n\r?\n", content[:_EMBEDDED_HEAD], maxsplit=1)[0]
        inner = _guard(lambda: BytesHeaderParser(policy=_POLICY).parsebytes(head), None)
        if inner is None:
            return ""
        subject = self._read_header("subject", _raw_header(inner, "subject"))
        # A subject is no path: its slashes are kept visible instead of being cut away.
        title = subject.text.replace("/", "-").replace("\\", "-")
        return _clean_filename(title + ".eml") if title else ""

    def _unpack_tnef(self, content: bytes) -> TnefContent | None:
        try:
            unpacked = unpack_tnef(content)
        except TnefError as exc:
            self.defects.append(f"winmail.dat not unpackable ({exc}); kept as is")
            return None
        self.defects.extend(unpacked.defects)
        if unpacked.empty:
            self.defects.append("winmail.dat holds no attachments and no body; kept as is")
            return None
        return unpacked

    def _adopt_tnef_body(
        self, content: TnefContent, text: str, html: str | None, pending: list[_Pending]
    ) -> tuple[str, str | None]:
        """Use winmail.dat's body where the message has none; keep the rest as files."""
        if content.html:
            if html is None:
                html = content.html
            else:
                pending.append(_Pending("body.html", "text/html", content.html.encode("utf-8"), None, False))
        if content.text:
            if not text.strip():
                text = content.text
            elif " ".join(content.text.split()) != " ".join(text.split()):
                pending.append(_Pending("body.txt", "text/plain", content.text.encode("utf-8"), None, False))
        if content.rtf:
            pending.append(_Pending("body.rtf", "application/rtf", content.rtf, None, False))
        return text, html

    # -- delivery status notifications --------------------------------------------------------

    def _guarded_report(self, root: Message) -> DeliveryReport | None:
        """A report we fail to read must not cost the message its text and attachments."""
        try:
            return self._delivery_report(root)
        except Exception as exc:
            self.defects.append(f"delivery report unreadable: {type(exc).__name__}: {exc}")
            return None

    def _delivery_report(self, root: Message) -> DeliveryReport | None:
        if self._content_type(root) != "multipart/report":
            return None
        report_type = str(_guard(lambda: root.get_param("report-type"), "") or "").lower()
        if report_type != "delivery-status":
            return None
        children = self._children(root)
        blocks: list[list[tuple[str, str]]] = []
        for child in children:
            if self._content_type(child) in _DSN_TYPES:
                blocks.extend(self._dsn_blocks(child))
        returned = next((c for c in children if self._content_type(c) in _RETURNED_TYPES), None)
        original = self._returned_message_id(returned) if returned is not None else None
        recipients = [_recipient(block) for block in _recipient_blocks(blocks)]
        chosen = next((r for r in recipients if r[1] == "failed"), recipients[0] if recipients else None)
        _, action, status, diagnostic = chosen or ("", "", "", "")
        return DeliveryReport(
            original_message_id=original,
            recipients=tuple(dict.fromkeys(r[0] for r in recipients if r[0])),
            action=action,
            status=status,
            diagnostic=diagnostic,
        )

    def _dsn_blocks(self, part: Message) -> list[list[tuple[str, str]]]:
        """The field blocks of a message/delivery-status part, however the parser split them."""
        payload = _guard(lambda: part.get_payload(), None)
        if not isinstance(payload, list):
            text = decode_bytes(self._payload_bytes(part, "message/delivery-status"), None, "", [])
            return _field_blocks(text)
        blocks = []
        encoded = False
        for block in payload:
            fields = [(_repair_8bit(str(k)).lower(), _unfold(_repair_8bit(str(v)))) for k, v in block.raw_items()]
            blocks.append(fields)
            # A mangled report can announce base64 in one block and carry it in the next (seen
            # behind Proofpoint); the encoded text then holds the per-recipient fields.
            encoded = encoded or dict(fields).get("content-transfer-encoding", "").strip().lower() == "base64"
            body = _raw_payload(block)
            if body.strip():
                if encoded:
                    body = self._base64(body, "message/delivery-status")
                blocks.extend(_field_blocks(decode_bytes(body, None, "", [])))
        return blocks

    def _returned_message_id(self, part: Message) -> str | None:
        if self._content_type(part).startswith("message/"):
            inner = _guard(lambda: part.get_payload(0), None)
            if isinstance(inner, Message):
                values = [str(v) for k, v in _guard(lambda: list(inner.raw_items()), []) if k.lower() == "message-id"]
                ids = _ids(_unfold(values[0])) if values else []
                return ids[0] if ids else None
            return None
        text = decode_bytes(self._payload_bytes(part, "text/rfc822-headers"), None, "", [])
        match = _HEADER_MSGID_RE.search(_LINEBREAK_RE.sub("\n", text))
        ids = _ids(_unfold(match.group(1))) if match else []
        return ids[0] if ids else None


# ---------------------------------------------------------------------------------------------
# Small helpers: guarded access to email.message parts


def _guard(func: Callable[[], _T], default: _T) -> _T:
    """Call an email-package accessor that may raise on malformed input; default on any error."""
    try:
        return func()
    except Exception:
        return default


def _raw_payload(part: Message) -> bytes:
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


def _has_content(part: Message) -> bool:
    return re.search(rb"\S", _raw_payload(part)) is not None  # no copy, stops at the first hit


def _transfer_encoding(part: Message) -> str:
    """base64 | quoted-printable | uuencode | identity, tolerating "quoted printable" and "base64;"."""
    value = str(_guard(lambda: part.get("content-transfer-encoding", ""), "") or "")
    token = re.sub(r"[\s_]+", "-", value.strip().lower()).split(";")[0].strip("-")
    if token.startswith("base64"):
        return "base64"
    if token.startswith("quoted-printable") or token == "qp":
        return "quoted-printable"
    if token in ("x-uuencode", "uuencode", "x-uue", "uue"):
        return "uuencode"
    return "identity"


def _raw_header(part: Message, name: str) -> str:
    """The first source value of a header, unfolded, without the policy's parsing."""
    items = _guard(lambda: list(part.raw_items()), [])
    value = next((str(v) for k, v in items if str(k).lower() == name), "")
    return _unfold(_repair_8bit(value))


def _declared_filename(part: Message) -> str | None:
    """The filename/name parameter, RFC 2231 and encoded-words decoded by the email package."""
    name = _guard(lambda: part.get_filename(), None)
    if name and " " not in name:
        # An unquoted name with spaces (name=This is a test.txt) is cut at the first space.
        for header in ("content-disposition", "content-type"):
            match = _UNQUOTED_NAME_RE.search(_raw_header(part, header))
            if match and match.group(1).strip().startswith(name) and match.group(1).strip() != name:
                return match.group(1).strip()
    return name or None


def _raw_filename(part: Message) -> str | None:
    """The declared name, else the last segment of Content-Location (how MHTML names its parts)."""
    name = _declared_filename(part)
    if not name:
        location = _raw_header(part, "content-location").strip()
        name = _guard(lambda: unquote(urlsplit(location).path.rsplit("/", 1)[-1]), "") if location else ""
    return name or None


def _content_id(part: Message) -> str | None:
    value = str(_guard(lambda: part.get("content-id", ""), "") or "")
    value = _repair_8bit(value).strip().strip("<>").strip()
    return value or None


def _defect_text(defect: object) -> str:
    detail = str(defect)
    name = type(defect).__name__
    return f"{name}: {detail}" if detail and detail != name else name


# ---------------------------------------------------------------------------------------------
# Headers and identifiers


def _repair_8bit(value: str) -> str:
    """Raw 8-bit header bytes arrive as surrogate escapes; read them as UTF-8 (RFC 6532) or Polish."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return best_effort(value.encode("utf-8", "surrogateescape"))


def _unfold(value: str) -> str:
    return _LINEBREAK_RE.sub("", value)


def _first(headers: list[_Header], name: str) -> list[_Header]:
    return next(([h] for h in headers if h.name == name), [])


def _all(headers: list[_Header], name: str) -> list[_Header]:
    return [h for h in headers if h.name == name]


def _first_raw(headers: list[_Header], name: str) -> str:
    return next((h.raw for h in headers if h.name == name), "")


def _first_text(headers: list[_Header], name: str) -> str:
    return next((h.text for h in headers if h.name == name), "")


def _joined(headers: list[_Header], name: str) -> str:
    return " ".join(h.raw for h in headers if h.name == name)


def _ids(value: str) -> list[str]:
    """Every <id> in order, tolerating garbage between them; bare tokens with "@" when there are none."""
    ids = ["".join(found.split()) for found in _ANGLE_ID_RE.findall(value)]
    ids = [i for i in ids if i]
    if ids or "<" in value:
        return ids
    return [token for token in value.replace(",", " ").split() if "@" in token]


def _addresses(headers: list[_Header]) -> list[tuple[str, str]]:
    """(display name, lower-case addr-spec) pairs; addr-spec is "" when it is not an address."""
    pairs: list[tuple[str, str]] = []
    for header in headers:
        try:
            found = [(a.display_name, a.addr_spec) for a in header.obj.addresses]
        except Exception:  # no header object, or groups without local parts
            found = _fallback_addresses(header.text)
        pairs.extend((str(name or ""), _clean_address(str(addr or ""))) for name, addr in found)
    return pairs


def _fallback_addresses(text: str) -> list[tuple[str, str]]:
    """The old-style address parser, and when even that fails (it recurses once per address on
    some inputs), whatever looks like addr-specs."""
    found = _guard(lambda: getaddresses([text]), None)
    if found is None:
        found = [("", addr) for addr in _BARE_ADDRESS_RE.findall(text)]
    return found


def _clean_address(addr: str) -> str:
    addr = addr.strip().strip("<>").strip().lower()
    # Group syntax leftovers ("undisclosed-recipients:") and fragments are not addresses.
    if not addr or addr.endswith(":") or re.search(r"[\s<>,;]", addr):
        return ""
    return addr


def _decode_words(value: str, what: str, defects: list[str]) -> str:
    """Our own RFC 2047 decoder for when the policy's fails or swallows an unknown charset."""
    out: list[str] = []
    last = 0
    for match in _ENCODED_WORD_RE.finditer(value):
        between = value[last : match.start()]
        if not (out and between.strip() == ""):  # whitespace between two encoded words is dropped
            out.append(between)
        out.append(_decode_word(match, what, defects))
        last = match.end()
    out.append(value[last:])
    return "".join(out)


def _decode_word(match: re.Match[str], what: str, defects: list[str]) -> str:
    charset, encoding, payload = match.group(1).split("*")[0], match.group(2).upper(), match.group(3)
    try:
        if encoding == "B":
            data = binascii.a2b_base64(payload.encode("ascii") + b"=" * (-len(payload) % 4))
        else:
            data = binascii.a2b_qp(payload.encode("ascii", "surrogateescape"), header=True)
    except (binascii.Error, ValueError):
        defects.append(f"{what}: undecodable encoded-word kept as is")
        return match.group(0)
    return decode_bytes(data, charset, what, defects)


# ---------------------------------------------------------------------------------------------
# Attachments


def _clean_filename(name: str) -> str:
    """A display name only: no directories, no control characters, bounded length."""
    name = _repair_8bit(name)
    name = re.split(r"[/\\]", name)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch) not in ("Cc", "Cf", "Zl", "Zp"))
    name = " ".join(name.split()).strip(" .")
    if name in ("", ".", ".."):
        return ""
    if len(name) > _MAX_FILENAME:
        _stem, dot, ext = name.rpartition(".")
        ext = ext if dot and len(ext) <= 16 else ""
        name = name[: _MAX_FILENAME - len(ext) - 1] + ("." + ext if ext else "")
    return name


def _finish_attachments(pending: list[_Pending], html: str | None) -> tuple[ParsedAttachment, ...]:
    referenced = {unquote(ref).strip().lower() for ref in _CID_REF_RE.findall(html or "")}
    sources = set(_SRC_RE.findall(html or "")) if any(item.location for item in pending) else set()
    result = []
    for index, item in enumerate(pending, start=1):
        name = item.filename or f"attachment-{index}{_extension(item.content_type)}"
        by_cid = item.content_id is not None and (item.content_id.lower() in referenced or item.inline_hint)
        inline = by_cid or (item.location is not None and item.location in sources)
        result.append(ParsedAttachment(name, item.content_type, item.content, item.content_id, inline))
    return tuple(result)


def _extension(content_type: str) -> str:
    if content_type in _EXTENSIONS:
        return _EXTENSIONS[content_type]
    guessed = _guard(lambda: mimetypes.guess_extension(content_type, strict=False), None)
    return guessed or (".txt" if content_type.startswith("text/") else ".bin")


# ---------------------------------------------------------------------------------------------
# Delivery status fields


def _field_blocks(text: str) -> list[list[tuple[str, str]]]:
    """Parse "Name: value" blocks separated by blank lines (RFC 3464 layout), folding included."""
    blocks: list[list[tuple[str, str]]] = [[]]
    for line in _LINEBREAK_RE.split(text):
        if not line.strip():
            if blocks[-1]:
                blocks.append([])
        elif line[0] in " \t" and blocks[-1]:
            name, value = blocks[-1][-1]
            blocks[-1][-1] = (name, value + " " + line.strip())
        elif ":" in line:
            name, _, value = line.partition(":")
            if re.fullmatch(r"[A-Za-z0-9-]+", name.strip()):
                blocks[-1].append((name.strip().lower(), value.strip()))
    return [b for b in blocks if b]


def _recipient_blocks(blocks: list[list[tuple[str, str]]]) -> list[list[tuple[str, str]]]:
    """Per-recipient field groups; a block holding several recipients (no blank lines) is split."""
    result: list[list[tuple[str, str]]] = []
    for block in blocks:
        group: list[tuple[str, str]] = []
        for name, value in block:
            if name in ("final-recipient", "original-recipient") and any(n == name for n, _ in group):
                result.append(group)
                group = []
            group.append((name, value))
        if any(n in ("final-recipient", "original-recipient") for n, _ in group):
            result.append(group)
    return result


def _recipient(block: list[tuple[str, str]]) -> tuple[str, str, str, str]:
    """(address, action, status, diagnostic) of one recipient block."""
    fields: dict[str, str] = {}
    for name, value in block:
        fields.setdefault(name, " ".join(value.split()))
    address = fields.get("final-recipient") or fields.get("original-recipient") or ""
    diagnostic = _DSN_TYPE_PREFIX_RE.sub("", fields.get("diagnostic-code", ""))
    status = _STATUS_RE.search(fields.get("status", "")) or _STATUS_RE.search(diagnostic)
    return (
        _clean_address(_DSN_TYPE_PREFIX_RE.sub("", address)),
        fields.get("action", "").lower(),
        status.group(1) if status else "",
        diagnostic,
    )


# ---------------------------------------------------------------------------------------------
# Last resort


def _unparseable(raw: bytes, reason: str) -> ParsedMessage:
    return ParsedMessage(
        message_id=f"{hashlib.sha256(raw).hexdigest()[:32]}@synthesised.invalid",
        in_reply_to=(),
        references=(),
        subject="",
        from_address="",
        from_name="",
        from_header="",
        to=(),
        cc=(),
        reply_to=(),
        to_header="",
        cc_header="",
        date=None,
        text=_LINEBREAK_RE.sub("\n", best_effort(raw)),
        html=None,
        attachments=(),
        defects=(reason,),
        message_id_synthesised=True,
    )
