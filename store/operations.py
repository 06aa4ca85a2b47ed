"""Repository functions for operators: backlog, queue and failure figures, and hourly traffic.

What /metrics computes at scrape time and /status shows. Read-only: keyword-only arguments, an
explicit session, never a commit. The journal may live in a database of its own (SQLite), so the
journal functions and the others are called with different sessions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, func
from sqlalchemy.orm import Mapped
from sqlmodel import Session, col, select

from store.models import Case, JournalEntry, OutboxItem
from store.states import CaseStatus, JournalStatus, OutboxStatus

HOUR_FORMAT = "%Y-%m-%d %H"
Timestamp = Mapped[datetime] | Mapped[datetime | None]  # a timestamp column of a table


@dataclass(frozen=True)
class JournalFigures:
    pending: int  # acknowledged, not processed yet (on every instance)
    oldest_pending_at: datetime | None  # when the oldest of them was received
    quarantined: int


@dataclass(frozen=True)
class OutboxFigures:
    queued: int  # waiting for a first or a next attempt, or being sent right now
    oldest_due_at: datetime | None  # the earliest next_attempt_at among queued rows already due
    failed: int


def journal_figures(*, session: Session) -> JournalFigures:
    pending = session.exec(
        select(func.count(), func.min(JournalEntry.received_at)).where(JournalEntry.status == JournalStatus.PENDING)
    ).one()
    quarantined = session.exec(
        select(func.count()).select_from(JournalEntry).where(JournalEntry.status == JournalStatus.QUARANTINED)
    ).one()
    return JournalFigures(pending=pending[0], oldest_pending_at=_aware(pending[1]), quarantined=quarantined)


def outbox_figures(*, session: Session, now: datetime) -> OutboxFigures:
    queued = session.exec(
        select(func.count())
        .select_from(OutboxItem)
        .where(col(OutboxItem.status).in_((OutboxStatus.QUEUED, OutboxStatus.SENDING)))
    ).one()
    oldest_due = session.exec(
        select(func.min(OutboxItem.next_attempt_at)).where(
            OutboxItem.status == OutboxStatus.QUEUED, col(OutboxItem.next_attempt_at) <= now
        )
    ).one()
    failed = session.exec(
        select(func.count()).select_from(OutboxItem).where(OutboxItem.status == OutboxStatus.FAILED)
    ).one()
    return OutboxFigures(queued=queued, oldest_due_at=_aware(oldest_due), failed=failed)


def spam_cases(*, session: Session) -> int:
    return session.exec(select(func.count()).select_from(Case).where(Case.status == CaseStatus.SPAM)).one()


def recent_failures(*, session: Session, limit: int = 10) -> Sequence[OutboxItem]:
    """The outbox rows that failed for good, newest first (their bytes are not needed: deferred)."""
    statement = (
        select(OutboxItem)
        .where(OutboxItem.status == OutboxStatus.FAILED)
        .order_by(col(OutboxItem.id).desc())
        .limit(limit)
    )
    return session.exec(statement).all()


def recent_quarantine(*, session: Session, limit: int = 10) -> Sequence[JournalEntry]:
    statement = (
        select(JournalEntry)
        .where(JournalEntry.status == JournalStatus.QUARANTINED)
        .order_by(col(JournalEntry.id).desc())
        .limit(limit)
    )
    return session.exec(statement).all()


def _hour_of(session: Session, column: Timestamp) -> ColumnElement[str]:
    """The UTC hour of a timestamp column as text 'YYYY-MM-DD HH', grouped in the database."""
    if session.get_bind().dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD HH24")
    return func.strftime(HOUR_FORMAT, column)


def _per_hour(session: Session, column: Timestamp, *conditions: ColumnElement[bool]) -> dict[datetime, int]:
    hour = _hour_of(session, column)
    statement = select(hour, func.count()).where(*conditions).group_by(hour)
    return {
        datetime.strptime(text, HOUR_FORMAT).replace(tzinfo=UTC): count
        for text, count in session.exec(statement)
        if text
    }


def accepted_per_hour(*, session: Session, since: datetime) -> dict[datetime, int]:
    """Journal entries received per UTC hour since `since` (journal session)."""
    return _per_hour(session, col(JournalEntry.received_at), col(JournalEntry.received_at) >= since)


def processed_per_hour(*, session: Session, since: datetime) -> dict[datetime, int]:
    """Journal entries processed (stored, duplicate or quarantined) per UTC hour (journal session)."""
    return _per_hour(session, col(JournalEntry.processed_at), col(JournalEntry.processed_at) >= since)


def sent_per_hour(*, session: Session, since: datetime) -> dict[datetime, int]:
    return _per_hour(
        session,
        col(OutboxItem.sent_at),
        col(OutboxItem.sent_at) >= since,
        col(OutboxItem.status) == OutboxStatus.SENT,
    )


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands back what was stored; the column type makes it aware, but an aggregate may not.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value
