"""Repository functions for processed_entry: what the pipeline finished, and duplicate lookups."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func
from sqlmodel import Session, col, select

from store.models import ProcessedEntry
from store.rows import add_later, values_of
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


@dataclass(frozen=True)
class Lookup:
    """What a message is compared by: its raw bytes, and its Message-ID from its sender."""

    raw_sha256: str
    message_id: str | None
    sender: str


class BatchEarlier:
    """The entries already processed (not themselves duplicates) that a batch's messages repeat:
    the same raw bytes, or the same Message-ID from the same sender with the same content (an MTA
    retry with other trace headers, an IMAP re-fetch, one mailbox fed over SMTP and IMAP). Rows
    older than content digests match by Message-ID and sender alone. The database is asked once
    for the whole batch, and the entries the batch finishes are remembered as it goes, so a
    duplicate inside the batch is found as well."""

    def __init__(self, *, session: Session, lookups: Sequence[Lookup]) -> None:
        self._by_raw: dict[str, ProcessedEntry] = {}
        self._by_id: dict[tuple[str, str], list[ProcessedEntry]] = {}
        hashes = sorted({lookup.raw_sha256 for lookup in lookups})
        if hashes:
            statement = select(ProcessedEntry).where(
                col(ProcessedEntry.raw_sha256).in_(hashes), ProcessedEntry.outcome == Outcome.DONE
            )
            for entry in session.exec(statement):
                self._by_raw.setdefault(entry.raw_sha256, entry)
        message_ids = sorted({lookup.message_id for lookup in lookups if lookup.message_id})
        if message_ids:
            # The first _SAME_ID_LIMIT of each (Message-ID, sender), oldest first: a mailer that
            # reuses one ID for everything costs one read per batch, and never more rows than that.
            ranked = (
                select(
                    col(ProcessedEntry.journal_id).label("journal_id"),
                    func.row_number()
                    .over(
                        partition_by=(col(ProcessedEntry.message_id), col(ProcessedEntry.sender)),
                        order_by=col(ProcessedEntry.journal_id),
                    )
                    .label("rank"),
                )
                .where(col(ProcessedEntry.message_id).in_(message_ids), ProcessedEntry.outcome == Outcome.DONE)
                .subquery()
            )
            statement = (
                select(ProcessedEntry)
                .join(ranked, col(ProcessedEntry.journal_id) == ranked.c.journal_id)
                .where(ranked.c.rank <= _SAME_ID_LIMIT)
                .order_by(col(ProcessedEntry.journal_id))
            )
            for entry in session.exec(statement):
                self._by_id.setdefault((entry.message_id or "", entry.sender or ""), []).append(entry)

    def find(self, *, raw_sha256: str, message_id: str | None, sender: str, content_digest: str) -> Earlier:
        found = self._by_raw.get(raw_sha256)
        if found is not None or not message_id:
            return Earlier(original=found)
        same_id = self._by_id.get((message_id, sender), [])
        for entry in same_id:
            if entry.content_digest is None or entry.content_digest == content_digest:
                return Earlier(original=entry)
        return Earlier(original=None, id_reused_by=same_id[0] if same_id else None)

    def remember(self, entry: ProcessedEntry) -> None:
        """An entry the batch finished (and kept): later entries of the batch may repeat it."""
        if entry.outcome != Outcome.DONE:
            return
        self._by_raw.setdefault(entry.raw_sha256, entry)
        if entry.message_id:
            same_id = self._by_id.setdefault((entry.message_id, entry.sender or ""), [])
            if len(same_id) < _SAME_ID_LIMIT:
                same_id.append(entry)


def record_processed(*, session: Session, entry: ProcessedEntry) -> None:
    """Write the row (at the end of the batch with store.rows.LaterRows: the batch's later entries
    find it in `BatchEarlier.remember`, other transactions only once it is committed anyway)."""
    add_later(session, ProcessedEntry, values_of(entry))
