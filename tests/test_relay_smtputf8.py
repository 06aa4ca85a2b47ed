"""Mail to an internationalised address (issue 14 item 9): SMTPUTF8 when the relay offers it, else a clear failure.

Against real SMTP servers on loopback: aiosmtpd offering SMTPUTF8 (tests/servers/tls_relay.py) and
the relay sink, which does not offer it (tests/servers/relay_sink.py).
"""

from __future__ import annotations

import email
from collections.abc import Callable
from email import policy
from pathlib import Path

import aiosmtplib

from gateway.app import Components, Gateway
from gateway.settings import Settings
from tests.helpers import STAFF_QUEUE, SUPPORT, outbox_rows, outbox_worker, queue_acks, settle
from tests.servers.relay_sink import RelaySink
from tests.servers.tls_relay import TlsRelay

CUSTOMER = "zażółć.jaźń@klient.example"


async def test_sent_with_smtputf8_when_the_relay_offers_it(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    with TlsRelay(tmp_path / "certs", mode="starttls", require_auth=False, smtputf8=True) as relay:
        settings = settings_factory(relay_url=relay.url(scheme="smtp"))
        components = Components.build(settings)
        try:
            queue_acks(components, [CUSTOMER], subject="Gęślą jaźń")
            assert await outbox_worker(components, settings).run_once() == 1
            [delivery] = relay.deliveries
            assert delivery.recipients == (CUSTOMER,)
            assert "SMTPUTF8" in [option.upper() for option in delivery.mail_options]
            # RFC 6532: the address is UTF-8 in the header too, never an encoded-word.
            assert f"To: {CUSTOMER}\r\n".encode() in delivery.raw
            parsed = email.message_from_bytes(delivery.raw, policy=policy.default)
            assert str(parsed["To"]) == CUSTOMER
            [row] = outbox_rows(components)
            assert (row.status, row.attempts) == ("sent", 1)
        finally:
            components.dispose()


async def test_fails_at_once_and_tells_staff_when_the_relay_cannot(settings_factory: Callable[..., Settings]) -> None:
    with RelaySink() as sink:  # no SMTPUTF8 in its EHLO
        settings = settings_factory(relay_url=sink.url)
        components = Components.build(settings)
        try:
            queue_acks(components, [CUSTOMER], subject="Gęślą jaźń")
            worker = outbox_worker(components, settings)
            assert await worker.run_once() == 1
            [row] = outbox_rows(components)[:1]
            # No 48 hours of retries: the first attempt settles it, with the reason.
            assert (row.status, row.attempts) == ("failed", 1)
            assert "does not offer SMTPUTF8" in (row.last_error or "") and CUSTOMER in (row.last_error or "")
            assert sink.deliveries == []  # nothing was even offered to the relay

            assert await worker.run_once() == 1  # the notice to staff
            [notice] = sink.accepted_to(STAFF_QUEUE)
            body = email.message_from_bytes(notice.raw, policy=policy.default)
            text = body.get_body(("plain",)).get_content()  # type: ignore[attr-defined]
            assert CUSTOMER in text and "SMTPUTF8" in text
        finally:
            components.dispose()


async def test_a_customer_writing_from_an_internationalised_address_gets_the_acknowledgement(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    """End to end: in over SMTPUTF8 (as Postfix relays it), the case, and the acknowledgement out."""
    with TlsRelay(tmp_path / "certs", mode="starttls", require_auth=False, smtputf8=True) as relay:
        settings = settings_factory(relay_url=relay.url(scheme="smtp"), sender_verification="off")
        gateway = Gateway(settings)
        await gateway.start()
        try:
            raw = (
                f"From: Zażółć Jaźń <{CUSTOMER}>\r\nTo: {SUPPORT}\r\nSubject: Gęślą jaźń\r\n"
                "Message-ID: <utf8-1@klient.example>\r\nMIME-Version: 1.0\r\n"
                'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: 8bit\r\n\r\n'
                "Dzień dobry, piszę z adresu z polskimi znakami.\r\n"
            ).encode()
            async with aiosmtplib.SMTP(hostname=settings.smtp_host, port=settings.smtp_port, start_tls=False) as client:
                await client.sendmail(CUSTOMER, [SUPPORT], raw, mail_options=["SMTPUTF8", "BODY=8BITMIME"])
            await settle(gateway, outbox=True)
            await relay.wait_for(lambda r: any(CUSTOMER in d.recipients for d in r.deliveries))
            [ack] = [d for d in relay.deliveries if CUSTOMER in d.recipients]
            assert "SMTPUTF8" in [option.upper() for option in ack.mail_options]
            assert str(ack.message["To"]) == CUSTOMER
        finally:
            await gateway.stop()
