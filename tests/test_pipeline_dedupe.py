"""A duplicate is the same message, not merely the same Message-ID (issue 14, class 6).

An MTA retry (the same message with other trace headers) is stored once; a different message that
a broken mailer sent under an ID it already used is stored as its own message, with the reuse on
record in its defects.
"""

from __future__ import annotations

from sqlmodel import col, select

from store.db import reading
from store.models import JournalEntry, Message
from tests.helpers import all_cases, make_mail, send, settle

SENDER = "szablon@klient.example"
REUSED_ID = "<staly-identyfikator@klient.example>"


def _stored(gateway) -> list[Message]:
    with reading(gateway.components.engine) as session:
        return list(session.exec(select(Message).where(Message.direction == "inbound").order_by(col(Message.id))))


def _journal(gateway) -> list[tuple[str, str | None]]:
    with reading(gateway.components.journal_engine) as session:
        entries = session.exec(select(JournalEntry).order_by(col(JournalEntry.id))).all()
        return [(entry.status, entry.reason) for entry in entries]


async def test_a_reused_message_id_on_a_different_message_is_stored_and_recorded(gateway, settings):
    first = make_mail(
        sender=SENDER, subject="Faktura 1/2026", body="Proszę o fakturę za styczeń.", message_id=REUSED_ID
    )
    second = make_mail(sender=SENDER, subject="Faktura 2/2026", body="Proszę o fakturę za luty.", message_id=REUSED_ID)
    for message in (first, second):
        assert (await send(settings, message))[0] == 250
        await settle(gateway)

    assert [status for status, _ in _journal(gateway)] == ["done", "done"]
    stored = _stored(gateway)
    assert [m.subject for m in stored] == ["Faktura 1/2026", "Faktura 2/2026"]
    assert not any("reused" in defect for defect in stored[0].defects)
    assert any("Message-ID reused" in defect for defect in stored[1].defects), stored[1].defects
    assert len(all_cases(gateway)) == 2  # neither replaced nor swallowed the other


async def test_an_mta_retry_with_other_trace_headers_is_stored_once(gateway, settings):
    message = make_mail(sender=SENDER, subject="Nie działa poczta", body="Od rana nie działa.", message_id=REUSED_ID)
    body = message.as_bytes()
    # The sender's MTA lost our 250 and retried through another hop: new Received lines, same message.
    first = b"Received: from mx1.klient.example by bok; Mon, 30 Nov 2026 10:00:00 +0000\r\n" + body
    retry = b"Received: from mx2.klient.example by bok; Mon, 30 Nov 2026 10:05:00 +0000\r\n" + body
    for raw in (first, retry):
        assert (await send(settings, raw, mail_from=SENDER))[0] == 250
        await settle(gateway)

    assert [status for status, _ in _journal(gateway)] == ["done", "duplicate"]
    assert [m.subject for m in _stored(gateway)] == ["Nie działa poczta"]
    assert len(all_cases(gateway)) == 1
