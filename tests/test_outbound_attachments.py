"""Large content is stored once (issue 12 item 6): outbox rows refer to attachments, never copy them.

A customer's message with a large attachment goes over real SMTP into a real gateway; the staff
notification it causes is relayed to a real SMTP sink. The outbox rows must hold no copy of the
attachment (their sizes are measured), while the notification on the wire carries it byte-exact.
The same for a staff answer's files, and a blob that is gone fails its row clearly.
"""

from __future__ import annotations

import email
import os
from collections.abc import AsyncIterator, Callable, Iterator
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlmodel import col, select

from gateway.app import Components, Gateway
from gateway.outbound.relay import relay_for
from gateway.outbound.replies import Outgoing, OutgoingAttachment
from gateway.outbound.worker import OutboxWorker
from gateway.settings import Settings
from store.db import reading, transaction
from store.models import Case, OutboxItem
from tests.helpers import STAFF_QUEUE, make_mail, send, settle
from tests.servers.relay_sink import RelaySink

CUSTOMER = "jan.kowalski@klient.example"
LARGE = 3 * 1024 * 1024
ROW_CEILING = 64 * 1024  # an outbox row without attachment copies: headers, text, HTML, placeholders


@pytest.fixture
def sink() -> Iterator[RelaySink]:
    with RelaySink() as running:
        yield running


@pytest.fixture
async def relayed(settings_factory: Callable[..., Settings], sink: RelaySink) -> AsyncIterator[Gateway]:
    running = Gateway(settings_factory(relay_url=sink.url))
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


def outbox_rows(engine_owner: Gateway | Components) -> list[OutboxItem]:
    components = engine_owner.components if isinstance(engine_owner, Gateway) else engine_owner
    assert components is not None
    with reading(components.engine) as session:
        return list(session.exec(select(OutboxItem).order_by(col(OutboxItem.id))).all())


def attachments_of(raw: bytes) -> dict[str, bytes]:
    message = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return {str(part.get_filename()): part.get_payload(decode=True) for part in message.iter_attachments()}


async def test_a_notification_refers_to_the_stored_attachment_and_relays_it_byte_exact(
    relayed: Gateway, sink: RelaySink
) -> None:
    content = os.urandom(LARGE)
    mail = make_mail(sender=CUSTOMER, attachments=[("zrzut ekranu.bin", content)])
    assert (await send(relayed.settings, mail))[0] == 250
    await settle(relayed, outbox=True)

    rows = outbox_rows(relayed)
    assert "notification" in {row.kind for row in rows} and len(rows) == 2  # and the acknowledgement
    sizes = {row.kind: len(row.raw) for row in rows}
    assert all(size < ROW_CEILING for size in sizes.values()), sizes
    assert all(content[:4096] not in row.raw for row in rows)

    [notification] = sink.accepted_to(STAFF_QUEUE)
    assert attachments_of(notification.raw) == {"zrzut ekranu.bin": content}
    # On the wire the attachment is base64 in lines of 76, as a composer would have written it.
    assert len(notification.raw) > LARGE * 4 // 3


def _queue_answer(components: Components, files: list[OutgoingAttachment]) -> None:
    with transaction(components.engine) as session:
        case = Case(number="2026-000001", requester=CUSTOMER, subject="faktura")
        session.add(case)
        session.flush()
        components.replies.queue(
            session=session,
            case=case,
            mail=Outgoing(
                kind="staff_reply",
                recipient=CUSTOMER,
                automatic=False,
                source="staff",
                context={"body": "W załączniku faktura.", "staff_name": "Anna"},
                attachments=files,
            ),
        )


async def test_a_staff_answer_refers_to_its_files_too(
    settings_factory: Callable[..., Settings], sink: RelaySink
) -> None:
    settings = settings_factory(relay_url=sink.url)
    components = Components.build(settings)
    try:
        invoice, log = os.urandom(LARGE), b"line\r\n" * 1000
        _queue_answer(
            components,
            [
                OutgoingAttachment(filename="faktura.pdf", content_type="application/pdf", content=invoice),
                OutgoingAttachment(filename="dziennik.txt", content_type="text/plain", content=log),
            ],
        )
        [row] = outbox_rows(components)
        assert len(row.raw) < ROW_CEILING and invoice[:4096] not in row.raw
        worker = OutboxWorker(
            engine=components.engine, settings=settings, relay=relay_for(settings), replies=components.replies
        )
        assert await worker.run_once() == 1
        [answer] = sink.accepted_to(CUSTOMER)
        assert attachments_of(answer.raw) == {"faktura.pdf": invoice, "dziennik.txt": log}
    finally:
        components.dispose()


async def test_an_attachment_that_is_gone_fails_the_row_clearly(
    settings_factory: Callable[..., Settings], sink: RelaySink, tmp_path: Path
) -> None:
    settings = settings_factory(relay_url=sink.url)
    components = Components.build(settings)
    try:
        content = os.urandom(1024)
        _queue_answer(
            components, [OutgoingAttachment(filename="a.bin", content_type="application/pdf", content=content)]
        )
        for blob in (settings.data_dir / "blobs").rglob("*"):
            if blob.is_file():
                blob.unlink()  # as an erasure of the customer's data would
        worker = OutboxWorker(
            engine=components.engine, settings=settings, relay=relay_for(settings), replies=components.replies
        )
        await worker.run_once()
        [row] = [r for r in outbox_rows(components) if r.kind == "staff_reply"]
        assert row.status == "failed" and "no longer stored" in (row.last_error or "")
        assert sink.accepted_to(CUSTOMER) == []
    finally:
        components.dispose()
