"""GatewaySMTP: aiosmtpd 1.4.6's SMTP with our DATA reader, connection gate and timeouts.

Why a subclass: aiosmtpd 1.4.6 reads DATA with `StreamReader.readuntil(b"\\r\\n")` and keeps every
fragment of an over-long line in a list, so a 400 MiB line without CRLF is buffered whole whatever
SIZE says, and any line over 1 000 octets ends in a permanent `500` (the sender's mail bounces).
`smtp_DATA` below replaces only that reader; everything else (commands, STARTTLS, AUTH, the
handler hooks) is aiosmtpd's. Re-check it when upgrading aiosmtpd: it reads the private
`_reader`, `_timeout_handle` and `_handle_hooks` exactly as aiosmtpd's own code does.

The DATA rules and the reader itself are in gateway.smtp.data: any line length, bare LF kept,
only CRLF.CRLF ends DATA, memory bounded by SIZE (past it: `552 5.3.4` after the final dot).

`_getaddr` (the path of MAIL FROM and RCPT TO) takes a shortcut for the plain `<local@domain>`:
aiosmtpd 1.4.6 declares a typing.Protocol class inside it on every call (an ABCMeta class creation)
and parses with the email package's header parser; the two were about half of the listener's
own time per message under load (py-spy of `python -m bench sustained`, GIL samples).
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any, AnyStr

from aiosmtpd.smtp import MISSING, SMTP, syntax

from gateway.smtp.data import DataReader, read_data
from gateway.smtp.limits import ConnectionGate, SessionTimeouts

log = logging.getLogger(__name__)

SIZE_EXCEEDED = "552 5.3.4 Message size exceeds fixed maximum message size"
# The StreamReader's limit: the most one read during DATA hands over, and half of what one
# connection buffers before its socket is paused.
READ_PIECE_BYTES = 64 * 1024
# A path that aiosmtpd's _getaddr would read as exactly this address and parameters: a dot-atom
# local part, a domain of letters, digits and hyphens, optional blanks, then the parameters (not a
# comment, which the email package would drop). Anything else goes the library's way.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_PATH_RE = re.compile(
    rf"[ \t]*<({_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>[ \t]*((?:[^ \t(].*)?)", re.DOTALL
)
# Re-arm the idle timer at most this often while DATA bytes keep coming (a timer per line is waste).
_TIMER_REFRESH_SECONDS = 1.0


class GatewaySMTP(SMTP):
    """aiosmtpd's SMTP with gateway.smtp.data's DATA reader, enhanced codes on size refusals, our timeouts."""

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

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's, with the shortcut for a plain path (module docstring); the same results
        (tests/test_smtp_getaddr.py compares them)."""
        plain = _PLAIN_PATH_RE.fullmatch(arg)
        if plain is None:
            return super()._getaddr(arg)
        address, parameters = plain.group(1), plain.group(2)
        if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, parameters

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
        loop = asyncio.get_running_loop()
        timer_armed_at = loop.time()

        def progress() -> None:
            nonlocal timer_armed_at
            if loop.time() - timer_armed_at > _TIMER_REFRESH_SECONDS:
                # The idle timeout is about silence, not about how long a big message takes.
                timer_armed_at = loop.time()
                self._reset_timeout()

        try:
            await read_data(self._reader, reader, progress)
        except asyncio.CancelledError:
            log.debug("connection lost during DATA", extra={"peer": self.peer_ip})
            self._writer.close()
            raise
