"""Repository functions for processed_entry: what the pipeline finished, and duplicate lookups."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlmodel import Session, col, select

from store.models import ProcessedEntry
from store.rows import insert_rows
from store.states import Outcome

# Entries looked at under one Message-ID and sender: a mailer that reuses one ID for everything
# must not make every lookup read its whole history.
_SAME_ID_LIMIT = 20


@dataclass(frozen=True)
class Earlier:
    """What was processed before that a new message must be compared with."""

    original: ProcessedEntry | None  # the same message: the new one is a duplicate of it
    id_reused_by: ProcessedEntry | None = None  # a different message under the same Message-ID and sender


def get_processed(*, session: Session, journal_id: int) -> ProcessedEntry | None:
    return session.get(ProcessedEntry, journal_id)


def get_many(*, session: Session, journal_ids: Sequence[int]) -> dict[int, ProcessedEntry]:
    """The entries among `journal_ids` processed already (by journal id), in one query."""
    if not journal_ids:
        return {}
    statement = select(ProcessedEntry).where(col(ProcessedEntry.journal_id).in_(journal_ids))
    return {entry.journal_id: entry for entry in session.exec(statement)}


def find_earlier(
    *, session: Session, raw_sha256: str, message_id: str | None, sender: str, content_digest: str
) -> Earlier:
    """The entry already processed (not itself a duplicate) that this message repeats: the same
    raw bytes, or the same Message-ID from the same sender with the same content (an MTA retry
    with other trace headers, an IMAP re-fetch, one mailbox fed over SMTP and IMAP). Rows older
    than content digests match by Message-ID and sender alone, as they always did."""
    statement = select(ProcessedEntry).where(
        ProcessedEntry.raw_sha256 == raw_sha256, ProcessedEntry.outcome == Outcome.DONE
    )
    found = session.exec(statement.limit(1)).first()
    if found is not None or not message_id:
        return Earlier(original=found)
    statement = (
        select(ProcessedEntry)
        .where(
            ProcessedEntry.message_id == message_id,
            ProcessedEntry.sender == sender,
            ProcessedEntry.outcome == Outcome.DONE,
        )
        .order_by(col(ProcessedEntry.journal_id))
        .limit(_SAME_ID_LIMIT)
    )
    same_id = session.exec(statement).all()
    for entry in same_id:
        if entry.content_digest is None or entry.content_digest == content_digest:
            return Earlier(original=entry)
    return Earlier(original=None, id_reused_by=same_id[0] if same_id else None)


def record_processed(*, session: Session, entry: ProcessedEntry) -> None:
    """Write the row at once (a Core INSERT): the next entry of the batch may be its duplicate."""
    insert_rows(session, ProcessedEntry, [{name: getattr(entry, name) for name in ProcessedEntry.model_fields}])
