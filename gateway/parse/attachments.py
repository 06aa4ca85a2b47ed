"""Attachments: their bytes, their display names (never paths), inline/cid links, winmail.dat unpacked.

Parts are first collected as `Pending` (names may still be missing, inline flags unknown) and turned
into `ParsedAttachment`s once the HTML body is known.
"""

from __future__ import annotations

import binascii
import mimetypes
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesHeaderParser
from urllib.parse import unquote

from gateway.parse.content import decode_base64, payload_bytes
from gateway.parse.headers import read_header
from gateway.parse.model import ParsedAttachment
from gateway.parse.parts import (
    POLICY,
    content_id,
    declared_filename,
    guard,
    location_name,
    payload_list,
    raw_header,
    repair_8bit,
    transfer_encoding,
)
from gateway.parse.rawspan import body_bytes
from gateway.parse.tnef import TnefContent, TnefError, unpack_tnef
from gateway.parse.walk import Leaf, MimeTree

# For re-serialising embedded messages: source headers are written back as they came (no refolding).
_GEN_POLICY = POLICY.clone(refold_source="none", linesep="\r\n")
_SRC_RE = re.compile(r"""\b(?:src|background)\s*=\s*["']?([^"'\s>]+)""", re.I)
_CID_REF_RE = re.compile(r"""cid:([^"'\s>)]+)""", re.I)
_TNEF_TYPES = frozenset({"application/ms-tnef", "application/vnd.ms-tnef"})
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
_MAX_FILENAME = 200
_NOT_UNPACKED = "parts-not-unpacked"  # the name of the refused entry that stands for parts past a budget
_MAX_DESCRIPTION = 100  # longer descriptions are prose, not names
_HAS_EXTENSION_RE = re.compile(r"\.[A-Za-z0-9]{1,5}$")
_CID_FILENAME_RE = re.compile(r"^[\w][\w\-. ()]*\.[A-Za-z0-9]{2,5}$")
# What Postfix calls a DSN's parts (Content-Description), for MTAs that do not say.
_REPORT_NAMES = {
    "message/delivery-status": "Delivery report.txt",
    "message/global-delivery-status": "Delivery report.txt",
    "message/rfc822": "Undelivered Message.eml",
    "message/global": "Undelivered Message.eml",
    "text/rfc822-headers": "Undelivered Message Headers.txt",
    "message/global-headers": "Undelivered Message Headers.txt",
}
_EMBEDDED_HEAD = 64 * 1024  # where to look for an embedded message's Subject


@dataclass(frozen=True)
class Pending:
    """An attachment before names are generated and inline flags are known."""

    filename: str
    content_type: str
    content: bytes
    content_id: str | None
    inline_hint: bool  # Content-Disposition: inline with a Content-ID inside multipart/related
    location: str | None = None  # Content-Location, which MHTML pages reference instead of cid:


