"""Signed envelope senders and unguessable Message-IDs (issue 11 items 4 and 7, the sending side).

Each outgoing message leaves with its own MAIL FROM `bok+b-<mac>@domain`, the MAC bound to its
Message-ID, checked on the wire of a real SMTP sink; only that address with that Message-ID checks
as a bounce address of ours.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from sqlmodel import col, select

from gateway.addresses import ReplyAddresses, TokenCheck
from gateway.app import Components
from gateway.outbound.compose import new_message_id
from gateway.outbound.relay import relay_for
from gateway.outbound.replies import Outgoing
from gateway.outbound.worker import OutboxWorker
from gateway.settings import Settings
from store.db import reading, transaction
from store.models import Case, OutboxItem
from tests.helpers import STAFF_QUEUE, SUPPORT
from tests.servers.relay_sink import RelaySink

CUSTOMER = "jan.kowalski@klient.example"


async def test_every_message_leaves_with_its_own_signed_envelope_sender(
    settings_factory: Callable[..., Settings],
) -> None:
    with RelaySink() as sink:
        settings = settings_factory(relay_url=sink.url)
        components = Components.build(settings)
        try:
            with transaction(components.engine) as session:
                case = Case(number="2026-000001", requester=CUSTOMER, subject="test")
                session.add(case)
                session.flush()
                mails = [
                    Outgoing(kind="ack", recipient=CUSTOMER, automatic=True, context={"received_subject": "test"}),
                    Outgoing(
                        kind="delivery_failed",
                        recipient=STAFF_QUEUE,
                        automatic=True,
                        to_staff=True,
                        context={"recipient": CUSTOMER, "error": "550 no", "original_subject": "test"},
                    ),
                ]
                for mail in mails:
                    components.replies.queue(session=session, case=case, mail=mail)
            worker = OutboxWorker(
                engine=components.engine, settings=settings, relay=relay_for(settings), replies=components.replies
            )
            assert await worker.run_once() == 2
            with reading(components.engine) as session:
                rows = list(session.exec(select(OutboxItem).order_by(col(OutboxItem.id))).all())

            local, domain = SUPPORT.split("@")
            assert len({row.mail_from for row in rows}) == 2
            for row in rows:
                [delivery] = sink.attempts_of(row.message_id)
                assert delivery.mail_from == row.mail_from
                assert re.fullmatch(rf"{local}\+b-[a-z2-7]{{16}}@{re.escape(domain)}", row.mail_from)
                assert components.addresses.check_bounce(row.mail_from, message_id=row.message_id) is TokenCheck.VALID
            first, second = rows
            # Bound to its own message: not valid for another one, and not under another key.
            assert components.addresses.check_bounce(first.mail_from, message_id=second.message_id) is TokenCheck.FORGED
            other_key = ReplyAddresses(support_address=SUPPORT, secret="another-secret")
            assert other_key.check_bounce(first.mail_from, message_id=first.message_id) is TokenCheck.FORGED
        finally:
            components.dispose()


def test_message_ids_are_unguessable() -> None:
    identifiers = [new_message_id("example.test") for _ in range(2000)]
    assert len(set(identifiers)) == len(identifiers)
    for identifier in identifiers[:50]:
        assert re.fullmatch(r"[0-9a-f]{32}@example\.test", identifier)  # 128 random bits, no time or pid
