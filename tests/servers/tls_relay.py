"""A real smarthost for the relay tests: aiosmtpd with a self-signed certificate, STARTTLS or TLS, and AUTH.

It plays the provider's submission server the outbox relays through: it offers STARTTLS
(`mode="starttls"`, as on port 587) or speaks TLS from the first byte (`mode="smtps"`, port 465),
accepts AUTH PLAIN/LOGIN only over TLS and only for its `users`, optionally refuses mail from a
session that did not log in, optionally offers SMTPUTF8, and can offer a STARTTLS whose handshake
always fails (`broken_tls`). For every DATA it records which
connection carried it, whether that connection was encrypted, who had logged in, and the MAIL
options, so a test can see on the wire what the gateway did. The certificate is made at start-up
with the openssl command line (no Python crypto package needed) in a directory the caller gives.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any, Literal

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.servers.threaded import ThreadedServer


@dataclass(frozen=True)
class Delivery:
    connection: int  # 1, 2, ... in the order connections were opened
    encrypted: bool
    login: str | None  # None: the session never authenticated
    mail_from: str
    recipients: tuple[str, ...]
    mail_options: tuple[str, ...]
    raw: bytes = field(repr=False)

    @property
    def message(self) -> Any:
        return message_from_bytes(self.raw, policy=policy.default)


def make_certificate(directory: Path, *, common_name: str = "localhost") -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1: (certificate, key), PEM."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "relay-cert.pem", directory / "relay-key.pem"
    command = "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -addext subjectAltName=DNS:localhost,IP:127.0.0.1"
    subprocess.run(
        [*command.split(), "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={common_name}"],
        check=True,
        capture_output=True,
    )
    return cert, key


class _Handler:
    def __init__(self, relay: TlsRelay) -> None:
        self._relay = relay

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        if self._relay.require_auth and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        transport = server.transport
        encrypted = transport is not None and transport.get_extra_info("ssl_object") is not None
        auth = getattr(session, "auth_data", None)
        login = auth.login.decode() if isinstance(auth, LoginPassword) else None
        delivery = Delivery(
            connection=getattr(server, "connection_number", 0),
            encrypted=encrypted,
            login=login if session.authenticated else None,
            mail_from=str(envelope.mail_from),
            recipients=tuple(str(r) for r in envelope.rcpt_tos),
            mail_options=tuple(envelope.mail_options),
            raw=bytes(envelope.original_content or envelope.content or b""),
        )
        with self._relay._lock:
            self._relay._deliveries.append(delivery)
        return "250 2.0.0 OK: queued"


class TlsRelay(ThreadedServer):
    """`with TlsRelay(tmp_path, users={"gw": "secret"}) as relay:` ... `relay.url(...)`."""

    def __init__(
        self,
        directory: Path,
        *,
        mode: Literal["starttls", "smtps"] = "starttls",
        users: dict[str, str] | None = None,
        require_auth: bool = True,
        smtputf8: bool = False,
        broken_tls: bool = False,
    ) -> None:
        self.mode = mode
        self.users = dict(users or {})
        self.require_auth = require_auth
        self.smtputf8 = smtputf8
        self.broken_tls = broken_tls
        self.cert_file, self.key_file = make_certificate(directory)
        super().__init__(thread_name="tls-relay")
        self._lock = threading.Lock()
        self._deliveries: list[Delivery] = []
        self._refused_logins: list[str] = []
        self._connections = itertools.count(1)
        self.connections_opened = 0

    # --- lifecycle ---------------------------------------------------------------------------

    def _tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(self.cert_file), str(self.key_file))
        if self.broken_tls:
            # Offers STARTTLS but demands a client certificate nobody has, inside a TLS 1.2
            # handshake (where it is checked before the handshake ends): every handshake fails,
            # as with a relay whose TLS setup is broken.
            context.maximum_version = ssl.TLSVersion.TLSv1_2
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(str(self.cert_file))
        return context

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        transport = server.transport
        if transport is None or transport.get_extra_info("ssl_object") is None:
            return AuthResult(success=False, handled=False, message="538 5.7.11 Encryption required")
        if isinstance(auth_data, LoginPassword):
            login, password = auth_data.login.decode(), auth_data.password.decode()
            if self.users.get(login) == password:
                return AuthResult(success=True, auth_data=auth_data)
            with self._lock:
                self._refused_logins.append(login)
        return AuthResult(success=False, handled=False)

    async def _listen(self) -> asyncio.AbstractServer:
        context = self._tls_context()
        handler = _Handler(self)

        def protocol() -> SMTP:
            server = SMTP(
                handler,
                hostname="smarthost.test",
                decode_data=False,
                enable_SMTPUTF8=self.smtputf8,
                tls_context=context if self.mode == "starttls" else None,
                authenticator=self._authenticate,
                # Implicit TLS is invisible to aiosmtpd's own check; the authenticator checks instead.
                auth_require_tls=self.mode == "starttls",
            )
            number = next(self._connections)
            server.connection_number = number  # type: ignore[attr-defined]
            with self._lock:
                self.connections_opened = number
            return server

        ssl_context = context if self.mode == "smtps" else None
        return await self._loop.create_server(protocol, host=self.host, port=0, ssl=ssl_context)

    def url(self, *, scheme: str | None = None, credentials: str = "") -> str:
        scheme = scheme or ("smtps" if self.mode == "smtps" else "smtp+starttls")
        at = f"{credentials}@" if credentials else ""
        return f"{scheme}://{at}{self.host}:{self.port}"

    # --- what arrived ------------------------------------------------------------------------

    @property
    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return list(self._deliveries)

    @property
    def refused_logins(self) -> list[str]:
        with self._lock:
            return list(self._refused_logins)

    async def wait_for(self, predicate: Callable[[TlsRelay], bool], *, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                raise AssertionError(f"tls relay: condition not met in {timeout}s; got {self.deliveries!r}")
            await asyncio.sleep(0.05)
