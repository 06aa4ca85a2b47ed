"""Retention and erasure at the row level: what `gateway purge` and `gateway erase` change.

Keyword-only, an explicit session, never a commit (the caller owns the transaction). The journal
may live in another database than the cases (SQLite), so journal functions take their own session.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TypeVar

from sqlalchemy import delete, func, or_, update
from sqlmodel import Session, col, select

from store.models import (
    Attachment,
    Case,
    Contact,
    JournalEntry,
    Message,
    OutboxItem,
    Participant,
    ProcessedEntry,
    SecurityEvent,
    utcnow,
)

# What an erased case shows instead of its subject (the panel and `cases show` print it as is).
TOMBSTONE_SUBJECT = "[usunięto na żądanie / erased on request]"
ERASED = "[erased]"
T = TypeVar("T")
PROCESSED_STATES = ("done", "duplicate")


# --- retention -------------------------------------------------------------------------------------


def purgeable_journal_ids(*, session: Session, processed_before: datetime) -> list[int]:
    """Processed entries whose raw bytes are past retention. Quarantined entries are never here."""
    statement = select(JournalEntry.id).where(
        col(JournalEntry.status).in_(PROCESSED_STATES),
        col(JournalEntry.processed_at) < processed_before,
        func.length(JournalEntry.raw) > 0,
    )
    return [journal_id for journal_id in session.exec(statement).all() if journal_id is not None]


def purgeable_outbox_ids(*, session: Session, sent_before: datetime) -> list[int]:
    statement = select(OutboxItem.id).where(
        OutboxItem.status == "sent", col(OutboxItem.sent_at) < sent_before, func.length(OutboxItem.raw) > 0
    )
    return [outbox_id for outbox_id in session.exec(statement).all() if outbox_id is not None]


def drop_journal_bytes(*, session: Session, journal_ids: Sequence[int]) -> None:
    """Forget the raw bytes and the envelope; raw_sha256 and size stay, so the digest is still answered."""
    for chunk in _chunks(journal_ids):
        session.execute(update(JournalEntry).where(col(JournalEntry.id).in_(chunk)).values(raw=b"", meta={}))


def drop_outbox_bytes(*, session: Session, outbox_ids: Sequence[int]) -> None:
    for chunk in _chunks(outbox_ids):
        session.execute(update(OutboxItem).where(col(OutboxItem.id).in_(chunk)).values(raw=b""))


# --- erasure -----------------------------------------------------------------------------------------


def cases_of_requester(*, session: Session, address: str) -> list[Case]:
    return list(session.exec(select(Case).where(Case.requester == address, col(Case.erased_at).is_(None))).all())


def messages_mentioning(*, session: Session, address: str) -> list[Message]:
    """Messages sent by the address or naming it anywhere: headers, subject, text (case-insensitive).
    A scan on the text columns: erasure is rare, and a mention in a body is still personal data."""
    pattern = f"%{address}%"
    statement = select(Message).where(
        or_(
            col(Message.sender) == address,
            *(
                func.lower(column).like(pattern)
                for column in (
                    col(Message.from_header),
                    col(Message.to_header),
                    col(Message.cc_header),
                    col(Message.subject),
                    col(Message.text),
                    col(Message.html),
                )
            ),
        )
    )
    return list(session.exec(statement).all())


def erase_case_rows(*, session: Session, case: Case) -> tuple[list[int], list[str]]:
    """Delete a case's messages, attachments, participants and outbox rows; leave its number as a
    tombstone. Returns the journal ids and attachment digests that were referenced, for the caller
    to drop the journal bytes and free the blobs nothing else uses."""
    messages = list(session.exec(select(Message).where(Message.case_id == case.id)).all())
    journal_ids, digests = delete_messages(session=session, messages=messages)
    session.execute(delete(Participant).where(col(Participant.case_id) == case.id))
    outbox_ids = list(session.exec(select(OutboxItem.id).where(OutboxItem.case_id == case.id)).all())
    delete_outbox(session=session, outbox_ids=[i for i in outbox_ids if i is not None])
    session.execute(
        update(SecurityEvent)
        .where(or_(col(SecurityEvent.target_case_id) == case.id, col(SecurityEvent.new_case_id) == case.id))
        .values(sender="", detail=ERASED)
    )
    journal_ids.extend(
        entry.journal_id
        for entry in session.exec(select(ProcessedEntry).where(ProcessedEntry.case_id == case.id)).all()
    )
    session.execute(
        update(ProcessedEntry).where(col(ProcessedEntry.case_id) == case.id).values(sender=None, message_id=None)
    )
    case.subject = TOMBSTONE_SUBJECT
    case.requester = ""
    case.requester_name = ""
    case.category = None
    case.message_count = 0
    case.status = "closed"
    case.erased_at = utcnow()
    session.add(case)
    return journal_ids, digests


def delete_messages(*, session: Session, messages: Iterable[Message]) -> tuple[list[int], list[str]]:
    journal_ids: list[int] = []
    digests: list[str] = []
    message_ids = []
    for message in messages:
        if message.id is None:
            continue
        message_ids.append(message.id)
        if message.journal_id is not None:
            journal_ids.append(message.journal_id)
    for chunk in _chunks(message_ids):
        attachments = session.exec(select(Attachment).where(col(Attachment.message_id).in_(chunk))).all()
        digests.extend(attachment.sha256 for attachment in attachments if attachment.sha256)
        session.execute(delete(Attachment).where(col(Attachment.message_id).in_(chunk)))
        session.execute(delete(Message).where(col(Message.id).in_(chunk)))
    return journal_ids, digests


def delete_outbox(*, session: Session, outbox_ids: Sequence[int]) -> None:
    for chunk in _chunks(outbox_ids):
        session.execute(update(Message).where(col(Message.outbox_id).in_(chunk)).values(outbox_id=None))
        session.execute(delete(OutboxItem).where(col(OutboxItem.id).in_(chunk)))


def outbox_ids_for_address(*, session: Session, address: str) -> list[int]:
    statement = select(OutboxItem.id).where(
        or_(col(OutboxItem.recipient) == address, col(OutboxItem.mail_from) == address)
    )
    return [outbox_id for outbox_id in session.exec(statement).all() if outbox_id is not None]


def scrub_address(*, session: Session, address: str, messages: Iterable[Message]) -> None:
    """Replace the address in what stays of other people's messages (headers and text)."""
    for message in messages:
        for field in ("from_header", "to_header", "cc_header", "subject", "text", "html"):
            value = getattr(message, field)
            if value and address in value.lower():
                setattr(message, field, _replace_folded(value, address))
        session.add(message)


