"""The aiosmtpd handler: recipient policy and cap, DATA -> intake; the AUTH check for staff submission.

The 250 after DATA is sent only once the journal holds the bytes (Intake.accept); when the journal
cannot be written the sender gets `451 4.3.0` and its MTA retries later.
"""

from __future__ import annotations

import hmac
import logging
from email.utils import formatdate
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from gateway.addresses import ReplyAddresses
from gateway.intake import Intake, JournalUnavailable
from gateway.settings import Settings

log = logging.getLogger(__name__)


class SmtpHandler:
    def __init__(self, *, settings: Settings, intake: Intake, addresses: ReplyAddresses) -> None:
        self._settings = settings
        self._intake = intake
        self._addresses = addresses

    def accepts(self, address: str) -> bool:
        return self._addresses.is_ours(address)  # support, its plus-addresses, postmaster (gateway.addresses)

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        # aiosmtpd reads pipelined commands in order; it just does not say so.
        return [*responses[:-1], "250-PIPELINING", "250-ENHANCEDSTATUSCODES", responses[-1]]

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        # Postfix's smtpd_recipient_limit: a 4xx, so an honest MTA sends the rest in another transaction.
        if len(envelope.rcpt_tos) >= self._settings.smtp_max_recipients:
            return "452 4.5.3 Too many recipients"
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
            "auth_login": session.auth_data if session.authenticated else None,
            "received": (
                f"from {session.host_name} ([{session.peer[0] if session.peer else '?'}]) "
                f"by {self._settings.smtp_hostname} with ESMTP; {formatdate(usegmt=True)}"
            ),
        }
        try:
            receipt = await self._intake.accept(raw, source="smtp", meta=meta)
        except JournalUnavailable:
            log.warning("journal unavailable: 451 to the sender", extra={"peer": meta["peer"]})
            return "451 4.3.0 Temporary storage failure, please try again later"
        log.debug(
            "message journaled",
            extra={"journal_id": receipt.journal_id, "peer": meta["peer"], "size": len(raw)},
        )
        return f"250 2.0.0 Ok: queued as {receipt.journal_id}"


class Authenticator:
    """AUTH PLAIN/LOGIN against the configured logins (staff submitting replies)."""

    def __init__(self, users: dict[str, str]) -> None:
        self._users = {login.lower(): password for login, password in users.items()}

    def __call__(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: object
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode("utf-8", "replace").lower()
        expected = self._users.get(login)
        given = auth_data.password.decode("utf-8", "replace")
        success = expected is not None and hmac.compare_digest(expected.encode(), given.encode())
        return AuthResult(success=success, handled=False, auth_data=login if success else None)
