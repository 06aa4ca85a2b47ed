"""Repository functions sender trust needs: the global count of automatic mail, security events by kind.

Keyword-only, an explicit session, never a commit (the pipeline owns the transaction).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func
from sqlmodel import Session, col, select

from store.models import OutboxItem, SecurityEvent


def count_automatic_since(*, session: Session, since: datetime, staff_queue: str) -> int:
    """Automatic mail to senders (not to the staff queue) queued since `since`, whatever its state.

    A range over the created_at index (migration 0003): at most an hour of outgoing mail.
    """
    statement = (
        select(func.count())
        .select_from(OutboxItem)
        .where(
            col(OutboxItem.created_at) >= since,
            col(OutboxItem.automatic).is_(True),
            col(OutboxItem.recipient) != staff_queue.lower(),
        )
    )
    return int(session.exec(statement).one())


def security_events(*, session: Session, kind: str | None = None) -> Sequence[SecurityEvent]:
    statement = select(SecurityEvent).order_by(col(SecurityEvent.id))
    if kind is not None:
        statement = statement.where(col(SecurityEvent.kind) == kind)
    return session.exec(statement).all()
