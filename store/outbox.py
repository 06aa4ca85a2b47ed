"""Repository functions for the outbox table: enqueue, claim due rows, record each attempt.

A row is claimed by one instance at a time (`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite has a
single writer) and carries a lease (`claimed_until`), so a row whose sender died is sent again
by whoever claims it after the lease; its Message-ID never changes between attempts.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, or_, update
from sqlmodel import Session, col, select

from store import cases
from store.models import Message, OutboxItem, utcnow
from store.rows import Dependent, add_later, insert_row, values_of


def enqueue(*, session: Session, item: OutboxItem) -> OutboxItem:
    """Write `item` at once and return it with its id (not attached to the session: read the row
    again with get_item to change it)."""
    item.id = queue_row(session=session, values=values_of(item))
    return item


def queue_row(*, session: Session, values: dict[str, Any]) -> int:
    """Insert an outbox row from its values (a Core INSERT: every outgoing mail is one, and the
    ORM's unit of work cost more than rendering the mail); returns its id."""
    outbox_id = insert_row(session, OutboxItem, values)
    _count_queued(session, values)
    return outbox_id


def queue_row_later(*, session: Session, values: dict[str, Any], carried_by: dict[str, Any] | None) -> None:
    """`queue_row` at the end of the batch (store.rows.add_later); `carried_by` is the case message
    (Message values) that refers to the row, inserted after it with its id as `outbox_id`."""
    dependents = [] if carried_by is None else [Dependent(Message, carried_by, "outbox_id")]
    add_later(session, OutboxItem, values, dependents=dependents, key="message_id")
    _count_queued(session, values)


def _count_queued(session: Session, values: dict[str, Any]) -> None:
    if values.get("automatic"):
        AutomaticCounts.of(session).queued(str(values["recipient"]))


def claim_due(*, session: Session, instance: str, lease: timedelta, limit: int = 20) -> Sequence[OutboxItem]:
    now = utcnow()
    statement = (
        select(OutboxItem)
        .where(
            or_(
                (col(OutboxItem.status) == "queued") & (col(OutboxItem.next_attempt_at) <= now),
                (col(OutboxItem.status) == "sending") & (col(OutboxItem.claimed_until) < now),
            )
        )
        .order_by(col(OutboxItem.id))
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        statement = statement.with_for_update(skip_locked=True)
    items = session.exec(statement).all()
    for item in items:
        item.status = "sending"
        item.claimed_by = instance
        item.claimed_until = now + lease
        session.add(item)
    return items


def release(*, session: Session, item_id: int, instance: str) -> None:
    """Hand a claimed row back unattempted (its lease would not cover an attempt any more)."""
    item = session.get(OutboxItem, item_id)
    if item is not None and item.status == "sending" and item.claimed_by == instance:
        item.status = "queued"
        item.claimed_by = item.claimed_until = None
        session.add(item)


def next_due_at(*, session: Session) -> datetime | None:
    statement = select(func.min(OutboxItem.next_attempt_at)).where(OutboxItem.status == "queued")
    return session.exec(statement).one()


def get_item(*, session: Session, item_id: int) -> OutboxItem | None:
    return session.get(OutboxItem, item_id)


def mark_sent(*, session: Session, item_ids: Sequence[int]) -> int:
    """Record that the relay accepted rows `item_ids` (and their case messages' delivery status);
    returns how many were not recorded already. Two UPDATEs for them all and no SELECT: loading a
    row (with its raw message) cost more than sending it, and the outbox worker records the mails
    a pass sends together (gateway.outbound.worker._SentMarks)."""
    if not item_ids:
        return 0
    parameters = {"item_ids": sorted(set(item_ids)), "now": utcnow()}
    returned = session.connection().execute(_MARK_SENT, parameters).scalars()
    marked = [row_id for row_id in returned if row_id is not None]  # ids: never None
    if marked:
        cases.mark_outbound_delivery(session=session, outbox_ids=marked, status="sent")
    return len(marked)


# Built once (see store.cases._SQLITE_NEXT_NUMBER).
_MARK_SENT = (
    update(OutboxItem)
    .where(col(OutboxItem.id).in_(bindparam("item_ids", expanding=True)), col(OutboxItem.status) != "sent")
    .values(
        status="sent",
        sent_at=bindparam("now"),
        attempts=col(OutboxItem.attempts) + 1,
        claimed_by=None,
        claimed_until=None,
    )
    .returning(col(OutboxItem.id))
)


def find_by_message_id(*, session: Session, message_id: str) -> OutboxItem | None:
    return session.exec(select(OutboxItem).where(OutboxItem.message_id == message_id)).first()


class AutomaticCounts:
    """Automatic mail queued in the last hour, per recipient and in all, as one transaction sees it.

    The pipeline asks both limits (per sender, and the global cap) for every message of a batch;
    asked of the database each time, the global count alone re-reads an hour of outgoing mail per
    message. Counted once per transaction (the recipients of a batch in one query) and kept up to
    date by `enqueue` in it. A row queued by an entry whose savepoint was rolled back stays
    counted until the transaction ends: the limits can only come a little early, never late.
    """

    _KEY = "automatic_counts"

    def __init__(self, session: Session) -> None:
        self._session = session
        self._since = utcnow() - timedelta(hours=1)
        self._to: dict[str, int] = {}
        self._all_but: dict[str, int] = {}  # excluded recipient (the staff queue) -> count

    @classmethod
    def of(cls, session: Session) -> AutomaticCounts:
        counts = session.info.get(cls._KEY)
        if counts is None:
            counts = session.info[cls._KEY] = cls(session)
        return counts

    def load(self, recipients: Sequence[str]) -> None:
        """Read the counts of several recipients at once (a batch's senders)."""
        wanted = sorted({recipient.lower() for recipient in recipients} - self._to.keys())
        if not wanted:
            return
        statement = (
            select(col(OutboxItem.recipient), func.count())
            .where(
                col(OutboxItem.recipient).in_(wanted),
                col(OutboxItem.automatic).is_(True),
                col(OutboxItem.created_at) >= self._since,
            )
            .group_by(col(OutboxItem.recipient))
        )
        found = dict(self._session.exec(statement).all())
        self._to.update({recipient: int(found.get(recipient, 0)) for recipient in wanted})

    def to(self, recipient: str) -> int:
        recipient = recipient.lower()
        if recipient not in self._to:
            self._to[recipient] = count_automatic_to(session=self._session, recipient=recipient, since=self._since)
        return self._to[recipient]

    def all_but(self, excluded: str) -> int:
        """Automatic mail to anyone but `excluded` (the staff queue: notices to staff are not replies)."""
        excluded = excluded.lower()
        if excluded not in self._all_but:
            statement = (
                select(func.count())
                .select_from(OutboxItem)
                .where(
                    col(OutboxItem.created_at) >= self._since,
                    col(OutboxItem.automatic).is_(True),
                    col(OutboxItem.recipient) != excluded,
                )
            )
            self._all_but[excluded] = int(self._session.exec(statement).one())
        return self._all_but[excluded]

    def queued(self, recipient: str) -> None:
        recipient = recipient.lower()
        if recipient in self._to:
            self._to[recipient] += 1
        for excluded in self._all_but:
            if recipient != excluded:
                self._all_but[excluded] += 1


def count_automatic_to(*, session: Session, recipient: str, since: datetime) -> int:
    statement = (
        select(func.count())
        .select_from(OutboxItem)
        .where(
            OutboxItem.recipient == recipient,
            col(OutboxItem.automatic).is_(True),
            OutboxItem.created_at >= since,
        )
    )
    return session.exec(statement).one()


def list_items(*, session: Session, status: str | None = None) -> Sequence[OutboxItem]:
    statement = select(OutboxItem).order_by(col(OutboxItem.id))
    if status is not None:
        statement = statement.where(OutboxItem.status == status)
    return session.exec(statement).all()
