"""Retention and erasure (SPEC §14): `gateway purge`, the daily purge job, and `gateway erase`.

Purge forgets bytes that have done their work: the raw journal bytes of processed entries after
`journal_retention_days` (the digest stays, so `raw_sha256` is still answered) and the bytes of sent
outbox rows after `outbox_retention_days`. Quarantined entries are never purged automatically:
they are what an operator still has to look at.

Erase removes one person's or one case's data (GDPR / RODO art. 17): messages, attachments (blobs
freed when nothing else references them), journal bytes and outbox rows; the case number stays
as a tombstone; an audit row records who, when and what (the address only as its SHA-256). The
database is then made to forget for real: SQLite overwrites freed pages (secure_delete), rebuilds
the file (VACUUM) and truncates its WAL; PostgreSQL vacuums the tables involved.
"""

from __future__ import annotations

import getpass
import hashlib
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import Engine, text
from sqlmodel import Session

from store import cases as case_store
from store import retention
from store.blobs import BlobStore
from store.db import is_sqlite, transaction
from store.models import Case, ErasureRecord, utcnow


@dataclass(frozen=True)
class PurgeReport:
    journal_entries: int
    outbox_rows: int
    dry_run: bool


@dataclass
class ErasureReport:
    target_kind: str
    target: str
    dry_run: bool
    counts: dict[str, int] = field(default_factory=dict)


def purge(
    *, engine: Engine, journal_engine: Engine, journal_days: float, outbox_days: float, dry_run: bool = False
) -> PurgeReport:
    now = utcnow()
    with transaction(journal_engine) as session:
        journal_ids = retention.purgeable_journal_ids(
            session=session, processed_before=now - timedelta(days=journal_days)
        )
        if not dry_run:
            retention.drop_journal_bytes(session=session, journal_ids=journal_ids)
    with transaction(engine) as session:
        outbox_ids = retention.purgeable_outbox_ids(session=session, sent_before=now - timedelta(days=outbox_days))
        if not dry_run:
            retention.drop_outbox_bytes(session=session, outbox_ids=outbox_ids)
    return PurgeReport(journal_entries=len(journal_ids), outbox_rows=len(outbox_ids), dry_run=dry_run)


def erase_address(
    *,
    engine: Engine,
    journal_engine: Engine,
    blobs: BlobStore,
    address: str,
    actor: str | None = None,
    dry_run: bool = False,
) -> ErasureReport:
    address = address.strip().lower()
    report = ErasureReport("address", hashlib.sha256(address.encode()).hexdigest(), dry_run)
    with _forgetting(engine) as session:
        own_cases = retention.cases_of_requester(session=session, address=address)
        journal_ids: list[int] = []
        digests: list[str] = []
        for case in own_cases:
            ids, shas = retention.erase_case_rows(session=session, case=case)
            journal_ids += ids
            digests += shas
        mentioning = retention.messages_mentioning(session=session, address=address)
        sent_by_them = [message for message in mentioning if message.sender == address]
        ids, shas = retention.delete_messages(session=session, messages=sent_by_them)
        journal_ids += ids
        digests += shas
        others = [message for message in mentioning if message.sender != address]
        retention.scrub_address(session=session, address=address, messages=others)
        # Mail to or from them goes; other mail that quotes them keeps its row but not its bytes.
        outbox_ids = retention.outbox_ids_for_address(session=session, address=address)
        retention.delete_outbox(session=session, outbox_ids=outbox_ids)
        quoting = retention.outbox_ids_containing(session=session, needles=[address.encode()])
        retention.drop_outbox_bytes(session=session, outbox_ids=quoting)
        report.counts = {
            "cases": len(own_cases),
            "messages": len(sent_by_them),
            "messages_scrubbed": len(others),
            "outbox_rows": len(outbox_ids),
            "outbox_rows_dropped_bytes": len(quoting),
            **retention.forget_address_elsewhere(session=session, address=address),
        }
        report.counts["blobs"] = _free_blobs(session=session, blobs=blobs, digests=digests, dry_run=dry_run)
        _audit(session=session, report=report, actor=actor)
        if dry_run:
            session.rollback()
    report.counts["journal_entries"] = _drop_journal(
        journal_engine=journal_engine, journal_ids=journal_ids, needles=[address.encode()], dry_run=dry_run
    )
    _settle_storage(engine, journal_engine)
    return report