class Collector:
    """Gathers the attachments of one message, and the bodies found inside winmail.dat files."""

    def __init__(self, tree: MimeTree, *, container_budget: int, expired: Callable[[], bool]) -> None:
        self.tree = tree
        self.container_budget = container_budget  # bytes winmail.dat files may still unpack to
        self.expired = expired
        self.defects = tree.defects
        self.pending: list[Pending] = []
        self.tnef_bodies: list[TnefContent] = []
        self.refusals: dict[str, tuple[int, int]] = {}  # why parts were not unpacked -> (parts, bytes unread)

    def refuse(self, reason: str, count: int, *, unread_bytes: int = 0) -> None:
        """Parts not unpacked: one refused entry per reason, not one row per part of a bomb."""
        parts, unread = self.refusals.get(reason, (0, 0))
        self.refusals[reason] = (parts + count, unread + unread_bytes)

    def add(self, leaf: Leaf) -> None:
        part = leaf.part
        refusal = self.tree.refused.get(id(part))
        if refusal is not None:
            self.refuse(refusal.reason, 1)
            return
        ctype = self.tree.effective_type(part)
        name = clean_filename(declared_filename(part) or location_name(part) or "")
        if "\ufffd" in name:
            self.defects.append(f"{ctype}: attachment name {name!r} not fully decodable")
        cid = content_id(part)
        content = self._part_bytes(part, ctype)
        if not name and ctype in ("message/rfc822", "message/global") and not leaf.in_report:
            name = self._embedded_name(content)
        if not name:
            name = _named_by_headers(part, ctype, cid, leaf.in_report)
        if not name and ctype.startswith("text/") and re.search(rb"\S", content) is None:
            return  # an empty unnamed text part (e.g. a blank alternative) is no attachment
        if ctype in _TNEF_TYPES or name.lower() == "winmail.dat":
            unpacked = self._unpack_tnef(content)
            if unpacked is not None:
                self.pending.extend(
                    Pending(clean_filename(f.name), f.content_type, f.content, f.content_id, False)
                    for f in unpacked.files
                )
                self.tnef_bodies.append(unpacked)
                return
        disposition = guard(lambda: part.get_content_disposition(), None)
        hint = leaf.in_related and disposition != "attachment"
        location = raw_header(part, "content-location").strip() or None
        self.pending.append(
            Pending(name, self.tree.content_type(part), content, cid, hint, location if leaf.in_related else None)
        )

    def add_file(self, name: str, content: bytes) -> None:
        """A file found inside a text body (uuencoded)."""
        name = clean_filename(name)
        guessed = mimetypes.guess_type(name, strict=False)[0] if name else None
        self.pending.append(Pending(name, guessed or "application/octet-stream", content, None, False))

    def _part_bytes(self, part: Message, ctype: str) -> bytes:
        """Bytes to store for an attachment; message/* parts are serialised back to RFC 5322."""
        inner = payload_list(part) if ctype.startswith("message/") else None
        if inner is not None:
            return self._embedded_bytes(part, inner, ctype)
        return payload_bytes(part, ctype, self.defects)

    def _embedded_bytes(self, part: Message, inner: list[Message], ctype: str) -> bytes:
        located = body_bytes(self.tree.source, self.tree.msg, part)
        if located is not None:  # the bytes as sent
            encoding = transfer_encoding(part)
            if encoding == "base64":
                return decode_base64(located, ctype, self.defects)
            if encoding == "quoted-printable":
                return binascii.a2b_qp(located)
            return located
        self.defects.append(f"{ctype}: attached message not found in the raw bytes; stored re-serialised")
        chunks = []
        for message in inner:
            try:
                chunks.append(message.as_bytes(policy=_GEN_POLICY))
            except Exception as exc:
                self.defects.append(f"{ctype}: embedded message not re-serialisable ({type(exc).__name__})")
                chunks.append(_as_string_bytes(message))
        data = b"".join(chunks)
        # A message/rfc822 part in base64 breaks RFC 2046, but it happens: the parser then saw only
        # base64 lines as the "message", which we decode back into the real one.
        if transfer_encoding(part) == "base64":
            return decode_base64(data.partition(b"\r\n\r\n")[2] or data, ctype, self.defects)
        return data

    def _embedded_name(self, content: bytes) -> str:
        """ "<subject>.eml", read from the header block only (no copy of a large embedded message)."""
        head = re.split(rb"\r?\n\r?\n", content[:_EMBEDDED_HEAD], maxsplit=1)[0]
        inner = guard(lambda: BytesHeaderParser(policy=POLICY).parsebytes(head), None)
        if inner is None:
            return ""
        subject = read_header("subject", raw_header(inner, "subject"), self.defects)
        # A subject is no path: its slashes are kept visible instead of being cut away.
        title = subject.text.replace("/", "-").replace("\\", "-")
        return clean_filename(title + ".eml") if title else ""

    def _unpack_tnef(self, content: bytes) -> TnefContent | None:
        try:
            unpacked = unpack_tnef(content, max_output=self.container_budget, expired=self.expired)
        except TnefError as exc:
            self.defects.append(f"winmail.dat not unpackable ({exc}); kept as is")
            return None
        self.defects.extend(unpacked.defects)
        self.container_budget -= unpacked.output_bytes
        if unpacked.empty:
            self.defects.append("winmail.dat holds no attachments and no body; kept as is")
            return None
        return unpacked

    def adopt_tnef_bodies(self, text: str, html: str | None) -> tuple[str, str | None]:
        """Use winmail.dat's body where the message has none; keep the rest as files."""
        for content in self.tnef_bodies:
            if content.html:
                if html is None:
                    html = content.html
                else:
                    self.pending.append(Pending("body.html", "text/html", content.html.encode("utf-8"), None, False))
            if content.text:
                if not text.strip():
                    text = content.text
                elif " ".join(content.text.split()) != " ".join(text.split()):
                    self.pending.append(Pending("body.txt", "text/plain", content.text.encode("utf-8"), None, False))
            if content.rtf:
                self.pending.append(Pending("body.rtf", "application/rtf", content.rtf, None, False))
        return text, html

    def finish(self, html: str | None) -> tuple[ParsedAttachment, ...]:
        referenced = {unquote(ref).strip().lower() for ref in _CID_REF_RE.findall(html or "")}
        sources = set(_SRC_RE.findall(html or "")) if any(item.location for item in self.pending) else set()
        result = []
        for index, item in enumerate(self.pending, start=1):
            name = item.filename or f"attachment-{index}{_extension(item.content_type)}"
            by_cid = item.content_id is not None and (item.content_id.lower() in referenced or item.inline_hint)
            inline = by_cid or (item.location is not None and item.location in sources)
            result.append(ParsedAttachment(name, item.content_type, item.content, item.content_id, inline))
        for reason, (count, unread) in self.refusals.items():
            parts = f"{count} MIME part{'s' if count != 1 else ''}" if count else ""
            rest = f"the last {unread} bytes" if unread else ""
            what = f"{' and '.join(filter(None, (parts, rest)))} not unpacked: {reason}"
            self.defects.append(what)
            result.append(ParsedAttachment(_NOT_UNPACKED, "application/octet-stream", b"", refused_reason=what))
        return tuple(result)