def forget_address_elsewhere(*, session: Session, address: str) -> dict[str, int]:
    """Participants, directory contacts, duplicate-detection keys and security events that name it."""
    counts = {
        "participants": _rowcount(session.execute(delete(Participant).where(col(Participant.email) == address))),
        "contacts": _rowcount(session.execute(delete(Contact).where(col(Contact.email) == address))),
    }
    session.execute(
        update(ProcessedEntry).where(col(ProcessedEntry.sender) == address).values(sender=None, message_id=None)
    )
    session.execute(update(SecurityEvent).where(col(SecurityEvent.sender) == address).values(sender="", detail=ERASED))
    return counts


def blobs_still_referenced(*, session: Session, digests: Iterable[str]) -> set[str]:
    wanted = sorted(set(digests))
    found: set[str] = set()
    for chunk in _chunks(wanted):
        found.update(
            sha for sha in session.exec(select(Attachment.sha256).where(col(Attachment.sha256).in_(chunk))).all() if sha
        )
    return found


def journal_ids_containing(*, session: Session, needles: Sequence[bytes]) -> list[int]:
    """Journal entries whose raw bytes contain any needle. A scan: erasure is rare, and an entry can
    hold the address without any row pointing at it (a quarantined message, a duplicate)."""
    return _ids_containing(session=session, table=JournalEntry, needles=needles)


def outbox_ids_containing(*, session: Session, needles: Sequence[bytes]) -> list[int]:
    """Finished outgoing mail that quotes the address (a staff notification of someone else's
    message). Mail still waiting to be sent keeps its bytes: blanking them would send nothing."""
    found = _ids_containing(session=session, table=OutboxItem, needles=needles)
    finished = select(OutboxItem.id).where(
        col(OutboxItem.id).in_(found), col(OutboxItem.status).in_(("sent", "failed"))
    )
    return [outbox_id for outbox_id in session.exec(finished).all() if outbox_id is not None]


def _ids_containing(
    *, session: Session, table: type[JournalEntry] | type[OutboxItem], needles: Sequence[bytes], batch: int = 200
) -> list[int]:
    found: list[int] = []
    last_id = 0
    while True:
        rows = session.exec(
            select(table.id, table.raw).where(col(table.id) > last_id).order_by(col(table.id)).limit(batch)
        ).all()
        if not rows:
            return found
        for journal_id, raw in rows:
            lowered = bytes(raw).lower()
            if journal_id is not None and any(needle in lowered for needle in needles):
                found.append(journal_id)
        last_id = rows[-1][0] or last_id


def _replace_folded(value: str, address: str) -> str:
    lowered = value.lower()
    parts: list[str] = []
    start = 0
    while (index := lowered.find(address, start)) >= 0:
        parts.append(value[start:index])
        parts.append(ERASED)
        start = index + len(address)
    parts.append(value[start:])
    return "".join(parts)


def _rowcount(result: object) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def _chunks(values: Sequence[T], size: int = 500) -> Iterable[Sequence[T]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]