def erase_case(
    *,
    engine: Engine,
    journal_engine: Engine,
    blobs: BlobStore,
    number: str,
    actor: str | None = None,
    dry_run: bool = False,
) -> ErasureReport | None:
    report = ErasureReport("case", number, dry_run)
    with _forgetting(engine) as session:
        case = case_store.get_case_by_number(session=session, number=number)
        if case is None:
            return None
        message_count = case.message_count
        journal_ids, digests = retention.erase_case_rows(session=session, case=case)
        report.counts = {"cases": 1, "messages": message_count}
        report.counts["blobs"] = _free_blobs(session=session, blobs=blobs, digests=digests, dry_run=dry_run)
        _audit(session=session, report=report, actor=actor)
        if dry_run:
            session.rollback()
    report.counts["journal_entries"] = _drop_journal(
        journal_engine=journal_engine, journal_ids=journal_ids, needles=[], dry_run=dry_run
    )
    _settle_storage(engine, journal_engine)
    return report


def is_erased(case: Case) -> bool:
    return case.erased_at is not None


# --- helpers -----------------------------------------------------------------------------------------


class _forgetting:
    """A transaction whose deleted bytes are overwritten on SQLite (PRAGMA secure_delete)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._session: Session | None = None

    def __enter__(self) -> Session:
        self._session = Session(self._engine, expire_on_commit=False)
        self._session.begin()
        if is_sqlite(self._engine):
            self._session.execute(text("PRAGMA secure_delete=ON"))
        return self._session

    def __exit__(self, exc_type: object, *rest: object) -> None:
        assert self._session is not None
        try:
            if exc_type is None and self._session.in_transaction():
                self._session.commit()
            else:
                self._session.rollback()
        finally:
            self._session.close()


def _free_blobs(*, session: Session, blobs: BlobStore, digests: list[str], dry_run: bool) -> int:
    unused = set(digests) - retention.blobs_still_referenced(session=session, digests=digests)
    if not dry_run:
        session.flush()
        for sha256 in sorted(unused):
            blobs.delete(session=session, sha256=sha256)
    return len(unused)


def _drop_journal(*, journal_engine: Engine, journal_ids: list[int], needles: list[bytes], dry_run: bool) -> int:
    with _forgetting(journal_engine) as session:
        found = set(journal_ids)
        if needles:
            found.update(retention.journal_ids_containing(session=session, needles=needles))
        if not dry_run:
            retention.drop_journal_bytes(session=session, journal_ids=sorted(found))
        else:
            session.rollback()
    return len(found)


def _audit(*, session: Session, report: ErasureReport, actor: str | None) -> None:
    session.add(
        ErasureRecord(
            actor=actor or _default_actor(),
            target_kind=report.target_kind,
            target=report.target,
            counts=dict(report.counts),
        )
    )


def _default_actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _settle_storage(*engines: Engine) -> None:
    """Make deleted bytes unreachable in the files too, not only in the rows."""
    for engine in dict.fromkeys(engines):  # the same engine twice on PostgreSQL
        if is_sqlite(engine):
            # VACUUM rebuilds the file from live rows only: no freed page and no stale cell keeps an
            # old copy (rows rewritten by ordinary updates before the erasure leave those behind).
            # The driver connection, not SQLAlchemy's: its begin hook would wrap this in a transaction.
            raw = engine.raw_connection()
            try:
                cursor = raw.cursor()
                cursor.execute("VACUUM")
                cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                cursor.close()
            finally:
                raw.close()
        else:
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                for table in ("message", "attachment", "journal_entry", "outbox_item", "blob", "support_case"):
                    connection.exec_driver_sql(f"VACUUM {table}")
