"""The SMTP listener (aiosmtpd): recipient policy, SIZE, DATA -> intake. SMTP reply strings live here.

The 250 after DATA is sent only once the journal holds the bytes (Intake.accept); when the journal
cannot be written the sender gets `451 4.3.0` and its MTA retries later.
"""

from __future__ import annotations

import asyncio
import logging
from email.utils import formatdate
from typing import Any, AnyStr

from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.intake import Intake, JournalUnavailable
from gateway.settings import Settings
from gateway.tokens import ReplyAddresses

log = logging.getLogger(__name__)

_SIZE_EXCEEDED = "552 5.3.4 Message size exceeds fixed maximum message size"


class GatewaySMTP(SMTP):
    """aiosmtpd's server with RFC 3463 enhanced codes on its built-in size refusals."""

    async def push(self, status: AnyStr) -> None:
        text = status.decode() if isinstance(status, bytes) else status
        if text.startswith("552 Error"):  # "Too much mail data" / "message size exceeds ..."
            text = _SIZE_EXCEEDED
        await super().push(text)


class SmtpHandler:
    def __init__(self, *, settings: Settings, intake: Intake, addresses: ReplyAddresses) -> None:
        self._settings = settings
        self._intake = intake
        self._addresses = addresses

    def accepts(self, address: str) -> bool:
        address = address.lower()
        postmaster = f"postmaster@{self._settings.support_domain}"
        return self._addresses.is_ours(address) or address == postmaster

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        # aiosmtpd reads pipelined commands in order; it just does not say so.
        return [*responses[:-1], "250-PIPELINING", "250-ENHANCEDSTATUSCODES", responses[-1]]

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if not self.accepts(address):
            return f"550 5.1.1 <{address}>: no such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        meta: dict[str, Any] = {
            "mail_from": envelope.mail_from or "",
            "rcpt_tos": list(envelope.rcpt_tos),
            "peer": str(session.peer[0]) if session.peer else "",
            "authenticated": bool(session.authenticated),
            "received": (
                f"from {session.host_name} ([{session.peer[0] if session.peer else '?'}]) "
                f"by {self._settings.smtp_hostname} with ESMTP; {formatdate(usegmt=True)}"
            ),
        }
        try:
            receipt = await self._intake.accept(raw, source="smtp", meta=meta)
        except JournalUnavailable:
            return "451 4.3.0 Temporary storage failure, please try again later"
        return f"250 2.0.0 Ok: queued as {receipt.journal_id}"


async def start_smtp_server(
    *, settings: Settings, intake: Intake, addresses: ReplyAddresses
) -> asyncio.Server:
    handler = SmtpHandler(settings=settings, intake=intake, addresses=addresses)
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: GatewaySMTP(
            handler,
            data_size_limit=settings.smtp_max_message_bytes,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=settings.smtp_hostname,
            ident="support-mail-gateway",
        ),
        host=settings.smtp_host,
        port=settings.smtp_port,
    )
