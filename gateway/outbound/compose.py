"""The bytes of an outgoing message: our header block, the MIME body, attachments by reference.

Headers are written here as bytes, not through `email.headerregistry` (whose parsing and refolding
cost more than everything else the pipeline did for a message) nor compat32's Header objects
(which turn an internationalised address into an encoded-word, which RFC 2047 forbids in an
address: with SMTPUTF8 it must be written as UTF-8, RFC 6532). The MIME body below the headers is
built with the stdlib's compat32 classes, quoted-printable UTF-8 for text.

Attachments are not copied into the outbox row: each one is a placeholder part that names the
blob (by SHA-256) the attachment is already stored as; `expand_attachments` puts the base64
content in at send time. The placeholder's line cannot occur anywhere else: text parts are
quoted-printable (where "=" is "=3D"), base64 has no "!", and no header line starts with "!".
"""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.charset import QP, Charset
from email.header import Header
from email.message import Message
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.nonmultipart import MIMENonMultipart
from email.policy import compat32
from email.utils import formataddr

_UTF8_QP = Charset("utf-8")
# Quoted-printable keeps Polish text (and the [#NUMBER] tag) readable in the raw mail.
_UTF8_QP.body_encoding = _UTF8_QP.header_encoding = QP
_WIRE = compat32.clone(linesep="\r\n", max_line_length=78)
_FOLD_AT = 78  # RFC 5322 §2.1.1: lines SHOULD be at most 78 characters

_PLACEHOLDER_PREFIX = b"!gateway-blob sha256="
_PLACEHOLDER = re.compile(rb"^!gateway-blob sha256=([0-9a-f]{64})\r\n", re.MULTILINE)


@dataclass(frozen=True)
class AttachmentRef:
    """An attachment of an outgoing message, by the blob it is stored as."""

    filename: str
    content_type: str
    sha256: str
    size: int


class MissingAttachment(LookupError):
    """A referenced blob is gone (erased, or a store that lost it): the message cannot be sent as written."""


def new_message_id(domain: str) -> str:
    """A Message-ID (without brackets) nobody can guess or predict: 128 bits from `secrets`."""
    return f"{secrets.token_hex(16)}@{domain}"


def address_header(name: str, address: str) -> str:
    """`Name <address>`: the display name RFC 2047-encoded when it needs it, the address as it is
    (UTF-8 for an internationalised address: only an SMTPUTF8 relay can take that message anyway)."""
    if address.isascii():
        return formataddr((name, address), "utf-8")
    if not name:
        return address
    shown_name = formataddr((name, "x@x"), "utf-8").rsplit(" <", 1)[0]
    return f"{shown_name} <{address}>"


def encoded_text(value: str) -> str:
    """An unstructured header value (Subject): ASCII words as they are, the rest as encoded-words."""
    if value.isascii():
        return value
    ascii_prefix, rest = "", value
    while rest and rest.split(" ", 1)[0].isascii() and " " in rest:
        word, rest = rest.split(" ", 1)
        ascii_prefix += word + " "
    header = Header(ascii_prefix, "us-ascii", maxlinelen=76, header_name="Subject")
    header.append(rest, _UTF8_QP)
    return header.encode(linesep="\r\n")


def _header_line(name: str, value: str) -> str:
    line = f"{name}: {value}"
    if len(line) <= _FOLD_AT or "\r\n" in value:
        return line + "\r\n"
    # Fold at spaces (never inside an encoded-word, which has none), greedily.
    folded, current = [], ""
    for word in line.split(" "):
        if current and len(current) + 1 + len(word) > _FOLD_AT:
            folded.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    folded.append(current)
    return "\r\n ".join(folded) + "\r\n"


def compose(
    *, headers: Sequence[tuple[str, str]], text: str, html: str | None, attachments: Sequence[AttachmentRef]
) -> bytes:
    """The message as it goes on the wire (CRLF), attachments as placeholders."""
    head = "".join(_header_line(name, value) for name, value in headers)
    return head.encode("utf-8") + _body(text, html, attachments).as_bytes(policy=_WIRE)


def _text_part(text: str, subtype: str) -> Message:
    part = MIMENonMultipart("text", subtype)
    part.set_payload(text, _UTF8_QP)
    return part


def _body(text: str, html: str | None, attachments: Sequence[AttachmentRef]) -> Message:
    body = _text_part(text, "plain")
    if html is not None:
        alternative = MIMEMultipart("alternative")
        alternative.attach(body)
        alternative.attach(_text_part(html, "html"))
        body = alternative
    if not attachments:
        return body
    mixed = MIMEMultipart("mixed")
    mixed.attach(body)
    for attachment in attachments:
        maintype, _, subtype = attachment.content_type.partition("/")
        part = MIMEBase(maintype or "application", subtype or "octet-stream")
        part["Content-Transfer-Encoding"] = "base64"
        part.add_header("Content-Disposition", "attachment", filename=("utf-8", "", attachment.filename))
        part.set_payload((_PLACEHOLDER_PREFIX + attachment.sha256.encode() + b"\n").decode())
        mixed.attach(part)
    return mixed


def referenced_blobs(raw: bytes) -> list[str]:
    """The SHA-256 of every attachment `raw` refers to, in order."""
    if _PLACEHOLDER_PREFIX not in raw:
        return []
    return [match[1].decode() for match in _PLACEHOLDER.finditer(raw)]


def expand_attachments(raw: bytes, fetch: Callable[[str], bytes | None]) -> bytes:
    """`raw` with each placeholder replaced by its blob, base64 in 76-character CRLF lines."""
    if _PLACEHOLDER_PREFIX not in raw:
        return raw  # the common case: no attachments, no copy
    pieces: list[bytes] = []
    last = 0
    for match in _PLACEHOLDER.finditer(raw):
        sha256 = match[1].decode()
        content = fetch(sha256)
        if content is None:
            raise MissingAttachment(f"attachment {sha256} is no longer stored")
        pieces += [raw[last : match.start()], base64.encodebytes(content).replace(b"\n", b"\r\n")]
        last = match.end()
    pieces.append(raw[last:])
    return b"".join(pieces)
