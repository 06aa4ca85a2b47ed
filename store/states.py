"""The states rows and steps pass around, as StrEnums stored as the very same strings as before.

A StrEnum member *is* its string (`JournalStatus.DONE == "done"`), so the columns stay plain
strings (no value migration) and a comparison with a stored value needs no conversion.
"""

from __future__ import annotations

from enum import StrEnum


class JournalStatus(StrEnum):
    """journal_entry.status: pending -> done | duplicate | quarantined (quarantined -> pending on retry)."""

    PENDING = "pending"
    DONE = "done"
    DUPLICATE = "duplicate"
    QUARANTINED = "quarantined"


class Outcome(StrEnum):
    """What processing one journal entry came to (processed_entry.outcome holds DONE or DUPLICATE)."""

    DONE = "done"
    DUPLICATE = "duplicate"
    SKIPPED = "skipped"  # not pending any more, or another instance holds it
    QUARANTINED = "quarantined"
    DEFERRED = "deferred"  # not now: earlier mail of its thread, or the database, is not there yet


class OutboxStatus(StrEnum):
    """outbox_item.status (and message.delivery_status of the case message that carries it)."""

    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"


class CaseStatus(StrEnum):
    OPEN = "open"
    ANSWERED = "answered"
    CLOSED = "closed"
    SPAM = "spam"  # opened by spam: never answered, never in the panel (README "Sender trust")


class VerdictKind(StrEnum):
    """classify.Verdict.kind: what kind of mail a message is."""

    LOOP = "loop"
    BOUNCE = "bounce"
    LIST = "list"
    AUTO_REPLY = "auto_reply"
    STAFF = "staff"
    CUSTOMER = "customer"
    SPAM = "spam"  # a trusted relay said so


class Direction(StrEnum):
    """message.direction."""

    INBOUND = "inbound"
    OUTBOUND = "outbound"
    NOTE = "note"
