"""Files uuencoded into a text body ("begin 644 name" ... "end"), as old mailers and scripts send them:
cut out of the text and kept as attachments. A block that does not decode stays text."""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass

_BEGIN_RE = re.compile(r"^begin [0-7]{3,4} ([^\n]+?)[ \t]*$", re.M)
_MAX_LINE = 100  # uuencoded lines are at most 61 characters; longer ones mean it is not a block


@dataclass(frozen=True)
class UuFile:
    name: str
    content: bytes


def extract_uuencoded(text: str) -> tuple[str, tuple[UuFile, ...]]:
    """(the text without its uuencoded blocks, the files they held)."""
    if "begin " not in text:
        return text, ()
    files: list[UuFile] = []
    kept: list[str] = []
    position = 0
    for match in _BEGIN_RE.finditer(text):
        if match.start() < position:
            continue  # inside a block already taken
        decoded = _decode_block(text, match.end() + 1)
        if decoded is None:
            continue
        content, block_end = decoded
        kept.append(text[position : match.start()])
        files.append(UuFile(match.group(1).strip(), content))
        position = block_end
    if not files:
        return text, ()
    kept.append(text[position:])
    return "".join(kept), tuple(files)


def _decode_block(text: str, start: int) -> tuple[bytes, int] | None:
    """(content, offset after the "end" line) of the block whose data starts at `start`, or None."""
    chunks: list[bytes] = []
    position = start
    while position < len(text):
        newline = text.find("\n", position)
        end = len(text) if newline < 0 else newline
        line = text[position:end].rstrip("\r")
        position = end + 1
        if line.strip() == "end":
            return b"".join(chunks), min(position, len(text))
        if len(line) > _MAX_LINE or not line.isascii():
            return None
        chunk = _decode_line(line)
        if chunk is None:
            return None
        chunks.append(chunk)
    return None  # no "end": not a block


def _decode_line(line: str) -> bytes | None:
    if not line or line == "`":
        return b""
    try:
        return binascii.a2b_uu(line)
    except binascii.Error:
        # Some encoders pad lines with garbage past the length byte (as the stdlib uu module allows).
        length = (((ord(line[0]) - 32) & 63) * 4 + 5) // 3
        try:
            return binascii.a2b_uu(line[:length])
        except binascii.Error:
            return None
