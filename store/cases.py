"""Repository functions for cases, their messages, participants and attachments.

Keyword-only arguments, an explicit session, never a commit. Every lookup on the threading path
(Message-ID, case number, participant address, raw hash) is a single indexed query.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import func, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, col, select

from store.models import (
    Attachment,
    Case,
    CaseNumberCounter,
    Message,
    OutboxItem,
    Participant,
    SecurityEvent,
)


def _upsert(session: Session) -> Callable[..., Any]:
    return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


def next_case_number(*, session: Session, year: int) -> str:
    """YYYY-NNNNNN, unique across instances: one atomic upsert on the year's counter row."""
    insert = _upsert(session)
    statement = (
        insert(CaseNumberCounter)
        .values(year=year, last=1)
        .on_conflict_do_update(index_elements=["year"], set_={"last": col(CaseNumberCounter.last) + 1})
        .returning(col(CaseNumberCounter.last))
    )
    last = session.execute(statement).scalar_one()
    return f"{year}-{last:06d}"


def get_case(*, session: Session, case_id: int) -> Case | None:
    return session.get(Case, case_id)


def get_case_by_number(*, session: Session, number: str) -> Case | None:
    return session.exec(select(Case).where(Case.number == number)).first()


def find_case_by_message_ids(*, session: Session, message_ids: Sequence[str]) -> Case | None:
    """The case holding any of `message_ids` (the newest reference wins), or None."""
    wanted = [mid for mid in message_ids if mid][-50:]  # References can be absurdly long
    if not wanted:
        return None
    rows = session.exec(select(Message.message_id, Message.case_id).where(col(Message.message_id).in_(wanted))).all()
    case_by_message_id: dict[str, int | None] = {message_id: case_id for message_id, case_id in rows}
    # Staff notifications are outbox rows only (not case messages), yet staff reply to them.
    unseen = [mid for mid in wanted if mid not in case_by_message_id]
    if unseen:
        outgoing = session.exec(
            select(OutboxItem.message_id, OutboxItem.case_id).where(col(OutboxItem.message_id).in_(unseen))
        ).all()
        case_by_message_id.update({message_id: case_id for message_id, case_id in outgoing})
    for message_id in reversed(wanted):
        case_id = case_by_message_id.get(message_id)
        if case_id is not None:
            return session.get(Case, case_id)
    return None


def is_participant(*, session: Session, case_id: int, email: str) -> bool:
    statement = select(Participant.id).where(Participant.case_id == case_id, Participant.email == email)
    return session.exec(statement).first() is not None


def add_participants(*, session: Session, case_id: int, emails: Iterable[str]) -> None:
    wanted = {email for email in emails if email}
    if not wanted:
        return
    known = set(
        session.exec(
            select(Participant.email).where(Participant.case_id == case_id, col(Participant.email).in_(wanted))
        ).all()
    )
    for email in sorted(wanted - known):
        session.add(Participant(case_id=case_id, email=email))


def add_message(*, session: Session, case: Case, message: Message) -> Message:
    assert case.id is not None, "the case is flushed before its messages"
    message.case_id = case.id
    session.add(message)
    case.message_count += 1
    session.add(case)
    session.flush()
    return message


def add_attachment(*, session: Session, attachment: Attachment) -> None:
    session.add(attachment)


def record_security_event(*, session: Session, event: SecurityEvent) -> None:
    session.add(event)


def list_cases(*, session: Session, limit: int | None = None) -> Sequence[Case]:
    statement = select(Case).order_by(col(Case.updated_at).desc(), col(Case.id).desc())
    if limit is not None:
        statement = statement.limit(limit)
    return session.exec(statement).all()


def case_messages(*, session: Session, case_id: int) -> Sequence[Message]:
    statement = select(Message).where(Message.case_id == case_id).order_by(col(Message.received_at), col(Message.id))
    return session.exec(statement).all()


def message_attachments(*, session: Session, message_ids: Sequence[int]) -> dict[int, list[Attachment]]:
    by_message: dict[int, list[Attachment]] = {message_id: [] for message_id in message_ids}
    if not message_ids:
        return by_message
    statement = select(Attachment).where(col(Attachment.message_id).in_(message_ids)).order_by(col(Attachment.id))
    for attachment in session.exec(statement):
        by_message[attachment.message_id].append(attachment)
    return by_message


def count_cases(*, session: Session) -> int:
    return session.exec(select(func.count()).select_from(Case)).one()


def mark_outbound_delivery(*, session: Session, outbox_id: int, status: str) -> None:
    session.execute(update(Message).where(col(Message.outbox_id) == outbox_id).values(delivery_status=status))
