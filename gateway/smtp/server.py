"""start_smtp_server: the listening socket, its connection gate and the per-session options."""

from __future__ import annotations

import asyncio
import ssl

from gateway.addresses import ReplyAddresses
from gateway.intake import Intake
from gateway.settings import Settings
from gateway.smtp.handler import Authenticator, SmtpHandler
from gateway.smtp.limits import (
    ConnectionGate,
    GatedSessions,
    SessionTimeouts,
    raise_open_file_limit,
    sessions_that_fit,
)
from gateway.smtp.reader import GatewaySMTP


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.smtp_tls_cert_file is None or settings.smtp_tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.smtp_tls_cert_file, settings.smtp_tls_key_file)
    return context


async def start_smtp_server(*, settings: Settings, intake: Intake, addresses: ReplyAddresses) -> asyncio.Server:
    max_sessions = sessions_that_fit(settings.smtp_max_connections, raise_open_file_limit())
    handler = SmtpHandler(settings=settings, intake=intake, addresses=addresses)
    tls_context = _tls_context(settings)
    authenticator = Authenticator(settings.smtp_auth_users) if settings.smtp_auth_users else None
    gate = ConnectionGate(
        max_total=max_sessions,
        max_per_ip=settings.smtp_max_connections_per_ip,
        exempt_networks=settings.trusted_relays,
    )
    timeouts = SessionTimeouts(
        greeting_seconds=settings.smtp_greeting_timeout_seconds,
        command_seconds=settings.smtp_timeout_seconds,
        stress_seconds=settings.smtp_stress_timeout_seconds,
    )

    def build_session(peer_ip: str) -> GatewaySMTP:
        return GatewaySMTP(
            handler,
            gate=gate,
            timeouts=timeouts,
            peer_ip=peer_ip,
            data_size_limit=settings.smtp_max_message_bytes,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=settings.smtp_hostname,
            ident="support-mail-gateway",
            tls_context=tls_context,
            authenticator=authenticator,
            auth_require_tls=settings.smtp_auth_require_tls,
            # AUTH is for staff submission; customers' servers deliver without it.
            auth_required=False,
        )

    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: GatedSessions(gate, settings.smtp_hostname, build_session),
        host=settings.smtp_host,
        port=settings.smtp_port,
        # asyncio accepts up to `backlog` connections per loop tick before any of them runs, and on
        # EMFILE (CPython 3.11) logs and schedules a retry once per remaining slot: keep it small.
        backlog=100,
    )
    return server
