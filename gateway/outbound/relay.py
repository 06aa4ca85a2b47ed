"""Where outgoing mail goes: an SMTP relay (smarthost) or `maildir:PATH` (a local Maildir).

`GATEWAY_RELAY_URL` forms:
- `smtp://[user:password@]host[:25]`: STARTTLS when the relay offers it (opportunistic, the
  certificate is not verified, as Postfix's `may` level: it beats plain text and never blocks mail);
- `smtp+starttls://[user:password@]host[:587]`: STARTTLS required, the certificate verified;
- `smtps://[user:password@]host[:465]`: TLS from the first byte, the certificate verified;
- `maildir:PATH`: files in PATH/new.
Credentials in the URL are percent-decoded; `relay_username` / `relay_password` (or their `*_file`
/ `*_env` variants) take over when the URL has none. Credentials are never sent over a connection
that is not encrypted.

A relay hands out sessions: one per worker pass, so the messages of a pass share one connection
(reconnecting only after the relay dropped it). Each send returns (accepted), raises
TemporaryFailure (try again later) or raises PermanentFailure (give up); the worker decides what
that means for the row.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, Protocol
from urllib.parse import unquote, urlparse

import aiosmtplib

from gateway.settings import Settings
from store.durable import make_directories, write_file

# aiosmtplib's timeout bounds each step of a conversation (connect, EHLO, STARTTLS, EHLO, AUTH, MAIL,
# RCPT, DATA, RSET); a whole attempt is bounded as well, so that it always ends before the outbox
# lease guarding it runs out.
STEPS_PER_ATTEMPT = 9

log = logging.getLogger(__name__)

Security = Literal["opportunistic", "starttls", "tls"]


def attempt_deadline(timeout: float) -> float:
    """The longest one delivery attempt may take with a per-step `timeout`."""
    return timeout * STEPS_PER_ATTEMPT


class TemporaryFailure(Exception):
    pass


class PermanentFailure(Exception):
    pass


class RelaySession(Protocol):
    async def send(self, *, raw: bytes, mail_from: str, recipient: str, key: str) -> None: ...


class Relay(Protocol):
    def session(self) -> AbstractAsyncContextManager[RelaySession]:
        """A session for the messages of one worker pass (one connection, where that means anything)."""
        ...

    async def send(self, *, raw: bytes, mail_from: str, recipient: str, key: str) -> None:
        """One message in a session of its own."""
        ...


# --- maildir ---------------------------------------------------------------------------------------


class MaildirRelay:
    """Delivers into PATH/new, through PATH/tmp with an fsync, as the Maildir convention wants."""

    def __init__(self, root: Path) -> None:
        self._root = root

    @asynccontextmanager
    async def _session(self) -> AsyncIterator[RelaySession]:
        yield self

    def session(self) -> AbstractAsyncContextManager[RelaySession]:
        return self._session()

    async def send(self, *, raw: bytes, mail_from: str, recipient: str, key: str) -> None:
        await asyncio.to_thread(self._deliver, raw, key)

    def _deliver(self, raw: bytes, key: str) -> None:
        for folder in ("tmp", "new", "cur"):
            make_directories(self._root / folder)
        # One file per outbox row: delivering the same row again overwrites, never duplicates.
        name = f"{key}.{socket.gethostname().replace('/', '_')}"
        if (self._root / "new" / name).exists() or (self._root / "cur" / f"{name}:2,").exists():
            return
        temporary = self._root / "tmp" / f"{name}.{os.getpid()}.{time.monotonic_ns()}"
        # Durable before the row is marked sent (store.durable: the rename fsynced too).
        write_file(self._root / "new" / name, raw.replace(b"\r\n", b"\n"), temporary=temporary)


# --- SMTP ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SmtpTarget:
    """Where and how to reach the smarthost."""

    host: str
    port: int
    security: Security = "opportunistic"
    username: str = ""
    password: str = ""
    ca_file: Path | None = None
    verify: bool = True  # for "starttls" and "tls"; opportunistic STARTTLS never verifies

    def __repr__(self) -> str:  # never print the password into a log line
        return f"SmtpTarget({self.security} {self.host}:{self.port}, user={self.username or '-'})"


class SmtpRelay:
    def __init__(self, target: SmtpTarget, *, timeout: float) -> None:
        self.target = target
        self._timeout = timeout
        self.connections_opened = 0  # for tests and the status page: reuse is observable

    def session(self) -> AbstractAsyncContextManager[RelaySession]:
        return self._session()

    @asynccontextmanager
    async def _session(self) -> AsyncIterator[RelaySession]:
        connection = _SmtpConnection(self)
        try:
            yield connection
        finally:
            await connection.close()

    async def send(self, *, raw: bytes, mail_from: str, recipient: str, key: str) -> None:
        """One message on a connection of its own."""
        async with self.session() as connection:
            await connection.send(raw=raw, mail_from=mail_from, recipient=recipient, key=key)

    def _client(self, *, start_tls: bool) -> aiosmtplib.SMTP:
        target = self.target
        tls_context: ssl.SSLContext | None = None
        if target.security == "opportunistic" or not target.verify:
            tls_context = ssl.create_default_context()
            tls_context.check_hostname = False
            tls_context.verify_mode = ssl.CERT_NONE
        elif target.ca_file is not None:
            tls_context = ssl.create_default_context(cafile=str(target.ca_file))
        return aiosmtplib.SMTP(
            hostname=target.host,
            port=target.port,
            timeout=self._timeout,
            use_tls=target.security == "tls",
            start_tls=start_tls,  # True: STARTTLS or fail (opportunistic STARTTLS is done by hand)
            tls_context=tls_context,
        )


class _SmtpConnection:
    """One connection to the relay, opened on the first send and reused by the following ones."""

    def __init__(self, relay: SmtpRelay) -> None:
        self._relay = relay
        self._client: aiosmtplib.SMTP | None = None
        # A relay that cannot be reached (or refuses our login) fails every message of the pass
        # the same way: remember why instead of knocking again for each row.
        self._broken: Exception | None = None

    async def send(self, *, raw: bytes, mail_from: str, recipient: str, key: str) -> None:
        deadline = attempt_deadline(self._relay._timeout)
        try:
            await asyncio.wait_for(self._send(raw, mail_from, recipient), timeout=deadline)
        except (TemporaryFailure, PermanentFailure):
            raise
        except aiosmtplib.SMTPRecipientsRefused as error:
            codes = [refusal.code for refusal in error.recipients]
            raise _by_code(min(codes) if codes else 451, str(error)) from error
        except aiosmtplib.SMTPResponseException as error:
            raise _by_code(error.code, f"{error.code} {error.message}") from error
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as error:
            await self.close()  # the conversation's state is unknown: never reuse it
            raise TemporaryFailure(f"{type(error).__name__}: {error}") from error
        except BaseException:
            await self.close()
            raise

    async def _send(self, raw: bytes, mail_from: str, recipient: str) -> None:
        client = await self._connected()
        options: list[str] = []
        if not (mail_from.isascii() and recipient.isascii()):
            # RFC 6531: an internationalised address needs SMTPUTF8 end to end. Without it the
            # message can never be delivered through this relay, so retrying for days helps no one.
            if not client.supports_extension("smtputf8"):
                address = recipient if not recipient.isascii() else mail_from
                raise PermanentFailure(
                    f"the relay does not offer SMTPUTF8, which the internationalised address {address} needs"
                )
            options.append("SMTPUTF8")
        if not raw.isascii() and client.supports_extension("8bitmime"):
            options.append("BODY=8BITMIME")
        await client.sendmail(mail_from, [recipient], raw, mail_options=options)

    async def _connected(self) -> aiosmtplib.SMTP:
        if self._broken is not None:
            raise TemporaryFailure(str(self._broken))
        if self._client is not None and self._client.is_connected:
            return self._client
        target = self._relay.target
        client: aiosmtplib.SMTP | None = None
        try:
            client = await self._open()
            if client.is_ehlo_or_helo_needed:
                await client.ehlo()  # after STARTTLS the extensions are asked again: SMTPUTF8 is decided on them
            if target.username:
                await self._login(client, target)
        except aiosmtplib.SMTPAuthenticationError as error:
            # Soft, as Postfix's smtp_sasl_auth_soft_bounce: fixing the password must not cost mail.
            self._broken = TemporaryFailure(
                f"the relay refused our login as {target.username!r}: {error.code} {error.message}"
                " (check relay_username / relay_password)"
            )
            raise self._broken from error
        except TemporaryFailure as error:
            self._broken = error
            raise
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as error:
            self._broken = TemporaryFailure(f"cannot reach the relay {target!r}: {type(error).__name__}: {error}")
            raise self._broken from error
        else:
            self._client = client
            return client
        finally:
            if client is not None and client is not self._client:
                client.close()  # failed, or cancelled (the attempt's deadline) half-way

    async def _open(self) -> aiosmtplib.SMTP:
        """A connected client: TLS as the URL asks; on smtp://, STARTTLS when offered and working."""
        relay = self._relay
        target = relay.target
        if target.security != "opportunistic":
            client = relay._client(start_tls=target.security == "starttls")
            await client.connect()
            relay.connections_opened += 1
            return client
        client = relay._client(start_tls=False)
        await client.connect()
        relay.connections_opened += 1
        try:
            await client.ehlo()
            if not client.supports_extension("starttls"):
                return client
            await client.starttls()
            return client
        except asyncio.CancelledError:
            client.close()
            raise
        except (ssl.SSLError, aiosmtplib.SMTPException, OSError) as error:
            # Postfix's "may" level: a relay whose TLS is broken still gets the mail, in clear text,
            # rather than none at all (a password is still never sent that way: see _login).
            client.close()
            log.warning(
                "relay %r: STARTTLS failed (%s: %s); this connection is not encrypted",
                target,
                type(error).__name__,
                error,
            )
        client = relay._client(start_tls=False)
        await client.connect()
        relay.connections_opened += 1
        return client

    @staticmethod
    async def _login(client: aiosmtplib.SMTP, target: SmtpTarget) -> None:
        if client.get_transport_info("sslcontext") is None:
            raise TemporaryFailure(
                f"the relay {target!r} offers no STARTTLS; the relay password is never sent in clear text"
            )
        await client.login(target.username, target.password)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is None or not client.is_connected:
            return
        try:
            await asyncio.wait_for(client.quit(), timeout=self._relay._timeout)
        except (TimeoutError, aiosmtplib.SMTPException, OSError):
            client.close()


