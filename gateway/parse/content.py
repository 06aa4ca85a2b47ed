"""A part's content: transfer encoding undone (base64, quoted-printable, uuencode) and text decoded.

Damaged base64 is decoded as far as it goes and recorded; nothing here raises on bad input.
"""

from __future__ import annotations

import binascii
import re
from email.message import Message

from gateway.parse.charsets import decode_bytes
from gateway.parse.parts import LINEBREAK_RE, guard, param, raw_payload, transfer_encoding
from gateway.parse.text import unflow

_META_CHARSET_RE = re.compile(rb"""<meta[^>]{0,200}?charset\s*=\s*["']?([\w.:-]+)""", re.I)
_STRAY_B64_RE = re.compile(rb"[^A-Za-z0-9+/=\r\n\t ]")
_B64_RE = re.compile(rb"[A-Za-z0-9+/=\r\n\t ]+")
_PADDED_CHUNK_RE = re.compile(rb"[^=]+=*")  # one base64 encoding, up to and with its padding


def text_of(part: Message, ctype: str, defects: list[str]) -> str:
    """Decoded text of a text/* part (or of a multipart we could not split), read as `ctype`."""
    data = payload_bytes(part, ctype, defects)
    charset = guard(lambda: part.get_content_charset(), None)
    if not charset and ctype == "text/html":
        sniffed = _META_CHARSET_RE.search(data[:4096])
        charset = sniffed.group(1).decode("ascii", "replace") if sniffed else None
    text = decode_bytes(data, charset, ctype, defects)
    text = LINEBREAK_RE.sub("\n", text)
    if ctype == "text/plain" and param(part, "format").lower() == "flowed":
        text = unflow(text, param(part, "delsp").lower() == "yes")
    return text


def payload_bytes(part: Message, ctype: str, defects: list[str]) -> bytes:
    """The part's content with its transfer encoding undone."""
    encoding = transfer_encoding(part)
    payload = getattr(part, "_payload", None)
    if encoding == "base64" and isinstance(payload, str) and payload.isascii():
        return decode_base64(payload, ctype, defects)  # binascii reads ASCII str directly: no bytes copy
    data = raw_payload(part)
    if encoding == "base64":
        return decode_base64(data, ctype, defects)
    if encoding == "quoted-printable":
        return binascii.a2b_qp(data)
    if encoding == "uuencode":
        decoded = guard(lambda: part.get_payload(decode=True), None)
        if isinstance(decoded, bytes):
            return decoded
        defects.append(f"{ctype}: uuencoded body not decodable; kept as is")
    return data


def decode_base64(data: bytes | str, ctype: str, defects: list[str]) -> bytes:
    try:
        # Non-strict mode skips line breaks and stray characters without copying line by line.
        decoded = binascii.a2b_base64(data)
    except (binascii.Error, ValueError) as exc:
        defects.append(f"{ctype}: damaged base64 ({exc}); decoded best effort")
        return _decode_damaged(data)
    if not _all_read(data, decoded):
        decoded += _account_for_skipped(data, ctype, defects)
    return decoded


def _all_read(data: bytes | str, decoded: bytes) -> bool:
    """Whether every base64 character was decoded: non-strict mode silently skips stray characters
    and stops at the padding. A few count() passes, not a regex over a large attachment; spaces
    and tabs (rare in base64 bodies) are counted only when line breaks and padding do not add up."""
    expected = (4 * len(decoded) + 2) // 3
    unread = len(data)
    for chars in (("\r", "\n", "="), (" ", "\t")):
        if isinstance(data, str):
            unread -= sum(data.count(ch) for ch in chars)
        else:
            unread -= sum(data.count(ch.encode()) for ch in chars)
        if unread == expected:
            return True
    return False


def _account_for_skipped(data: bytes | str, ctype: str, defects: list[str]) -> bytes:
    """Record what the decoder skipped; base64 behind the padding (encoders that concatenate
    padded chunks) is decoded on, anything else there is dropped and recorded."""
    raw = data.encode("ascii", "surrogateescape") if isinstance(data, str) else data
    pad = raw.find(b"=")
    head, tail = (raw, b"") if pad < 0 else (raw[:pad], raw[pad:].lstrip(b"= \t\r\n"))
    stray = len(_STRAY_B64_RE.findall(head))
    if stray:
        defects.append(f"{ctype}: {stray} characters outside the base64 alphabet skipped")
    if not tail:
        return b""
    if _B64_RE.fullmatch(tail):
        defects.append(f"{ctype}: base64 continues after its padding (concatenated encodings); decoded on")
        return b"".join(_decode_chunk(chunk) for chunk in _PADDED_CHUNK_RE.findall(tail))  # a loop: no recursion
    junk = len(re.sub(rb"\s", b"", tail))
    defects.append(f"{ctype}: {junk} characters after the base64 padding are not base64; dropped")
    return b""


def _decode_chunk(chunk: bytes) -> bytes:
    try:
        return binascii.a2b_base64(chunk)
    except (binascii.Error, ValueError):
        return _decode_damaged(chunk)


def _decode_damaged(data: bytes | str) -> bytes:
    if isinstance(data, str):
        data = data.encode("ascii", "surrogateescape")
    alphabet = re.sub(rb"[^A-Za-z0-9+/]", b"", data)
    alphabet = alphabet[: len(alphabet) - len(alphabet) % 4 if len(alphabet) % 4 == 1 else len(alphabet)]
    return binascii.a2b_base64(alphabet + b"=" * (-len(alphabet) % 4))
