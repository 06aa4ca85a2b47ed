"""Repository functions for cases, their messages, participants and attachments.

Keyword-only arguments, an explicit session, never a commit. Every lookup on the threading path
(Message-ID, case number, participant address, raw hash) is a single indexed query.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, func, text, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError
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
from store.rows import LaterRows, add_later, insert_row, values_of


def next_case_number(*, session: Session, year: int) -> str:
    """YYYY-NNNNNN, unique across instances.

    SQLite (one writer at a time): one atomic upsert on the year's counter row. PostgreSQL: a
    sequence per year, because a counter row stays locked until the transaction commits, and the
    pipeline's transactions hold a whole batch: instances would take turns instead of working side
    by side. A sequence never waits; a rolled-back entry leaves a gap in the numbers, as a help
    desk's numbers may have.
    """
    if session.get_bind().dialect.name == "postgresql":
        return f"{year}-{_next_in_sequence(session, year):06d}"
    last = session.connection().execute(_SQLITE_NEXT_NUMBER, {"year": year}).scalar_one()
    return f"{year}-{last:06d}"


# Built once: constructing the upsert for every case cost 0.4 ms (SQLAlchemy 2.0's construction
# and cache-key work), more than executing it; built once, its compiled form comes from the cache.
_SQLITE_NEXT_NUMBER = (
    sqlite_insert(CaseNumberCounter)
    .values(year=bindparam("year"), last=1)
    .on_conflict_do_update(index_elements=["year"], set_={"last": col(CaseNumberCounter.last) + 1})
    .returning(col(CaseNumberCounter.last))
)


def _next_in_sequence(session: Session, year: int) -> int:
    name = f"case_number_{int(year)}"
    connection = session.connection()
    # Asked once per pooled connection and year, not for every case (a round trip each time). The
    # gateway never drops a sequence; a database restored under running instances needs them
    # restarted anyway (their pooled connections and cached numbers predate it).
    known: set[str] = connection.info.setdefault(_KNOWN_SEQUENCES, set())
    if name not in known:
        if connection.execute(text("SELECT to_regclass(:name)"), {"name": name}).scalar() is None:
            _create_sequence(session.get_bind(), name, year)
        known.add(name)
    return int(connection.execute(text(f"SELECT nextval('{name}')")).scalar_one())


_KNOWN_SEQUENCES = "store.cases.known_sequences"  # key of Connection.info (kept with the DBAPI connection)


def _create_sequence(bind: Engine | Connection, name: str, year: int) -> None:
    # Outside the caller's transaction (DDL there would hold a catalog lock until it commits), and
    # starting after what the year's counter row handed out before sequences were used.
    engine = bind if isinstance(bind, Engine) else bind.engine
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        last = connection.execute(select(CaseNumberCounter.last).where(CaseNumberCounter.year == year)).scalar()
        try:
            connection.execute(text(f"CREATE SEQUENCE IF NOT EXISTS {name} START WITH {int(last or 0) + 1}"))
        except DBAPIError:
            pass  # another instance created it at the same moment: theirs serves as well


def get_case(*, session: Session, case_id: int) -> Case | None:
    return session.get(Case, case_id)


def get_case_by_number(*, session: Session, number: str) -> Case | None:
    return session.exec(_CASE_BY_NUMBER, params={"number": number}).first()


# The threading path's queries, built once like _SQLITE_NEXT_NUMBER: every message asks some of
# them, and building a statement (construction, its cache key) cost about as much as running it.
_CASE_BY_NUMBER = select(Case).where(Case.number == bindparam("number"))
# Rows a batch writes later (store.rows.LaterRows) are of mail not sent yet: no message can refer
# to their Message-IDs (unguessable) before they leave, so these need not wait for them.
_CASES_OF_MESSAGES = (
    select(Message.message_id, Message.case_id)
    .where(col(Message.message_id).in_(bindparam("message_ids", expanding=True)))
    .execution_options(**LaterRows.NOT_NEEDED)
)
_CASES_OF_OUTBOX_ROWS = (
    select(OutboxItem.message_id, OutboxItem.case_id)
    .where(col(OutboxItem.message_id).in_(bindparam("message_ids", expanding=True)))
    .execution_options(**LaterRows.NOT_NEEDED)
)
_IS_PARTICIPANT = select(Participant.id).where(
    Participant.case_id == bindparam("case_id"), Participant.email == bindparam("email")
)
_KNOWN_PARTICIPANTS = select(Participant.email).where(
    Participant.case_id == bindparam("case_id"), col(Participant.email).in_(bindparam("emails", expanding=True))
)


def find_case_by_message_ids(*, session: Session, message_ids: Sequence[str]) -> Case | None:
    """The case holding any of `message_ids` (the newest reference wins), or None."""
    wanted = [mid for mid in message_ids if mid][-50:]  # References can be absurdly long
    if not wanted:
        return None
    rows = session.exec(_CASES_OF_MESSAGES, params={"message_ids": wanted}).all()
    case_by_message_id: dict[str, int | None] = {message_id: case_id for message_id, case_id in rows}
    # Staff notifications are outbox rows only (not case messages), yet staff reply to them.
    unseen = [mid for mid in wanted if mid not in case_by_message_id]
    if unseen:
        outgoing = session.exec(_CASES_OF_OUTBOX_ROWS, params={"message_ids": unseen}).all()
        case_by_message_id.update({message_id: case_id for message_id, case_id in outgoing})
    for message_id in reversed(wanted):
        case_id = case_by_message_id.get(message_id)
        if case_id is not None:
            return session.get(Case, case_id)
    return None


def is_participant(*, session: Session, case_id: int, email: str) -> bool:
    return session.exec(_IS_PARTICIPANT, params={"case_id": case_id, "email": email}).first() is not None


def add_participants(*, session: Session, case_id: int, emails: Iterable[str], new_case: bool = False) -> None:
    """Make `emails` participants of the case (those it has already are left alone; a case opened
    in this transaction has none yet, so `new_case` saves looking)."""
    wanted = {email for email in emails if email}
    if not wanted:
        return
    known: set[str] = set()
    if not new_case:
        known = set(session.exec(_KNOWN_PARTICIPANTS, params={"case_id": case_id, "emails": sorted(wanted)}).all())
    for email in sorted(wanted - known):  # with the batch's other rows (a query of them flushes them first)
        add_later(session, Participant, {"case_id": case_id, "email": email})


def add_message(*, session: Session, case: Case, values: dict[str, Any]) -> int:
    """Insert a message of `case` (columns of Message as values) and count it; returns its id."""
    assert case.id is not None, "the case is flushed before its messages"
    return insert_row(session, Message, message_later(session=session, case=case, values=values))


def message_later(*, session: Session, case: Case, values: dict[str, Any]) -> dict[str, Any]:
    """The values of a message of `case`, for the caller to insert (now, or later with
    store.rows.LaterRows); counted now."""
    assert case.id is not None, "the case is flushed before its messages"
    case.message_count += 1  # written with the case's other changes at the next flush
    session.add(case)
    return {**values, "case_id": case.id}


def add_attachment(*, session: Session, attachment: Attachment) -> None:
    attachment.id = insert_row(session, Attachment, values_of(attachment))


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


def mark_outbound_delivery(*, session: Session, outbox_ids: Sequence[int], status: str) -> None:
    """The delivery status of the case messages that carry outbox rows `outbox_ids`."""
    session.connection().execute(_DELIVERY_STATUS, {"row_ids": list(outbox_ids), "new_status": status})


# Built once (see _SQLITE_NEXT_NUMBER): the outbox worker sets it for every mail it sends.
_DELIVERY_STATUS = (
    update(Message)
    .where(col(Message.outbox_id).in_(bindparam("row_ids", expanding=True)))
    .values(delivery_status=bindparam("new_status"))
)
