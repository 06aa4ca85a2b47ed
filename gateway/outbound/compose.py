"""The bytes of an outgoing message: our header block, the MIME body, attachments by reference.

Headers are written here as bytes, not through `email.headerregistry` (whose parsing and refolding
cost more than everything else the pipeline did for a message) nor compat32's Header objects
(which turn an internationalised address into an encoded-word, which RFC 2047 forbids in an
address: with SMTPUTF8 it must be written as UTF-8, RFC 6532). The MIME body is written by hand
too (its shapes are few: text, text + HTML, either + attachments), quoted-printable UTF-8 for text
through binascii's C encoder.

Attachments are not copied into the outbox row: each one is a placeholder part that names the
blob (by SHA-256) the attachment is already stored as; `expand_attachments` puts the base64
content in at send time. The placeholder's line cannot occur anywhere else: text parts are
quoted-printable (where "=" is "=3D"), base64 has no "!", and no header line starts with "!".
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.utils import formataddr
from functools import lru_cache
from urllib.parse import quote

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


# RFC 2047 §4.2 "Q" encoding: what may stand for itself in an encoded-word of a Subject (the set
# the stdlib's quoprimime keeps), a space as "_", every other byte as =XX.
_Q_LITERAL = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/")
_Q_BYTE = [chr(byte) if byte in _Q_LITERAL else f"={byte:02X}" for byte in range(256)]
_Q_BYTE[ord(" ")] = "_"
_WORD_START, _WORD_END = "=?utf-8?q?", "?="
_WORD_MAX = 75  # RFC 2047 §2: an encoded-word is at most 75 characters


@lru_cache(maxsize=4096)  # a subject repeats few distinct characters; the cache spares a join per byte
def _q_encoded(char: str) -> str:
    return "".join(_Q_BYTE[byte] for byte in char.encode("utf-8"))


def encoded_text(value: str, *, header_name: str = "Subject") -> str:
    """An unstructured header value (Subject): leading ASCII words as they are, the rest as UTF-8
    "Q" encoded-words (Polish stays mostly readable), folded between words, a character never
    split across two. Written here: email.header cost a tenth of composing a whole message."""
    if value.isascii():
        return value
    ascii_prefix, rest = "", value
    while rest and " " in rest and rest.split(" ", 1)[0].isascii():
        word, rest = rest.split(" ", 1)
        ascii_prefix += word + " "
    room = _WORD_MAX - len(_WORD_START) - len(_WORD_END)
    # The first encoded-word shares its line with "Subject: " and the ASCII words before it.
    first_room = _FOLD_AT - len(header_name) - 2 - len(ascii_prefix) - len(_WORD_START) - len(_WORD_END)
    words: list[str] = []
    current, budget = "", first_room if first_room >= 12 else room
    if budget == room and ascii_prefix:
        words.append(ascii_prefix.rstrip(" "))  # the ASCII words alone on the first line
        ascii_prefix = ""
    for char in rest:
        encoded = _q_encoded(char)
        if current and len(current) + len(encoded) > budget:
            words.append(_WORD_START + current + _WORD_END)
            current, budget = "", room
        current += encoded
    words.append(_WORD_START + current + _WORD_END)
    return ascii_prefix + "\r\n ".join(words)


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
    head = "".join(_header_line(name, value) for name, value in headers).encode("utf-8")
    body = _text_part(text, "plain")
    if html is not None:
        body = _multipart("alternative", [body, _text_part(html, "html")])
    if attachments:
        body = _multipart("mixed", [body, *(_placeholder_part(attachment) for attachment in attachments)])
    return head + b"MIME-Version: 1.0\r\n" + body


# The MIME body is written by hand: its shapes are few and fixed, and the stdlib's generator
# (pure Python, per character for quoted-printable) cost more than the rest of composing. A part
# is its header lines, a blank line and its content, all CRLF.


def _text_part(text: str, subtype: str) -> bytes:
    # binascii's C quoted-printable: "=" becomes "=3D", trailing blanks and 8-bit bytes =XX, soft
    # breaks keep lines under 77 characters.
    encoded = binascii.b2a_qp(text.encode("utf-8"), quotetabs=False, istext=True, header=False)
    encoded = encoded.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if not encoded.endswith(b"\r\n"):
        encoded += b"\r\n"
    return (
        f'Content-Type: text/{subtype}; charset="utf-8"\r\n'.encode()
        + b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        + encoded
    )


def _multipart(subtype: str, parts: Sequence[bytes]) -> bytes:
    # "=_" never occurs in quoted-printable or base64 text, so the boundary cannot collide.
    boundary = f"=_{secrets.token_hex(12)}".encode()
    pieces = [b"Content-Type: multipart/" + subtype.encode() + b'; boundary="' + boundary + b'"\r\n\r\n']
    for part in parts:
        # Each part ends with CRLF; the CRLF before the next delimiter belongs to the delimiter
        # (RFC 2046 §5.1.1), so it is added, or the part's last line break would be lost.
        pieces += [b"--", boundary, b"\r\n", part, b"\r\n"]
    pieces += [b"--", boundary, b"--\r\n"]
    return b"".join(pieces)


_MIME_TOKEN = re.compile(r"^[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+$")


def _placeholder_part(attachment: AttachmentRef) -> bytes:
    content_type = attachment.content_type.strip().lower()
    if not _MIME_TOKEN.match(content_type):
        content_type = "application/octet-stream"  # a sender's odd type never reaches our headers
    return (
        f"Content-Type: {content_type}\r\nContent-Transfer-Encoding: base64\r\n"
        f"Content-Disposition: attachment; {_filename_parameter(attachment.filename)}\r\n\r\n".encode()
        + _PLACEHOLDER_PREFIX
        + attachment.sha256.encode()
        + b"\r\n"
    )


def _filename_parameter(filename: str) -> str:
    """`filename="…"` for a plain ASCII name, RFC 2231 `filename*=utf-8''…` for anything else."""
    name = " ".join(filename.split()) or "attachment"  # no line breaks in a header
    if name.isascii() and '"' not in name and "\\" not in name and len(name) <= 60:
        return f'filename="{name}"'
    return f"filename*=utf-8''{quote(name, safe='')}"


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
