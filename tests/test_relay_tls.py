"""The relay as operators run it (issue 15 item 7): TLS, AUTH and one connection per worker pass.

Everything goes to a real smarthost on loopback (tests/servers/tls_relay.py: aiosmtpd with a
self-signed certificate, STARTTLS or implicit TLS, AUTH PLAIN/LOGIN over TLS only); what it saw on
the wire (encryption, login, which connection carried which message) and what the outbox table
says are both checked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.app import Components, Gateway
from gateway.outbound.relay import SmtpRelay, relay_for
from gateway.outbound.worker import OutboxWorker
from gateway.settings import Settings
from tests.helpers import make_mail, outbox_rows, queue_acks, send, settle
from tests.servers.relay_sink import RelaySink
from tests.servers.tls_relay import TlsRelay

USER, PASSWORD = "gateway", "s3cret:/@pass"  # characters that need percent-encoding in a URL
URL_CREDENTIALS = "gateway:s3cret%3A%2F%40pass"
CUSTOMERS = [f"klient{number}@klient.example" for number in range(5)]


@pytest.fixture
def starttls_relay(tmp_path: Path) -> Iterator[TlsRelay]:
    with TlsRelay(tmp_path / "certs", mode="starttls", users={USER: PASSWORD}) as relay:
        yield relay


@pytest.fixture
def smtps_relay(tmp_path: Path) -> Iterator[TlsRelay]:
    with TlsRelay(tmp_path / "certs", mode="smtps", users={USER: PASSWORD}) as relay:
        yield relay


async def one_pass(settings: Settings, recipients: list[str]) -> tuple[Components, SmtpRelay]:
    """Queue one mail per recipient, then let a worker make one pass over the outbox."""
    components = Components.build(settings)
    queue_acks(components, recipients)
    relay = relay_for(settings)
    assert isinstance(relay, SmtpRelay)
    worker = OutboxWorker(engine=components.engine, settings=settings, relay=relay, replies=components.replies)
    assert await worker.run_once() == len(recipients)
    return components, relay


async def test_starttls_and_auth_with_every_message_of_a_pass_on_one_connection(
    settings_factory: Callable[..., Settings], starttls_relay: TlsRelay
) -> None:
    settings = settings_factory(
        relay_url=starttls_relay.url(credentials=URL_CREDENTIALS),
        relay_tls_ca_file=starttls_relay.cert_file,
        relay_max_connections=1,
    )
    components, relay = await one_pass(settings, CUSTOMERS)
    try:
        deliveries = starttls_relay.deliveries
        assert sorted(d.recipients[0] for d in deliveries) == sorted(CUSTOMERS)
        assert all(d.encrypted and d.login == USER for d in deliveries)
        assert {d.connection for d in deliveries} == {1}  # five messages, one connection
        assert starttls_relay.connections_opened == 1 and relay.connections_opened == 1
        assert [(r.status, r.attempts) for r in outbox_rows(components)] == [("sent", 1)] * len(CUSTOMERS)
    finally:
        components.dispose()


async def test_connections_per_pass_are_bounded_by_the_setting(
    settings_factory: Callable[..., Settings], starttls_relay: TlsRelay
) -> None:
    settings = settings_factory(
        relay_url=starttls_relay.url(credentials=URL_CREDENTIALS),
        relay_tls_ca_file=starttls_relay.cert_file,
        relay_max_connections=2,
    )
    components, _ = await one_pass(settings, CUSTOMERS)
    try:
        deliveries = starttls_relay.deliveries
        assert len(deliveries) == len(CUSTOMERS)
        assert starttls_relay.connections_opened == 2  # not one per message
    finally:
        components.dispose()


async def test_smtps_with_the_password_from_a_file(
    settings_factory: Callable[..., Settings], smtps_relay: TlsRelay, tmp_path: Path
) -> None:
    password_file = tmp_path / "relay-password"
    password_file.write_text(PASSWORD + "\n")
    settings = settings_factory(
        relay_url=smtps_relay.url(),
        relay_username=USER,
        relay_password_file=password_file,
        relay_tls_ca_file=smtps_relay.cert_file,
    )
    components, _ = await one_pass(settings, CUSTOMERS[:2])
    try:
        assert [(d.encrypted, d.login) for d in smtps_relay.deliveries] == [(True, USER)] * 2
        assert {r.status for r in outbox_rows(components)} == {"sent"}
    finally:
        components.dispose()


async def test_the_password_from_an_environment_variable(
    settings_factory: Callable[..., Settings], starttls_relay: TlsRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_RELAY_SECRET", PASSWORD)
    settings = settings_factory(
        relay_url=starttls_relay.url(),
        relay_username=USER,
        relay_password_env="TEST_RELAY_SECRET",
        relay_tls_ca_file=starttls_relay.cert_file,
    )
    components, _ = await one_pass(settings, CUSTOMERS[:1])
    try:
        assert [d.login for d in starttls_relay.deliveries] == [USER]
    finally:
        components.dispose()


async def test_wrong_credentials_fail_every_row_clearly_and_keep_it(
    settings_factory: Callable[..., Settings], starttls_relay: TlsRelay
) -> None:
    settings = settings_factory(
        relay_url=starttls_relay.url(credentials="gateway:wrong"),
        relay_tls_ca_file=starttls_relay.cert_file,
        relay_max_connections=1,
    )
    components, _ = await one_pass(settings, CUSTOMERS[:3])
    try:
        assert starttls_relay.deliveries == []
        assert set(starttls_relay.refused_logins) == {USER}
        assert starttls_relay.connections_opened == 1  # tried once for the pass, not once per row
        for row in outbox_rows(components):
            # Deferred, as Postfix's smtp_sasl_auth_soft_bounce: a fixed password loses no mail.
            assert (row.status, row.attempts) == ("queued", 1)
            assert row.last_error and "refused our login as 'gateway'" in row.last_error
            assert "535" in row.last_error and "wrong" not in row.last_error  # never the password
    finally:
        components.dispose()


async def test_an_unknown_certificate_is_refused_on_smtp_starttls(
    settings_factory: Callable[..., Settings], starttls_relay: TlsRelay
) -> None:
    settings = settings_factory(relay_url=starttls_relay.url(credentials=URL_CREDENTIALS))  # no CA file
    components, _ = await one_pass(settings, CUSTOMERS[:1])
    try:
        assert starttls_relay.deliveries == []
        [row] = outbox_rows(components)
        assert row.status == "queued" and "CERTIFICATE_VERIFY_FAILED" in (row.last_error or "")
    finally:
        components.dispose()


async def test_plain_smtp_uses_starttls_when_offered(settings_factory: Callable[..., Settings], tmp_path: Path) -> None:
    with TlsRelay(tmp_path / "certs", mode="starttls", require_auth=False) as relay:
        # Opportunistic: encrypted although nobody configured a CA for the self-signed certificate.
        settings = settings_factory(relay_url=relay.url(scheme="smtp"))
        components, _ = await one_pass(settings, CUSTOMERS[:2])
        try:
            assert [(d.encrypted, d.login) for d in relay.deliveries] == [(True, None)] * 2
        finally:
            components.dispose()


async def test_plain_smtp_still_delivers_when_the_offered_starttls_is_broken(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    with TlsRelay(tmp_path / "certs", mode="starttls", require_auth=False, broken_tls=True) as relay:
        settings = settings_factory(relay_url=relay.url(scheme="smtp"), relay_max_connections=1)
        components, _ = await one_pass(settings, CUSTOMERS[:2])
        try:
            # Postfix's "may": clear text rather than no mail at all; the handshake was tried once.
            assert [(d.encrypted, d.connection) for d in relay.deliveries] == [(False, 2), (False, 2)]
            assert {r.status for r in outbox_rows(components)} == {"sent"}
        finally:
            components.dispose()


async def test_a_broken_starttls_is_never_a_fallback_on_smtp_starttls(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    with TlsRelay(tmp_path / "certs", mode="starttls", require_auth=False, broken_tls=True) as relay:
        settings = settings_factory(relay_url=relay.url(), relay_tls_ca_file=relay.cert_file)
        components, _ = await one_pass(settings, CUSTOMERS[:1])
        try:
            assert relay.deliveries == []
            [row] = outbox_rows(components)
            assert row.status == "queued" and "cannot reach the relay" in (row.last_error or "")
        finally:
            components.dispose()


async def test_a_password_is_never_sent_without_encryption(settings_factory: Callable[..., Settings]) -> None:
    with RelaySink() as sink:  # offers neither STARTTLS nor AUTH
        settings = settings_factory(relay_url=f"smtp://{URL_CREDENTIALS}@{sink.host}:{sink.port}")
        components, _ = await one_pass(settings, CUSTOMERS[:1])
        try:
            assert sink.deliveries == []
            [row] = outbox_rows(components)
            assert row.status == "queued" and "never sent in clear text" in (row.last_error or "")
        finally:
            components.dispose()


async def test_a_gateway_relays_a_customer_exchange_encrypted_and_authenticated(
    settings_factory: Callable[..., Settings], starttls_relay: TlsRelay
) -> None:
    settings = settings_factory(
        relay_url=starttls_relay.url(credentials=URL_CREDENTIALS),
        relay_tls_ca_file=starttls_relay.cert_file,
        relay_max_connections=1,
    )
    gateway = Gateway(settings)
    await gateway.start()
    try:
        assert (await send(settings, make_mail(sender=CUSTOMERS[0])))[0] == 250
        await settle(gateway, outbox=True)
        await starttls_relay.wait_for(lambda relay: len(relay.deliveries) == 2)
        deliveries = starttls_relay.deliveries
        assert {d.recipients[0] for d in deliveries} == {CUSTOMERS[0], settings.staff_queue_address}
        assert all(d.encrypted and d.login == USER for d in deliveries)
        # (Whether both share a connection depends on their landing in one worker pass, which the
        # pipeline's transactions decide; sharing within a pass is the first test's business.)
    finally:
        await gateway.stop()