def _by_code(code: int, text: str) -> Exception:
    return PermanentFailure(text) if 500 <= code < 600 else TemporaryFailure(text)


# --- from the settings -----------------------------------------------------------------------------

_SCHEMES: dict[str, tuple[Security, int]] = {
    "smtp": ("opportunistic", 25),
    "smtp+starttls": ("starttls", 587),
    "smtps": ("tls", 465),
}


def make_relay(url: str, *, timeout: float, settings: Settings | None = None) -> Relay:
    """The relay for `url`; credentials and TLS options not in the URL come from `settings`."""
    if url.startswith("maildir:"):
        return MaildirRelay(Path(url.removeprefix("maildir:")))
    parsed = urlparse(url)
    if parsed.scheme not in _SCHEMES or not parsed.hostname:
        raise ValueError(
            "GATEWAY_RELAY_URL must be smtp://, smtp+starttls:// or smtps://[user:password@]host[:port]"
            f" or maildir:PATH, not {_without_password(url)!r}"
        )
    security, default_port = _SCHEMES[parsed.scheme]
    target = SmtpTarget(
        host=parsed.hostname,
        port=parsed.port or default_port,
        security=security,
        username=unquote(parsed.username or ""),
        password=unquote(parsed.password or ""),
    )
    if settings is not None:
        if not target.username:
            target = replace(target, username=_secret(settings, "relay_username"))
            target = replace(target, password=_secret(settings, "relay_password"))
        target = replace(target, ca_file=settings.relay_tls_ca_file, verify=settings.relay_tls_verify)
    return SmtpRelay(target, timeout=timeout)


def relay_for(settings: Settings) -> Relay:
    return make_relay(settings.relay_url, timeout=settings.relay_timeout_seconds, settings=settings)


def _secret(settings: Settings, name: str) -> str:
    """`name`, or the contents of `name_file`, or the variable named by `name_env` (like IMAP passwords)."""
    path: Path | None = getattr(settings, f"{name}_file")
    if path is not None:
        return path.read_text(encoding="utf-8").strip()
    variable: str | None = getattr(settings, f"{name}_env")
    if variable:
        return os.environ.get(variable, "")
    return str(getattr(settings, name))


def _without_password(url: str) -> str:
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    return url.replace(f":{parsed.password}@", ":***@", 1)
