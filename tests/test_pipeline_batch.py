"""Batches: many journal entries in one transaction, each in a savepoint of its own (issue 13).

The entries are journaled through the real intake and processed by the real pipeline in one call
of `process_batch`, on SQLite and (GATEWAY_TEST_BACKEND=postgresql) PostgreSQL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, select

from gateway.app import Components
from gateway.intake import Intake
from gateway.outbound.replies import Outgoing, Replies
from gateway.settings import Settings
from store.db import reading, transaction
from store.models import Account, Case, Contact, JournalEntry, Message, OutboxItem, Participant
from store.states import Outcome
from tests.helpers import BACKEND, SUPPORT, authenticated, make_mail


@pytest.fixture
async def components(settings: Settings) -> AsyncIterator[Components]:
    built = Components.build(settings)
    yield built
    built.dispose()


async def _journal(components: Components, mails: list[tuple[bytes, dict[str, Any]]]) -> list[int]:
    intake = Intake(components.journal_engine, instance_name="batch-test")
    return [(await intake.accept(raw, source="smtp", meta=meta)).journal_id for raw, meta in mails]


def _envelope(sender: str) -> dict[str, Any]:
    # As the SMTP listener journals it; 127.0.0.1 is the trusted relay of the test settings.
    return {"mail_from": sender, "rcpt_tos": [SUPPORT], "peer": "127.0.0.1"}


def _rows(components: Components) -> tuple[list[Case], list[Message], list[OutboxItem]]:
    with reading(components.engine) as session:
        return (
            list(session.exec(select(Case).order_by(col(Case.id)))),
            list(session.exec(select(Message).order_by(col(Message.id)))),
            list(session.exec(select(OutboxItem).order_by(col(OutboxItem.id)))),
        )


async def test_a_poison_entry_inside_a_batch_is_quarantined_alone(components: Components):
    senders = [f"klient{n}@klient.example" for n in range(5)]
    mails = [
        (authenticated(make_mail(sender=s, subject=f"Sprawa {n}")).as_bytes(), _envelope(s))
        for n, s in enumerate(senders)
    ]
    # The middle entry's journal meta is corrupt (a panel category that is not text, as a buggy
    # producer might write it): it fails only when its case row is flushed, after its case number
    # was drawn, so its savepoint must undo work already done.
    mails[2][1]["panel"] = {"category": {"not": "text"}}
    ids = await _journal(components, mails)

    outcomes = components.pipeline.process_batch(ids)

    assert outcomes == {i: Outcome.QUARANTINED if i == ids[2] else Outcome.DONE for i in ids}
    with reading(components.journal_engine) as session:
        entries = {e.id: e for e in session.exec(select(JournalEntry))}
    assert entries[ids[2]].status == "quarantined" and "Error" in (entries[ids[2]].reason or "")
    assert [entries[i].status for i in ids if i != ids[2]] == ["done"] * 4
    cases, messages, outbox = _rows(components)
    assert [c.requester for c in cases] == [s for n, s in enumerate(senders) if n != 2]
    numbers = [int(c.number.split("-")[1]) for c in cases]
    if BACKEND == "sqlite":
        # No gap: the poison entry's counter bump was rolled back with its savepoint.
        assert numbers == [1, 2, 3, 4]
    else:
        # PostgreSQL draws numbers from a sequence, which no rollback takes back (store.cases): the
        # first pass over the batch, without savepoints, drew numbers before the poison entry
        # failed and the batch was redone. Unique and in order, with gaps.
        assert numbers == sorted(set(numbers))
    assert len([m for m in messages if m.direction == "inbound"]) == 4
    assert sorted(o.kind for o in outbox) == ["ack"] * 4 + ["notification"] * 4


async def test_a_reply_and_its_parent_in_one_batch_land_in_one_case(components: Components):
    parent = authenticated(make_mail(sender="anna@klient.example", subject="Brak dostępu do panelu"))
    reply = authenticated(
        make_mail(
            sender="anna@klient.example",
            subject="Re: Brak dostępu do panelu",
            body="Dodam, że hasło było zmieniane wczoraj.",
            in_reply_to=str(parent["Message-ID"]),
        )
    )
    ids = await _journal(
        components,
        [(parent.as_bytes(), _envelope("anna@klient.example")), (reply.as_bytes(), _envelope("anna@klient.example"))],
    )

    assert components.pipeline.process_batch(ids) == dict.fromkeys(ids, Outcome.DONE)

    cases, messages, outbox = _rows(components)
    assert len(cases) == 1
    inbound = [m for m in messages if m.direction == "inbound"]
    assert [m.case_id for m in inbound] == [cases[0].id] * 2
    # Exactly once: one acknowledgement (for the new case) and one staff notification per message.
    assert sorted(o.kind for o in outbox) == ["ack", "notification", "notification"]
    # Processing the same entries again (a replay after a crash) changes nothing.
    assert components.pipeline.process_batch(ids) == dict.fromkeys(ids, Outcome.SKIPPED)
    assert [len(rows) for rows in _rows(components)] == [len(cases), len(messages), len(outbox)]


async def test_a_row_written_at_the_end_of_the_batch_that_fails_stays_with_its_entry(
    components: Components, monkeypatch: pytest.MonkeyPatch
):
    """Outbox rows go in together at the end of the batch (store.rows.LaterRows), when it is no
    longer known whose row failed: the batch is redone with a savepoint per entry, and only the
    entry whose row fails is quarantined. The failure is a Message-ID that collides with an
    outbox row already there: real ones come from `secrets`, so the test forces one."""
    senders = [f"klient{n}@klient.example" for n in range(4)]
    poisoned = senders[1]
    with transaction(components.engine) as session:
        taken = OutboxItem(
            kind="notification",
            automatic=True,
            mail_from="bounces@example.test",
            recipient="staff@example.test",
            message_id="taken@example.test",
            raw=b"x",
        )
        session.add(taken)
    real_rows = Replies._rows

    def colliding_rows(self: Replies, *, session: Any, case: Any, mail: Outgoing) -> Any:
        rows = real_rows(self, session=session, case=case, mail=mail)
        if rows is not None and mail.kind == "ack" and mail.recipient == poisoned:
            rows[0]["message_id"] = "taken@example.test"
        return rows

    monkeypatch.setattr(Replies, "_rows", colliding_rows)
    ids = await _journal(
        components,
        [
            (authenticated(make_mail(sender=s, subject=f"Sprawa {n}")).as_bytes(), _envelope(s))
            for n, s in enumerate(senders)
        ],
    )

    outcomes = components.pipeline.process_batch(ids)

    assert outcomes == {i: Outcome.QUARANTINED if i == ids[1] else Outcome.DONE for i in ids}
    cases, messages, outbox = _rows(components)
    assert [c.requester for c in cases] == [s for s in senders if s != poisoned]
    acks = [o for o in outbox if o.kind == "ack"]
    assert sorted(o.recipient for o in acks) == sorted(s for s in senders if s != poisoned)
    # Each case's acknowledgement is carried by a message of that case that names its outbox row.
    carried = {m.outbox_id: m for m in messages if m.direction == "outbound"}
    assert sorted(carried) == sorted(o.id for o in acks)
    assert all(carried[o.id].case_id == o.case_id and carried[o.id].message_id == o.message_id for o in acks)


async def test_an_entry_failing_after_its_participants_were_added_takes_them_with_it(
    settings_factory: Callable[..., Settings], tmp_path: Path
):
    """Participants of a new case wait with the batch's other rows (store.rows.LaterRows). An entry
    that fails after adding them (here: its account speaks English, and the operator's English
    acknowledgement template has a mistake in it) must take them back with its savepoint, or they
    would name a case that no longer exists and fail the whole batch at its end."""
    for name in ("ack.j2", "ack_unverified.j2"):
        broken = tmp_path / "templates" / "en" / name
        broken.parent.mkdir(parents=True, exist_ok=True)
        broken.write_text("{% block subject %}{{ no_such_variable }}{% endblock %}", encoding="utf-8")
    components = Components.build(settings_factory(template_dir=tmp_path / "templates"))
    try:
        senders = [f"klient{n}@klient.example" for n in range(5)]
        english = senders[2]
        with transaction(components.engine) as session:
            session.add(Account(id="acct-en", name="Example Ltd", language="en"))
            session.flush()
            session.add(Contact(account_id="acct-en", kind="representative", email=english))
        mails = [
            (authenticated(make_mail(sender=s, subject=f"Sprawa {n}")).as_bytes(), _envelope(s))
            for n, s in enumerate(senders)
        ]
        ids = await _journal(components, mails)

        outcomes = components.pipeline.process_batch(ids)

        assert outcomes == {i: Outcome.QUARANTINED if i == ids[2] else Outcome.DONE for i in ids}
        cases, _, outbox = _rows(components)
        assert [c.requester for c in cases] == [s for s in senders if s != english]
        assert sorted(o.recipient for o in outbox if o.kind == "ack") == sorted(s for s in senders if s != english)
        with reading(components.engine) as session:
            participants = session.exec(select(Participant.email)).all()
        assert sorted(participants) == sorted(s for s in senders if s != english)
    finally:
        components.dispose()
