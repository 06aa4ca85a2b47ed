"""Every table of the gateway, in one place (SQLModel; SQLite and PostgreSQL alike).

Schema changes go through Alembic (store/migrations); this module is what the migrations describe.
Timestamps are aware UTC datetimes (SQLModel's UTCDateTime), produced by `utcnow()`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, LargeBinary, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from store.states import CaseStatus, JournalStatus, OutboxStatus


def utcnow() -> datetime:
    return datetime.now(UTC)


# --- directory (filled by the panel: PUT /api/accounts/{account}) ---------------------------------


class Account(SQLModel, table=True):
    id: str = Field(primary_key=True, max_length=100)
    name: str = ""
    language: str | None = Field(default=None, max_length=8)


class Service(SQLModel, table=True):
    id: str = Field(primary_key=True, max_length=100)
    account_id: str = Field(foreign_key="account.id", index=True, max_length=100)
    name: str = ""


class Contact(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    account_id: str = Field(foreign_key="account.id", index=True, max_length=100)
    kind: str = Field(max_length=20)  # representative | technical | billing
    name: str = ""
    email: str = Field(index=True, max_length=320)  # stored lower-case


# --- the durable journal of raw input --------------------------------------------------------------


class JournalEntry(SQLModel, table=True):
    """Raw bytes exactly as received; written and committed before anything is acknowledged.

    With SQLite the journal is a database file of its own (GATEWAY_DATA_DIR/journal.db), so that
    acknowledging never waits for the pipeline's write lock; with PostgreSQL it is this table in
    the one shared database. Either way nothing here refers to the other tables.
    """

    __tablename__ = "journal_entry"
    __table_args__ = (Index("ix_journal_entry_status_id", "status", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    source: str = Field(max_length=10)  # smtp | imap | panel | file
    raw: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    raw_sha256: str = Field(index=True, max_length=64)
    size: int
    received_at: datetime = Field(default_factory=utcnow)
    # Envelope, trace and producer facts kept apart from the raw bytes so they stay byte-exact:
    # mail_from, rcpt_tos, peer, received (our trace line), panel identity, imap mailbox/uid.
    meta: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # store.states.JournalStatus: pending -> done | duplicate | quarantined (-> pending again on retry)
    status: str = Field(default=JournalStatus.PENDING, max_length=12)
    reason: str | None = Field(default=None, sa_column=Column(Text))
    attempts: int = 0
    processed_at: datetime | None = None
    received_by: str = Field(default="", max_length=200)  # instance that acknowledged it


class ProcessedEntry(SQLModel, table=True):
    """A journal entry the pipeline has finished, written in the same transaction as its effects.

    It makes processing idempotent when the journal lives in another database (a crash between
    the two commits only means the entry is marked done again later), and it is what duplicates
    are recognised by: the same raw bytes, or the same Message-ID from the same sender with the
    same content (a different message that reuses an ID is not a duplicate).
    """

    __tablename__ = "processed_entry"
    __table_args__ = (Index("ix_processed_entry_msgid_sender", "message_id", "sender"),)

    journal_id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    outcome: str = Field(max_length=12)  # store.states.Outcome: done | duplicate
    raw_sha256: str = Field(index=True, max_length=64)
    message_id: str | None = Field(default=None, max_length=998)
    sender: str | None = Field(default=None, max_length=320)
    # What the message was (gateway.parse's content digest); None on rows older than migration 0004.
    content_digest: str | None = Field(default=None, max_length=64)
    case_id: int | None = Field(default=None, foreign_key="support_case.id")
    duplicate_of: int | None = None  # journal id of the original
    processed_at: datetime = Field(default_factory=utcnow)


# --- cases and their messages ---------------------------------------------------------------------


class CaseNumberCounter(SQLModel, table=True):
    """Last case number handed out per year; bumped with an UPDATE so instances never collide."""

    __tablename__ = "case_number_counter"
    year: int = Field(primary_key=True)
    last: int = 0


class Case(SQLModel, table=True):
    __tablename__ = "support_case"  # "case" is an SQL keyword
    __table_args__ = (Index("ix_case_account_updated", "account_id", "updated_at"),)

    id: int | None = Field(default=None, primary_key=True)
    number: str = Field(unique=True, max_length=20)
    subject: str = Field(default="", sa_column=Column(Text, nullable=False))
    status: str = Field(default=CaseStatus.OPEN, max_length=10)  # store.states.CaseStatus
    requester: str = Field(index=True, max_length=320)  # lower-case address
    requester_name: str = ""
    language: str = Field(default="pl", max_length=8)
    category: str | None = Field(default=None, max_length=100)
    account_id: str | None = Field(default=None, foreign_key="account.id", max_length=100)
    service_id: str | None = Field(default=None, max_length=100)
    # A follow-up after the reopen window opens a new case that refers to the old one.
    follows_case_id: int | None = Field(default=None, foreign_key="support_case.id")
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow, index=True)
    closed_at: datetime | None = None
    message_count: int = 0
    # Set by `gateway erase`: the number stays (a tombstone), everything about the person is gone.
    erased_at: datetime | None = None


class Participant(SQLModel, table=True):
    """Addresses allowed to write into a case (requester, anyone on From/To/Cc of its messages)."""

    __table_args__ = (UniqueConstraint("case_id", "email"),)

    id: int | None = Field(default=None, primary_key=True)
    case_id: int = Field(foreign_key="support_case.id", index=True)
    email: str = Field(index=True, max_length=320)


class Message(SQLModel, table=True):
    __table_args__ = (Index("ix_message_msgid_sender", "message_id", "sender"),)

    id: int | None = Field(default=None, primary_key=True)
    case_id: int = Field(foreign_key="support_case.id", index=True)
    journal_id: int | None = Field(default=None, index=True)  # the journal may be another database
    direction: str = Field(max_length=10)  # store.states.Direction: inbound | outbound | note
    source: str = Field(max_length=10)  # smtp | imap | panel | staff | system | file
    message_id: str = Field(index=True, max_length=998)  # without angle brackets
    sender: str = Field(default="", max_length=320)  # lower-case address of From
    from_header: str = Field(default="", sa_column=Column(Text, nullable=False))
    to_header: str = Field(default="", sa_column=Column(Text, nullable=False))
    cc_header: str = Field(default="", sa_column=Column(Text, nullable=False))
    subject: str = Field(default="", sa_column=Column(Text, nullable=False))
    date: datetime | None = None
    text: str = Field(default="", sa_column=Column(Text, nullable=False))
    html: str | None = Field(default=None, sa_column=Column(Text))
    auto_generated: bool = False
    raw_sha256: str = Field(default="", index=True, max_length=64)
    defects: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    # inbound and notes: gateway.trust.TrustVerdict.as_json() (who really sent it); None for our own mail
    trust: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    # outbound only: the outbox row that carries it (queued | sent | failed lives there)
    outbox_id: int | None = Field(default=None, foreign_key="outbox_item.id", index=True)
    delivery_status: str | None = Field(default=None, max_length=12)
    read_at: datetime | None = None  # read by the customer in the panel
    # When the gateway received it (journal time; for outbound mail, when it was queued): the
    # order of a case's messages, also when several instances process them.
    received_at: datetime = Field(default_factory=utcnow)
    created_at: datetime = Field(default_factory=utcnow)


class Attachment(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    message_id: int = Field(foreign_key="message.id", index=True)
    filename: str = Field(default="", sa_column=Column(Text, nullable=False))
    content_type: str = Field(default="application/octet-stream", max_length=255)
    size: int = 0
    sha256: str | None = Field(default=None, max_length=64)  # None when refused
    refused: bool = False
    reason: str | None = None
    content_id: str | None = Field(default=None, max_length=998)
    inline: bool = False


class Blob(SQLModel, table=True):
    """Attachment contents by SHA-256, for deployments that keep them in the database."""

    sha256: str = Field(primary_key=True, max_length=64)
    size: int
    content: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class SecurityEvent(SQLModel, table=True):
    """A refused attempt to write into someone else's case, and similar facts for audits."""

    __tablename__ = "security_event"
    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=40)
    sender: str = Field(default="", max_length=320)
    target_case_id: int | None = Field(default=None, foreign_key="support_case.id")
    new_case_id: int | None = Field(default=None, foreign_key="support_case.id")
    journal_id: int | None = None
    detail: str = Field(default="", sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)


