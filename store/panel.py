"""Repository functions for the customer panel: a login's view of cases, messages and attachments.

Every lookup is scoped by a `Scope` (the account, and for a `standard` login its service), so a
case outside it is simply not found. Keyword-only arguments, an explicit session, never a commit.
The correspondence list walks the (account_id, updated_at) index, newest first, so a page costs
the same with a hundred cases or a hundred thousand.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, update
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from store.models import Attachment, Case, Message, Service

# What a customer sees of a case: everything but the staff's internal notes.
VISIBLE_DIRECTIONS = ("inbound", "outbound")


@dataclass(frozen=True)
class Scope:
    account_id: str
    service_id: str | None  # None: every service of the account (an admin login)


def _scoped(statement: SelectOfScalar, scope: Scope) -> SelectOfScalar:
    statement = statement.where(Case.account_id == scope.account_id)
    if scope.service_id is not None:
        statement = statement.where(Case.service_id == scope.service_id)
    return statement


def list_cases(*, session: Session, scope: Scope, offset: int, limit: int) -> Sequence[Case]:
    """One page of the scope's cases, most recently updated first."""
    statement = _scoped(select(Case), scope).order_by(col(Case.updated_at).desc(), col(Case.id).desc())
    return session.exec(statement.offset(offset).limit(limit)).all()


def count_cases(*, session: Session, scope: Scope) -> int:
    # count(*) can be answered from the (account_id, updated_at) index alone.
    return session.exec(_scoped(select(func.count()).select_from(Case), scope)).one()


def unread_counts(*, session: Session, case_ids: Sequence[int]) -> dict[int, int]:
    """Per case: the support office's personal answers the customer has not marked read yet.

    Automatic mail (the acknowledgement of a new case, notices) is left out: counting it would make
    every new case arrive "unread" before anybody has answered.
    """
    if not case_ids:
        return {}
    statement = (
        select(Message.case_id, func.count(col(Message.id)))
        .where(
            col(Message.case_id).in_(case_ids),
            Message.direction == "outbound",
            col(Message.auto_generated).is_(False),
            col(Message.read_at).is_(None),
        )
        .group_by(col(Message.case_id))
    )
    return {case_id: count for case_id, count in session.exec(statement)}


def get_case(*, session: Session, scope: Scope, number: str) -> Case | None:
    return session.exec(_scoped(select(Case).where(Case.number == number), scope)).first()


def visible_messages(*, session: Session, case_id: int) -> Sequence[Message]:
    """The thread as the customer sees it, oldest first; internal notes never appear."""
    statement = (
        select(Message)
        .where(Message.case_id == case_id, col(Message.direction).in_(VISIBLE_DIRECTIONS))
        .order_by(col(Message.id))
    )
    return session.exec(statement).all()


def latest_message_ids(*, session: Session, case_id: int, limit: int = 10) -> list[str]:
    """Message-IDs of the newest visible messages, oldest first: References for a panel reply."""
    statement = (
        select(Message.message_id)
        .where(Message.case_id == case_id, col(Message.direction).in_(VISIBLE_DIRECTIONS))
        .order_by(col(Message.id).desc())
        .limit(limit)
    )
    return list(reversed(session.exec(statement).all()))


def _visible_attachment(attachment_id: int) -> SelectOfScalar:
    return (
        select(Attachment)
        .join(Message, col(Message.id) == col(Attachment.message_id))
        .join(Case, col(Case.id) == col(Message.case_id))
        .where(Attachment.id == attachment_id, col(Message.direction).in_(VISIBLE_DIRECTIONS))
    )


def get_attachment(*, session: Session, scope: Scope, attachment_id: int) -> Attachment | None:
    """An attachment of a message the scope may see (never one of an internal note)."""
    return session.exec(_scoped(_visible_attachment(attachment_id), scope)).first()


def get_linked_attachment(*, session: Session, attachment_id: int) -> Attachment | None:
    """An attachment reached through a signed link: the scope was checked when the link was made."""
    return session.exec(_visible_attachment(attachment_id)).first()


def foreign_services(*, session: Session, account_id: str, service_ids: Sequence[str]) -> list[str]:
    """Which of `service_ids` already belong to another account (service ids are global)."""
    if not service_ids:
        return []
    statement = select(Service.id).where(col(Service.id).in_(service_ids), Service.account_id != account_id)
    return sorted(session.exec(statement).all())


def mark_read(*, session: Session, case_id: int, now: datetime) -> int:
    """Mark every outgoing message of the case read by the customer; returns how many changed."""
    result = session.execute(
        update(Message)
        .where(
            col(Message.case_id) == case_id,
            col(Message.direction) == "outbound",
            col(Message.read_at).is_(None),
        )
        .values(read_at=now)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
