"""Repository functions for the journal: claim, finish, quarantine, list and retry entries.

Keyword-only arguments, an explicit session, never a commit: the pipeline owns the transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, update
from sqlmodel import Session, col, select

from store.models import JournalEntry, utcnow
from store.states import JournalStatus
from store.text import storable_text


def get_entry(*, session: Session, journal_id: int) -> JournalEntry | None:
    return session.get(JournalEntry, journal_id)


def claim_pending_batch(*, session: Session, journal_ids: Sequence[int]) -> set[int]:
    """Lock the pending entries among `journal_ids` for this transaction; returns the ones now ours.

    On PostgreSQL rows another instance holds are skipped (SKIP LOCKED), never waited for, so
    instances and workers that were handed the same ids share them out instead of queueing.
    """
    statement = select(JournalEntry.id).where(
        col(JournalEntry.id).in_(journal_ids), JournalEntry.status == JournalStatus.PENDING
    )
    if session.get_bind().dialect.name == "postgresql":
        statement = statement.order_by(col(JournalEntry.id)).with_for_update(skip_locked=True)
    return {id_ for id_ in session.exec(statement) if id_ is not None}


@dataclass(frozen=True)
class EntryHead:
    """What a batch is planned by, without the raw bytes."""

    id: int
    size: int
    attempts: int


def pending_heads(*, session: Session, journal_ids: Sequence[int]) -> list[EntryHead]:
    """The pending entries among `journal_ids`, oldest first, without their raw bytes."""
    statement = (
        select(JournalEntry.id, JournalEntry.size, JournalEntry.attempts)
        .where(col(JournalEntry.id).in_(journal_ids), JournalEntry.status == JournalStatus.PENDING)
        .order_by(col(JournalEntry.id))
    )
    return [EntryHead(id=id_, size=size, attempts=attempts) for id_, size, attempts in session.exec(statement) if id_]


def get_entries(*, session: Session, journal_ids: Sequence[int]) -> list[JournalEntry]:
    """Entries with their raw bytes, oldest first."""
    statement = select(JournalEntry).where(col(JournalEntry.id).in_(journal_ids)).order_by(col(JournalEntry.id))
    return list(session.exec(statement))


def has_older_pending(*, session: Session, journal_id: int) -> bool:
    """Whether an entry acknowledged before this one still waits to be processed (anywhere)."""
    statement = select(JournalEntry.id).where(
        JournalEntry.status == JournalStatus.PENDING, col(JournalEntry.id) < journal_id
    )
    return session.exec(statement.limit(1)).first() is not None


def begin_attempts(*, session: Session, journal_ids: Sequence[int]) -> set[int]:
    """Count one more attempt at each pending entry, before it is processed; returns the ids that
    were still pending. The caller commits this before it starts, so an attempt that kills the
    process is still on record at the next start."""
    if not journal_ids:
        return set()
    statement = (
        update(JournalEntry)
        .where(col(JournalEntry.id).in_(journal_ids), col(JournalEntry.status) == JournalStatus.PENDING)
        .values(attempts=JournalEntry.attempts + 1)
        .returning(col(JournalEntry.id))
    )
    return {id_ for id_ in session.execute(statement).scalars() if id_ is not None}


def undo_attempt(*, session: Session, journal_id: int) -> None:
    """Take back an attempt that ended with the entry still pending on purpose (deferred, skipped)."""
    session.execute(
        update(JournalEntry)
        .where(
            col(JournalEntry.id) == journal_id,
            col(JournalEntry.status) == JournalStatus.PENDING,
            col(JournalEntry.attempts) > 0,
        )
        .values(attempts=JournalEntry.attempts - 1)
    )


@dataclass(frozen=True)
class Finished:
    journal_id: int
    status: JournalStatus
    reason: str | None = None


def finish_many(*, session: Session, finished: Sequence[Finished]) -> None:
    """Mark pending entries done or duplicate (a no-op for one not pending any more): one statement,
    a parameter set per entry."""
    if not finished:
        return
    statement = (
        update(JournalEntry)
        .where(col(JournalEntry.id) == bindparam("entry_id"), col(JournalEntry.status) == JournalStatus.PENDING)
        .values(status=bindparam("new_status"), reason=bindparam("new_reason"), processed_at=bindparam("at"))
    )
    now = utcnow()
    session.connection().execute(
        statement,
        [
            {
                "entry_id": item.journal_id,
                "new_status": item.status,
                "new_reason": None if item.reason is None else storable_text(item.reason),
                "at": now,
            }
            for item in finished
        ],
    )


def quarantine(*, session: Session, journal_id: int, reason: str) -> None:
    session.execute(
        update(JournalEntry)
        .where(col(JournalEntry.id) == journal_id, col(JournalEntry.status) == JournalStatus.PENDING)
        .values(status=JournalStatus.QUARANTINED, reason=storable_text(reason)[:4000], processed_at=utcnow())
    )


def pending_ids(
    *, session: Session, received_before: datetime | None = None, limit: int = 500
) -> list[tuple[int, str]]:
    """(id, received_by) of pending entries, oldest first."""
    statement = select(JournalEntry.id, JournalEntry.received_by).where(JournalEntry.status == JournalStatus.PENDING)
    if received_before is not None:
        statement = statement.where(JournalEntry.received_at < received_before)
    return [(id_, by) for id_, by in session.exec(statement.order_by(col(JournalEntry.id)).limit(limit)) if id_]


def list_quarantined(*, session: Session) -> Sequence[JournalEntry]:
    statement = (
        select(JournalEntry).where(JournalEntry.status == JournalStatus.QUARANTINED).order_by(col(JournalEntry.id))
    )
    return session.exec(statement).all()


def requeue_quarantined(*, session: Session, journal_id: int | None = None) -> list[int]:
    """Put quarantined entries (one, or all when journal_id is None) back to pending, with fresh attempts."""
    statement = select(JournalEntry.id).where(JournalEntry.status == JournalStatus.QUARANTINED)
    if journal_id is not None:
        statement = statement.where(JournalEntry.id == journal_id)
    ids = [id_ for id_ in session.exec(statement) if id_ is not None]
    if ids:
        session.execute(
            update(JournalEntry).where(col(JournalEntry.id).in_(ids)).values(status=JournalStatus.PENDING, attempts=0)
        )
    return ids
