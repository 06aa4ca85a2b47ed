"""Reading SMTP DATA from a StreamReader: framing, dot-unstuffing, SIZE; no protocol, no replies.

The rules (RFC 5321 §4.5.2 and §4.1.1.4; Postfix's `smtpd_forbid_bare_newline = normalize`):
- only CRLF "." CRLF ends DATA (the CRLF may be the one that ended the DATA command); a bare LF
  is data, so `\\n.\\n` or `\\r\\n.\\n` cannot end it (no SMTP smuggling);
- a dot is removed after every CRLF (dot-unstuffing) and nothing else is changed: lines of any
  length and bare LFs are kept byte-exact;
- at most `size_limit` bytes are kept; past it the rest is read and dropped as it arrives, so
  memory is bounded by the limit plus one read, whatever the line structure.

The terminator is found by the StreamReader's own `readuntil(CRLF.CRLF)` (C-speed scanning of
chunks up to its limit) and nothing after it is ever read: pipelined commands that follow the
final dot stay in the stream for aiosmtpd's command loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

END_OF_DATA = b"\r\n.\r\n"
_STUFFED = b"\r\n."
# DATA starts at a line start, as if after a CRLF: that CRLF ended the DATA command line.
_LINE_START = b"\r\n"


class DataReader:
    """The message as it is read: unstuffed content (up to the size limit), size, whether it ended."""

    def __init__(self, size_limit: int | None) -> None:
        self._size_limit = size_limit
        self.content = bytearray()
        self.size = 0  # bytes after unstuffing, also those dropped past the limit
        self.too_big = False
        self.finished = False
        self._tail = _LINE_START  # the last two raw bytes fed: a CRLF "." may straddle two chunks

    def feed(self, chunk: bytes, *, last: bool = False) -> None:
        """Raw DATA bytes in order, any split; `last`: the chunk ends with the final "." CRLF."""
        if last:
            chunk = chunk[:-3]  # the "." CRLF; the CRLF before it ends the message's last line
            self.finished = True
        if not chunk:
            return
        text = self._tail + chunk
        # The tail's two bytes can never lose a dot (a removed dot follows a CRLF), so cut them off.
        unstuffed = text.replace(_STUFFED, b"\r\n")[len(self._tail) :]
        self._tail = text[-2:]
        self.size += len(unstuffed)
        if self.too_big:
            return
        if self._size_limit and self.size > self._size_limit:
            self.too_big = True
            self.content = bytearray()  # give the memory back now, not after the final dot
            return
        self.content += unstuffed


def _partial_end(window: bytes) -> int:
    """Length of the longest end of `window` that could begin END_OF_DATA (0: none)."""
    for length in range(len(END_OF_DATA) - 1, 0, -1):
        if window.endswith(END_OF_DATA[:length]):
            return length
    return 0


async def read_data(stream: asyncio.StreamReader, reader: DataReader, progress: Callable[[], None]) -> None:
    """Feed `reader` from `stream` up to and including the final dot; returns early on EOF.

    `progress` is called after every read (the idle timer). The stream's limit bounds one read.
    """
    # First, DATA may end right away or straddle the virtual CRLF of the command line: read only
    # as many bytes as could complete the terminator, until no end of what was read could begin one.
    before, held = _LINE_START, b""
    try:
        while True:
            window = before + held
            if window.endswith(END_OF_DATA):
                reader.feed(held, last=True)
                return
            partial = _partial_end(window)
            settled = held[: len(held) - min(partial, len(held))]
            if settled:
                reader.feed(settled)
                before, held = (before + settled)[-4:], held[len(settled) :]
            if partial == 0:
                break
            held += await stream.readexactly(len(END_OF_DATA) - partial)
            progress()
        # From here no terminator can straddle what was fed and what is still in the stream.
        while True:
            try:
                chunk = await stream.readuntil(END_OF_DATA)
            except asyncio.LimitOverrunError as overrun:
                # No terminator in the first `consumed` bytes (readuntil kept the last four back).
                reader.feed(await stream.read(overrun.consumed))
                progress()
                continue
            reader.feed(chunk, last=True)
            return
    except asyncio.IncompleteReadError:
        return  # EOF before the final dot: nothing is acknowledged
