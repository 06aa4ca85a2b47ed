"""Repository functions sender trust needs: security events by kind.

Keyword-only, an explicit session, never a commit (the pipeline owns the transaction).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlmodel import Session, col, select

from store.models import SecurityEvent


def security_events(*, session: Session, kind: str | None = None) -> Sequence[SecurityEvent]:
    statement = select(SecurityEvent).order_by(col(SecurityEvent.id))
    if kind is not None:
        statement = statement.where(col(SecurityEvent.kind) == kind)
    return session.exec(statement).all()
