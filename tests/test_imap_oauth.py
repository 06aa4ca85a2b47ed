"""OAuth2 mailboxes (SPEC §14, issue 15 item 4) against Dovecot's oauth2 passdb and a provider the
test serves: a token endpoint that rotates refresh tokens and an introspection endpoint Dovecot asks.

Access tokens live 3 s, so the poller renews its token (and reconnects with it) every ~2 s: each
delivery after a renewal is made by a login with a token from a refresh, and the provider refuses a
retired refresh token, so only a poller that stored the rotated one keeps working.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine
from sqlmodel import select

from gateway.app import Gateway
from gateway.imap import MailboxPoller
from gateway.intake import Intake
from gateway.settings import MailboxSettings, Settings
from store import imap_state
from store.db import make_engine, reading, upgrade
from store.models import JournalEntry
from tests.helpers import all_cases, make_mail
from tests.servers.dovecot import DovecotServer, running_dovecot
from tests.servers.oauth import OAuthProvider, running_oauth_provider

LONG_POLL = 300.0  # only IDLE (and the token renewals) can explain timely deliveries


@pytest.fixture
def provider() -> Iterator[OAuthProvider]:
    with running_oauth_provider(lifetime_seconds=3.0) as running:
        yield running


@pytest.fixture
def dovecot_oauth(provider: OAuthProvider) -> Iterator[DovecotServer]:
    with running_dovecot(oauth_introspection_url=provider.introspection_url) as server:
        yield server


def crlf(message: EmailMessage) -> bytes:
    return message.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


async def wait_until(check: Callable[[], object], *, timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        await asyncio.sleep(0.05)


async def deliver(gateway: Gateway, server: DovecotServer, subject: str, *, user: str = "support") -> None:
    """APPEND a message to `user`'s INBOX and wait until it is a case of the gateway."""
    await asyncio.to_thread(server.append, crlf(make_mail(subject=subject)), user=user)
    await wait_until(lambda: any(case["subject"] == subject for case in all_cases(gateway)), what=f"a case {subject!r}")


def mailboxes(server: DovecotServer, provider: OAuthProvider, mechanism: str) -> list[MailboxSettings]:
    oauth = server.mailbox_settings(
        name="oauth",
        auth=mechanism,
        token_endpoint=provider.token_endpoint,
        client_id=provider.client_id,
        client_secret=provider.client_secret,
        refresh_token=provider.initial_refresh_token,
        poll_seconds=LONG_POLL,
    )
    plain = server.mailbox_settings(name="plain", user="other", poll_seconds=LONG_POLL)
    return [oauth, plain]


def poller(gateway: Gateway, name: str) -> Any:
    [found] = [poller for poller in gateway.pollers if poller.name == name]
    return found


def stored_refresh_token(gateway: Gateway) -> str | None:
    assert gateway.components is not None
    with reading(gateway.components.engine) as session:
        stored = imap_state.get_refresh_token(session=session, mailbox="oauth")
    return None if stored is None else stored.refresh_token


@pytest.mark.parametrize("mechanism", ["xoauth2", "oauthbearer"])
async def test_oauth_mailbox_across_refreshes_a_restart_and_a_revocation(
    settings_factory: Callable[..., Settings],
    dovecot_oauth: DovecotServer,
    provider: OAuthProvider,
    mechanism: str,
) -> None:
    settings = settings_factory(imap_mailboxes=mailboxes(dovecot_oauth, provider, mechanism))
    first = Gateway(settings)
    await first.start()
    try:
        await deliver(first, dovecot_oauth, "Przed odświeżeniem")
        # Two refreshes after the first token: each one retired the refresh token before it.
        start = provider.refreshes
        await wait_until(lambda: provider.refreshes >= start + 2, what="two token refreshes")
        await wait_until(lambda: poller(first, "oauth").state.connected, what="logged in again")
        await deliver(first, dovecot_oauth, "Po dwóch odświeżeniach")
        assert provider.refused_refreshes == []
        # Logins made with refreshed tokens, none refused: the tokens were renewed before expiry.
        assert provider.introspections.count(True) >= 3 and False not in provider.introspections
        assert stored_refresh_token(first) == provider.current_refresh_token
    finally:
        await first.stop()

    # A restart with the same settings: the configured refresh token is long retired at the
    # provider; only the one stored in the database works.
    assert settings.imap_mailboxes[0].refresh_token == provider.initial_refresh_token != provider.current_refresh_token
    second = Gateway(settings)
    await second.start()
    try:
        await deliver(second, dovecot_oauth, "Po restarcie")
        assert provider.refused_refreshes == []
        oauth = poller(second, "oauth")

        provider.revoke()
        # The session in progress ends when its token is due; the refresh is then refused.
        await wait_until(lambda: "invalid_grant" in (oauth.state.last_error or ""), what="the revoked grant")
        assert not oauth.state.connected and oauth.state.phase == "error"
        assert "Token has been revoked" in (oauth.state.last_error or "")
        # The other mailbox is untouched by it.
        await deliver(second, dovecot_oauth, "Inna skrzynka działa", user="other")
        async with httpx.AsyncClient() as client:
            health = (await client.get(f"http://127.0.0.1:{settings.http_port}/healthz")).json()
        assert "invalid_grant" in health["imap"]["oauth"]["last_error"]
        assert health["imap"]["oauth"]["connected"] is False
        assert health["imap"]["plain"]["last_error"] is None and health["imap"]["plain"]["connected"] is True
        subjects = sorted(case["subject"] for case in all_cases(second))
        expected = ["Przed odświeżeniem", "Po dwóch odświeżeniach", "Po restarcie", "Inna skrzynka działa"]
        assert subjects == sorted(expected)  # each once: nothing lost, nothing doubled
    finally:
        await second.stop()


async def test_a_refused_access_token_is_refreshed_at_once(
    tmp_path: Path, dovecot_oauth: DovecotServer, provider: OAuthProvider
) -> None:
    """The server refuses a token that has not expired yet: the poller answers the SASL error
    challenge (no hang until the command timeout), drops the token, refreshes and logs in again."""
    provider.lifetime_seconds = 600.0  # no renewal due: only the refusal can cause a refresh
    engine = make_engine(f"sqlite:///{tmp_path / 'gateway.db'}")
    upgrade(engine)
    [settings, _plain] = mailboxes(dovecot_oauth, provider, "xoauth2")
    poller = MailboxPoller(
        settings, engine=engine, intake=Intake(engine, instance_name="test"), reconnect_max_seconds=1
    )
    task = asyncio.create_task(poller.run())
    try:
        await wait_until(lambda: poller.state.phase == "idle", what="IDLE")
        assert provider.refreshes == 1
        provider.forget_access_tokens()
        await asyncio.to_thread(dovecot_oauth.restart)  # the next login presents the dead token
        # Deadline below the 30 s command timeout: a hung AUTHENTICATE would miss it.
        await wait_until(lambda: provider.refreshes == 2, timeout=20, what="a refresh after the refusal")
        raw = crlf(make_mail(subject="Po odmowie tokenu"))
        await asyncio.to_thread(dovecot_oauth.append, raw)
        await wait_until(lambda: journal_raws(engine) == [raw], timeout=20, what="the message journaled")
        assert provider.introspections[-2:] == [False, True]  # refused, then the fresh one accepted
        assert poller.state.connected and poller.state.last_error is None
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        engine.dispose()


def journal_raws(engine: Engine) -> list[bytes]:
    with reading(engine) as session:
        return [entry.raw for entry in session.exec(select(JournalEntry).order_by(JournalEntry.id)).all()]