# --- the one outbox -------------------------------------------------------------------------------


class OutboxItem(SQLModel, table=True):
    __tablename__ = "outbox_item"
    __table_args__ = (
        Index("ix_outbox_due", "status", "next_attempt_at"),
        Index("ix_outbox_recipient_created", "recipient", "created_at"),
        Index("ix_outbox_item_created_at", "created_at"),  # the global hourly count of automatic mail
    )

    id: int | None = Field(default=None, primary_key=True)
    case_id: int | None = Field(default=None, foreign_key="support_case.id", index=True)
    kind: str = Field(max_length=40)  # the template: ack, refused, staff_reply, notification, ...
    automatic: bool = True
    mail_from: str = Field(max_length=320)  # envelope sender
    recipient: str = Field(max_length=320)  # envelope recipient, lower-case
    message_id: str = Field(unique=True, max_length=998)  # fixed before the first attempt
    raw: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    status: str = Field(default=OutboxStatus.QUEUED, max_length=10)  # store.states.OutboxStatus
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=utcnow)
    claimed_by: str | None = Field(default=None, max_length=200)
    claimed_until: datetime | None = None
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(default_factory=utcnow)
    sent_at: datetime | None = None


# --- erasure audit (GDPR / RODO art. 17) ------------------------------------------------------------


class ErasureRecord(SQLModel, table=True):
    """Who erased what, and when. The erased address itself is not kept: only its SHA-256, so an
    auditor can check a request against the record without the record re-identifying anyone."""

    __tablename__ = "erasure_record"
    id: int | None = Field(default=None, primary_key=True)
    actor: str = Field(max_length=200)
    target_kind: str = Field(max_length=10)  # address | case
    target: str = Field(max_length=100)  # sha256 of the address, or the case number
    counts: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)


# --- small shared state ---------------------------------------------------------------------------


class KeyValue(SQLModel, table=True):
    """Generated secrets and other single values every instance must agree on."""

    __tablename__ = "key_value"
    key: str = Field(primary_key=True, max_length=100)
    value: str = Field(sa_column=Column(Text, nullable=False))


class ImapState(SQLModel, table=True):
    """Where each mailbox's poller stands: UIDVALIDITY and the highest UID already journaled."""

    __tablename__ = "imap_state"
    mailbox: str = Field(primary_key=True, max_length=200)
    uidvalidity: int = 0
    last_uid: int = 0
    updated_at: datetime = Field(default_factory=utcnow)