def _as_string_bytes(message: Message) -> bytes:
    """The email package's older string serialisation, for a message its generator cannot write."""
    return guard(lambda: str(message).encode("utf-8", "surrogateescape"), b"")


def clean_filename(name: str) -> str:
    """A display name only: no directories, no control characters, bounded length."""
    name = repair_8bit(name)
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


def _named_by_headers(part: Message, ctype: str, cid: str | None, in_report: bool) -> str:
    """A name for a part without a filename: its Content-Description, an inline image's Content-ID
    (image001.jpg@01D7...), or what a DSN's parts are (the report, the returned message)."""
    description = " ".join(raw_header(part, "content-description").split())
    if description and len(description) <= _MAX_DESCRIPTION and not description.startswith("=?"):
        return clean_filename(_with_extension(description, ctype))
    if description.startswith("=?"):
        decoded = read_header("content-description", description, []).text
        if decoded and len(decoded) <= _MAX_DESCRIPTION:
            return clean_filename(_with_extension(decoded, ctype))
    local = (cid or "").partition("@")[0]
    if _CID_FILENAME_RE.match(local):
        return clean_filename(local)
    if in_report:
        default = _REPORT_NAMES.get(ctype)
        if default:
            return default
    return ""


def _with_extension(name: str, ctype: str) -> str:
    return name if _HAS_EXTENSION_RE.search(name) else name + _extension(ctype)


def _extension(content_type: str) -> str:
    if content_type in _EXTENSIONS:
        return _EXTENSIONS[content_type]
    guessed = guard(lambda: mimetypes.guess_extension(content_type, strict=False), None)
    return guessed or (".txt" if content_type.startswith("text/") else ".bin")
