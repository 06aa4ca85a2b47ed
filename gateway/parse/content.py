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
        return binascii.a2b_base64(data)
    except (binascii.Error, ValueError) as exc:
        defects.append(f"{ctype}: damaged base64 ({exc}); decoded best effort")
    if isinstance(data, str):
        data = data.encode("ascii", "surrogateescape")
    alphabet = re.sub(rb"[^A-Za-z0-9+/]", b"", data)
    alphabet = alphabet[: len(alphabet) - len(alphabet) % 4 if len(alphabet) % 4 == 1 else len(alphabet)]
    return binascii.a2b_base64(alphabet + b"=" * (-len(alphabet) % 4))
