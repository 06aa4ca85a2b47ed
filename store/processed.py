"""Repository functions for processed_entry: what the pipeline finished, and duplicate lookups."""

from __future__ import annotations

from sqlmodel import Session, select

from store.models import ProcessedEntry
from store.states import Outcome


def get_processed(*, session: Session, journal_id: int) -> ProcessedEntry | None:
    return session.get(ProcessedEntry, journal_id)


def find_original(*, session: Session, raw_sha256: str, message_id: str | None, sender: str) -> ProcessedEntry | None:
    """An entry already processed (not itself a duplicate) with the same raw bytes, or the same
    Message-ID from the same sender."""
    statement = select(ProcessedEntry).where(
        ProcessedEntry.raw_sha256 == raw_sha256, ProcessedEntry.outcome == Outcome.DONE
    )
    found = session.exec(statement.limit(1)).first()
    if found is not None or not message_id:
        return found
    statement = select(ProcessedEntry).where(
        ProcessedEntry.message_id == message_id,
        ProcessedEntry.sender == sender,
        ProcessedEntry.outcome == Outcome.DONE,
    )
    return session.exec(statement.limit(1)).first()


def record_processed(*, session: Session, entry: ProcessedEntry) -> None:
    session.add(entry)
