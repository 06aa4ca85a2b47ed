"""GatewaySMTP: aiosmtpd 1.4.6's SMTP with our DATA reader, connection gate and timeouts.

Why a subclass: aiosmtpd 1.4.6 reads DATA with `StreamReader.readuntil(b"\\r\\n")` and keeps every
fragment of an over-long line in a list, so a 400 MiB line without CRLF is buffered whole whatever
SIZE says, and any line over 1 000 octets ends in a permanent `500` (the sender's mail bounces).
`smtp_DATA` below replaces only that reader; everything else (commands, STARTTLS, AUTH, the
handler hooks) is aiosmtpd's. Re-check it when upgrading aiosmtpd: it reads the private
`_reader`, `_timeout_handle` and `_handle_hooks` exactly as aiosmtpd's own code does.

The DATA rules (RFC 5321 §4.5.2 and §4.1.1.4, Postfix's `smtpd_forbid_bare_newline = normalize`):
- only CRLF "." CRLF ends DATA; a bare LF is data, so `\\n.\\n` or `\\r\\n.\\n` cannot end it
  (no SMTP smuggling);
- a leading dot is removed from every line that follows a CRLF (dot-unstuffing), nothing else is
  changed: lines of any length and bare LFs are kept byte-exact;
- at most SIZE bytes are kept; past it the rest is read and thrown away as it arrives and the
  transaction gets `552 5.3.4` after the final dot, so memory is bounded by SIZE plus one read.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, AnyStr

from aiosmtpd.smtp import MISSING, SMTP, syntax

from gateway.smtp.limits import ConnectionGate, SessionTimeouts

log = logging.getLogger(__name__)

SIZE_EXCEEDED = "552 5.3.4 Message size exceeds fixed maximum message size"
# One read from the socket buffer during DATA, and the StreamReader's limit: a longer line is
# handed over in pieces of about this size instead of being refused.
READ_PIECE_BYTES = 64 * 1024
# Re-arm the idle timer at most this often while DATA bytes keep coming (a timer per line is waste).
_TIMER_REFRESH_SECONDS = 1.0


class DataReader:
    """The DATA state machine over the pieces StreamReader hands out (each ends at LF or is a fragment).

    Kept apart from the protocol so that it can be fed any split of the same bytes in a test.
    """

    def __init__(self, size_limit: int | None) -> None:
        self._size_limit = size_limit
        self.content = bytearray()
        self.size = 0  # bytes after unstuffing, also those thrown away past the limit
        self.too_big = False
        self.finished = False
        self._at_line_start = True  # the previous piece ended with CRLF (or DATA just began)
        self._after_cr = False  # the previous piece ended with CR (a CRLF may straddle two pieces)
        self._held = b""  # "." or ".\r" at a line start, not yet known to be the end or a stuffing dot

    def feed(self, piece: bytes) -> None:
        """One piece: a line up to and including LF, or a fragment without LF."""
        if self._held:
            piece, self._held = self._held + piece, b""
        if not piece:
            return
        if self._at_line_start and piece in (b".", b".\r"):
            self._held = piece  # could still become the final ".\r\n": wait for the next piece
            return
        if self._at_line_start and piece[:1] == b".":
            if piece == b".\r\n":
                self.finished = True
                return
            piece = piece[1:]
        ends_line = piece.endswith(b"\n")
        crlf = ends_line and (piece.endswith(b"\r\n") or (piece == b"\n" and self._after_cr))
        self._at_line_start = crlf
        self._after_cr = piece.endswith(b"\r")
        self.size += len(piece)
        if self.too_big:
            return
        if self._size_limit and self.size > self._size_limit:
            self.too_big = True
            self.content = bytearray()  # give the memory back now, not after the final dot
            return
        self.content += piece


class GatewaySMTP(SMTP):
    """aiosmtpd's SMTP with the DATA reader above, enhanced codes on size refusals and our timeouts."""

    # aiosmtpd uses this as the StreamReader's limit (and as a DATA line limit we no longer apply):
    # it bounds what one connection buffers before the socket is paused (twice this).
    line_length_limit = READ_PIECE_BYTES

    def __init__(
        self, handler: Any, *, gate: ConnectionGate, timeouts: SessionTimeouts, peer_ip: str, **options: Any
    ) -> None:
        super().__init__(handler, timeout=timeouts.command_seconds, **options)
        self._gate = gate
        self._timeouts = timeouts
        self.peer_ip = peer_ip
        self._greeted = False
        self._in_data = False  # reading or journaling a message: never evicted then
        self._last_activity = self.loop.time()
        gate.track(self)

    # --- timeouts ---------------------------------------------------------------------------------

    def _reset_timeout(self, duration: float | None = None) -> None:
        if duration is None:
            if not self._greeted:
                # aiosmtpd arms the timer first when the connection is made: the greeting timeout.
                self._greeted = True
                duration = self._timeouts.first_command(self._gate.stressed)
            else:
                duration = self._timeouts.current(self._gate.stressed)
        self._last_activity = self.loop.time()
        super()._reset_timeout(duration)

    def idle_since(self) -> float | None:
        return None if self._in_data else self._last_activity

    def evict(self) -> None:
        if self.transport is not None:
            assert isinstance(self.transport, asyncio.WriteTransport)
            self.transport.write(f"421 4.4.2 {self.hostname} Idle too long, closing connection\r\n".encode())
            self.transport.close()

    def _timeout_cb(self) -> None:
        self._gate.note_timeout(self.peer_ip)
        super()._timeout_cb()

    def connection_lost(self, error: Exception | None) -> None:
        self._gate.forget(self)
        super().connection_lost(error)

    async def push(self, status: AnyStr) -> None:
        text = status.decode() if isinstance(status, bytes) else status
        if text.startswith("552 Error"):  # aiosmtpd's MAIL FROM SIZE= refusal, without the enhanced code
            text = SIZE_EXCEEDED
        await super().push(text)

    # --- DATA -------------------------------------------------------------------------------------

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        self._in_data = True
        try:
            await self._receive(DataReader(self.data_size_limit))
        finally:
            self._in_data = False

    async def _receive(self, reader: DataReader) -> None:
        assert self.envelope is not None
        await self._read_data(reader)
        if not reader.finished:  # the connection went away mid-DATA
            return
        if reader.too_big:
            log.info("DATA over SIZE refused", extra={"peer": self.peer_ip, "size": reader.size})
            self._set_post_data_state()
            await self.push(SIZE_EXCEEDED)
            return
        original_content = bytes(reader.content)
        del reader
        self.envelope.content = original_content
        self.envelope.original_content = original_content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)

    async def _read_data(self, reader: DataReader) -> None:
        stream = self._reader
        loop = asyncio.get_running_loop()
        timer_armed_at = loop.time()
        while self.transport is not None and not reader.finished:
            try:
                piece = await stream.readuntil(b"\n")
            except asyncio.LimitOverrunError as overrun:
                # No LF within the limit: hand over what was scanned (it holds no LF) and go on.
                piece = await stream.read(overrun.consumed)
            except asyncio.IncompleteReadError:
                return  # EOF before the final dot: nothing is acknowledged
            except asyncio.CancelledError:
                log.debug("connection lost during DATA", extra={"peer": self.peer_ip})
                self._writer.close()
                raise
            reader.feed(piece)
            if loop.time() - timer_armed_at > _TIMER_REFRESH_SECONDS:
                # The idle timeout is about silence, not about how long a big message takes.
                timer_armed_at = loop.time()
                self._reset_timeout()
