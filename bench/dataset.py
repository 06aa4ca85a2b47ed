"""Existing cases in bulk, written straight into a database, for the benchmarks that need scale.

A case here looks like one the pipeline left behind: the case row, its requester as participant,
the customer's inbound message (Message-ID, raw_sha256), the acknowledgement we sent (an outbound
message and its `sent` outbox row, which is what customers reply to), and the processed_entry row
that duplicate detection looks up. Accounts with services and contacts own the cases; requesters
are contacts. The journal entries the cases came from are not loaded (the pipeline reads the
journal by primary key, and by (status, id) for pending entries only, so a million `done` rows
change no lookup); the journal's id counter is moved past theirs instead.

Everything is a pure function of the case's index, so a benchmark can later address any loaded
case (its number, requester, Message-IDs) without reading it back. Cases are spread evenly over
the two years before `now`, oldest first; numbers are per year (`2025-000001`), and the year
counters are set so that new cases continue the sequence.

Loading drops the secondary indexes of the filled tables and rebuilds them at the end (one sorted
build instead of a million random inserts). PostgreSQL gets COPY (psycopg) with foreign-key
triggers off for the session, then the serial sequences are moved past the loaded ids and VACUUM
ANALYZE runs (autovacuum would do the same on a real server); SQLite gets executemany in one
transaction on a plain sqlite3 connection with the rollback journal off, then WAL mode back.
SQLite is not ANALYZEd: the gateway never does that either.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import psycopg
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import make_url

from bench.pg import libpq_url
from bench.smtp_throughput import SENTENCES, SUBJECTS
from store import db
from store.models import Case

SUPPORT = "bok@example.test"
SUPPORT_FROM = "Biuro Obsługi Klienta <bok@example.test>"
SPAN = timedelta(days=730)
FOCUS_ACCOUNT = "acc-000000"
CHUNK = 20_000  # cases per executemany / COPY round
RECENT_DAYS = 14  # younger cases are open or answered, older ones closed

CASE_COLUMNS = (
    "id",
    "number",
    "subject",
    "status",
    "requester",
    "requester_name",
    "language",
    "category",
    "account_id",
    "service_id",
    "follows_case_id",
    "created_at",
    "updated_at",
    "closed_at",
    "message_count",
)
PARTICIPANT_COLUMNS = ("id", "case_id", "email")
MESSAGE_COLUMNS = (
    "id",
    "case_id",
    "journal_id",
    "direction",
    "source",
    "message_id",
    "sender",
    "from_header",
    "to_header",
    "cc_header",
    "subject",
    "date",
    "text",
    "html",
    "auto_generated",
    "raw_sha256",
    "defects",
    "outbox_id",
    "delivery_status",
    "read_at",
    "received_at",
    "created_at",
)
OUTBOX_COLUMNS = (
    "id",
    "case_id",
    "kind",
    "automatic",
    "mail_from",
    "recipient",
    "message_id",
    "raw",
    "status",
    "attempts",
    "next_attempt_at",
    "claimed_by",
    "claimed_until",
    "last_error",
    "created_at",
    "sent_at",
)
PROCESSED_COLUMNS = (
    "journal_id",
    "outcome",
    "raw_sha256",
    "message_id",
    "sender",
    "case_id",
    "duplicate_of",
    "processed_at",
)
JOURNAL_COLUMNS = (
    "id",
    "source",
    "raw",
    "raw_sha256",
    "size",
    "received_at",
    "meta",
    "status",
    "reason",
    "attempts",
    "processed_at",
    "received_by",
)
ACCOUNT_COLUMNS = ("id", "name", "language")
SERVICE_COLUMNS = ("id", "account_id", "name")
CONTACT_COLUMNS = ("id", "account_id", "kind", "name", "email")

#: Tables in the order they are filled (referenced rows first).
CASE_TABLES: dict[str, tuple[str, ...]] = {
    "support_case": CASE_COLUMNS,
    "participant": PARTICIPANT_COLUMNS,
    "outbox_item": OUTBOX_COLUMNS,
    "message": MESSAGE_COLUMNS,
    "processed_entry": PROCESSED_COLUMNS,
}
SERIAL_TABLES = ("contact", "support_case", "participant", "outbox_item", "message")

_TEXTS = tuple(
    "Dzień dobry,\r\n\r\n" + " ".join(SENTENCES[(n + k) % len(SENTENCES)] for k in range(3)) + "\r\n\r\nPozdrawiam\r\n"
    for n in range(len(SENTENCES))
)
_ACK_TEXT = "Dziękujemy za wiadomość. Zgłoszenie zostało przyjęte, odpowiemy najszybciej, jak to możliwe."
_ACK_RAW = (
    b"From: =?utf-8?q?Biuro_Obs=C5=82ugi_Klienta?= <bok@example.test>\r\nAuto-Submitted: auto-replied\r\n"
    b"X-Auto-Response-Suppress: All\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + _ACK_TEXT.encode() + b"\r\n"
)


@dataclass(frozen=True)
class Shape:
    """How many cases, over how many accounts; `focus_cases` of them belong to FOCUS_ACCOUNT."""

    cases: int
    accounts: int
    focus_cases: int = 0


@dataclass(frozen=True)
class ExistingCase:
    """What a measured message may refer to in loaded case `index`."""

    index: int
    id: int
    number: str
    subject: str
    requester: str
    status: str
    inbound_message_id: str
    ack_message_id: str


class Encoder(Protocol):
    """Turns Python values into what the loading driver takes for a column of that type."""

    def time(self, value: datetime) -> Any: ...

    def flag(self, value: bool) -> Any: ...

    def json(self, value: object) -> Any: ...


class SqliteEncoder:
    """Values exactly as SQLAlchemy would bind them for the gateway's column types on SQLite."""

    def __init__(self) -> None:
        dialect = sqlite_dialect.dialect()
        time_type = Case.metadata.tables[str(Case.__tablename__)].c.updated_at.type
        self._time = time_type.dialect_impl(dialect).bind_processor(dialect)

    def time(self, value: datetime) -> Any:
        return self._time(value) if self._time else value

    def flag(self, value: bool) -> Any:
        return int(value)

    def json(self, value: object) -> Any:
        return json.dumps(value)


class CopyEncoder:
    """Values for psycopg's COPY: it adapts datetimes and booleans itself; JSON goes as text."""

    def time(self, value: datetime) -> Any:
        return value

    def flag(self, value: bool) -> Any:
        return value

    def json(self, value: object) -> Any:
        return json.dumps(value)


def _hex(seed: str, size: int) -> str:
    return hashlib.blake2b(seed.encode(), digest_size=size).hexdigest()


class Dataset:
    """The loaded cases of one Shape, as pure functions of their index 0..cases-1."""

    def __init__(self, shape: Shape, now: datetime) -> None:
        if shape.accounts < 2 and shape.focus_cases:
            raise ValueError("a focus account needs at least one other account")
        self.shape = shape
        self.start = (now - SPAN - timedelta(days=1)).replace(microsecond=0)
        self.recent_from = now - timedelta(days=RECENT_DAYS)
        self._span_us = SPAN // timedelta(microseconds=1)
        self._focus_every = shape.cases // shape.focus_cases if shape.focus_cases else 0
        years = range(self.start.year + 1, (self.start + SPAN).year + 1)
        self._year_firsts = [0, *(self._first_index_at(datetime(y, 1, 1, tzinfo=UTC)) for y in years)]
        self._years = [self.start.year, *years]

    # --- time and numbering ----------------------------------------------------------------------

    def created_at(self, index: int) -> datetime:
        return self.start + timedelta(microseconds=self._span_us * index // self.shape.cases)

    def _first_index_at(self, moment: datetime) -> int:
        offset_us = (moment - self.start) // timedelta(microseconds=1)
        return min(self.shape.cases, -(-offset_us * self.shape.cases // self._span_us))

    def number(self, index: int) -> str:
        slot = bisect.bisect_right(self._year_firsts, index) - 1
        return f"{self._years[slot]}-{index - self._year_firsts[slot] + 1:06d}"

    def year_counters(self) -> dict[int, int]:
        """Cases per year: the counter values new cases continue from."""
        bounds = [*self._year_firsts, self.shape.cases]
        return {year: bounds[n + 1] - bounds[n] for n, year in enumerate(self._years) if bounds[n + 1] > bounds[n]}

    # --- who -------------------------------------------------------------------------------------

    def account_index(self, index: int) -> int:
        if self._focus_every and index % self._focus_every == 0:
            return 0
        others = self.shape.accounts - 1 if self._focus_every else self.shape.accounts
        first = 1 if self._focus_every else 0
        return first + index % others

    @staticmethod
    def account_id(account: int) -> str:
        return f"acc-{account:06d}"

    @staticmethod
    def contact_email(account: int, kind: int) -> str:
        return f"{('admin', 'tech')[kind]}.{account}@klient{account % 97}.example.pl"

    def requester(self, index: int) -> str:
        return self.contact_email(self.account_index(index), (index // self.shape.accounts) % 2)

    def existing(self, index: int) -> ExistingCase:
        return ExistingCase(
            index=index,
            id=index + 1,
            number=self.number(index),
            subject=SUBJECTS[index % len(SUBJECTS)],
            requester=self.requester(index),
            status=self._status(index, self.created_at(index)),
            inbound_message_id=f"{_hex(f'in{index}', 8)}.{index}@klient.example.pl",
            ack_message_id=f"{_hex(f'ack{index}', 8)}.{index}@example.test",
        )

    def _status(self, index: int, created: datetime) -> str:
        if created < self.recent_from:
            return "closed"
        return ("open", "answered")[index % 2]

    # --- rows ------------------------------------------------------------------------------------

    def directory_rows(self) -> dict[str, list[tuple[Any, ...]]]:
        accounts, services, contacts = [], [], []
        for account in range(self.shape.accounts):
            account_id = self.account_id(account)
            accounts.append((account_id, f"Klient {account} sp. z o.o.", "pl"))
            services += [(f"{account_id}-www", account_id, "Hosting WWW"), (f"{account_id}-mail", account_id, "Poczta")]
            for kind in (0, 1):
                contacts.append(
                    (
                        2 * account + kind + 1,
                        account_id,
                        ("representative", "technical")[kind],
                        f"Kontakt {account}/{kind}",
                        self.contact_email(account, kind),
                    )
                )
        return {"account": accounts, "service": services, "contact": contacts}

    def case_rows(self, first: int, stop: int, encode: Encoder) -> dict[str, list[tuple[Any, ...]]]:
        """The rows of cases first..stop-1, per table (see CASE_TABLES)."""
        tables: dict[str, list[tuple[Any, ...]]] = {name: [] for name in CASE_TABLES}
        no_defects, false, true = encode.json([]), encode.flag(False), encode.flag(True)
        for index in range(first, stop):
            self._append_case(tables, self.existing(index), encode, no_defects, false, true)
        return tables

    def _append_case(
        self,
        tables: dict[str, list[tuple[Any, ...]]],
        case: ExistingCase,
        encode: Encoder,
        no_defects: Any,
        false: Any,
        true: Any,
    ) -> None:
        index, case_id = case.index, case.id
        created = self.created_at(index)
        at, answered_at = encode.time(created), encode.time(created + timedelta(seconds=2))
        account = self.account_index(index)
        closed_at = encode.time(created + timedelta(days=3)) if case.status == "closed" else None
        updated = closed_at if closed_at is not None else answered_at
        raw_sha256 = _hex(f"raw{index}", 32)
        text = _TEXTS[index % len(_TEXTS)]
        service = f"{self.account_id(account)}-{('www', 'mail')[index % 2]}"
        tables["support_case"].append(
            (
                case_id,
                case.number,
                case.subject,
                case.status,
                case.requester,
                "",
                "pl",
                "general",
                self.account_id(account),
                service,
                None,
                at,
                updated,
                closed_at,
                2,
            )
        )
        tables["participant"].append((case_id, case_id, case.requester))
        tables["outbox_item"].append(
            (
                case_id,
                case_id,
                "ack",
                true,
                SUPPORT,
                case.requester,
                case.ack_message_id,
                _ACK_RAW,
                "sent",
                1,
                answered_at,
                None,
                None,
                None,
                answered_at,
                answered_at,
            )
        )
        tables["message"].append(
            (
                2 * case_id - 1,
                case_id,
                case_id,
                "inbound",
                "smtp",
                case.inbound_message_id,
                case.requester,
                case.requester,
                SUPPORT,
                "",
                case.subject,
                at,
                text,
                None,
                false,
                raw_sha256,
                no_defects,
                None,
                None,
                None,
                at,
                at,
            )
        )
        tables["message"].append(
            (
                2 * case_id,
                case_id,
                None,
                "outbound",
                "system",
                case.ack_message_id,
                SUPPORT,
                SUPPORT_FROM,
                case.requester,
                "",
                f"[#{case.number}] Potwierdzenie zgłoszenia",
                answered_at,
                _ACK_TEXT,
                None,
                true,
                _hex(f"ackraw{index}", 32),
                no_defects,
                case_id,
                "sent",
                None,
                answered_at,
                answered_at,
            )
        )
        tables["processed_entry"].append(
            (
                case_id,
                "done",
                raw_sha256,
                case.inbound_message_id,
                case.requester,
                case_id,
                None,
                at,
            )
        )


@dataclass
class LoadReport:
    cases: int
    seconds: float
    rows: int


def chunks(total: int, size: int = CHUNK) -> Iterator[tuple[int, int]]:
    for first in range(0, total, size):
        yield first, min(total, first + size)


def _insert_sql(table: str, columns: Sequence[str]) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


def prepare_schema(database_url: str, journal_path: Path | None = None) -> None:
    """Apply the gateway's migrations (to the SQLite journal file too, when given)."""
    for url in (database_url, None if journal_path is None else f"sqlite:///{journal_path}"):
        if url is None:
            continue
        engine = db.make_engine(url)
        try:
            db.upgrade(engine)
        finally:
            engine.dispose()


def load_sqlite(
    dataset: Dataset, database_url: str, journal_path: Path, *, progress: Callable[[int], None] = lambda done: None
) -> LoadReport:
    """Every case of `dataset` into a migrated SQLite database (secondary indexes rebuilt afterwards)."""
    started, rows = time.perf_counter(), 0
    encode = SqliteEncoder()
    connection = _bulk_sqlite(_sqlite_path(database_url))
    try:
        indexes = _drop_sqlite_indexes(connection, CASE_TABLES)
        connection.execute("BEGIN")
        for table, batch in dataset.directory_rows().items():
            rows += _executemany(connection, table, batch)
        for low, high in chunks(dataset.shape.cases):
            for table, batch in dataset.case_rows(low, high, encode).items():
                rows += _executemany(connection, table, batch)
            progress(high)
        _set_counters_sqlite(connection, dataset.year_counters())
        connection.execute("COMMIT")
        for statement in indexes:
            connection.execute(statement)
        connection.execute("PRAGMA journal_mode=WAL")
    finally:
        connection.close()
    _skip_journal_ids_sqlite(journal_path, dataset.shape.cases)
    return LoadReport(cases=dataset.shape.cases, seconds=time.perf_counter() - started, rows=rows)


def _sqlite_path(database_url: str) -> Path:
    database = make_url(database_url).database
    if not database:
        raise ValueError(f"not a SQLite file URL: {database_url}")
    return Path(database)


def _bulk_sqlite(path: Path) -> sqlite3.Connection:
    """A connection for a throwaway bulk load: no rollback journal, no fsync, a big page cache."""
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=OFF")
    connection.execute("PRAGMA synchronous=OFF")
    connection.execute("PRAGMA cache_size=-524288")  # 512 MiB
    return connection


def _drop_sqlite_indexes(connection: sqlite3.Connection, tables: Iterable[str]) -> list[str]:
    """Drop the secondary indexes of `tables`; returns the statements that recreate them.

    Building an index once from sorted data is much faster than inserting a million random keys
    (Message-IDs, SHA-256s) into it. The implicit indexes of UNIQUE constraints stay.
    """
    wanted = list(tables)
    found = connection.execute(
        f"SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
        f"AND tbl_name IN ({', '.join('?' * len(wanted))})",
        wanted,
    ).fetchall()
    for name, _ in found:
        connection.execute(f'DROP INDEX "{name}"')
    return [sql for _, sql in found]


def _skip_journal_ids_sqlite(journal_path: Path, last_id: int) -> None:
    """One done entry standing for the loaded cases' journal entries, so new ids come after theirs."""
    with sqlite3.connect(journal_path) as connection:
        connection.execute(
            _insert_sql("journal_entry", JOURNAL_COLUMNS),
            (
                last_id,
                "file",
                b"",
                "",
                0,
                SqliteEncoder().time(datetime.now(UTC)),
                "{}",
                "done",
                "bench: stands for the journal entries of the loaded cases",
                1,
                None,
                "bench-loader",
            ),
        )
    with sqlite3.connect(journal_path) as connection:
        connection.execute("PRAGMA journal_mode=WAL")


def _executemany(connection: sqlite3.Connection, table: str, batch: list[tuple[Any, ...]]) -> int:
    if batch:
        connection.executemany(_insert_sql(table, _columns(table)), batch)
    return len(batch)


def _columns(table: str) -> tuple[str, ...]:
    directory = {
        "account": ACCOUNT_COLUMNS,
        "service": SERVICE_COLUMNS,
        "contact": CONTACT_COLUMNS,
        "journal_entry": JOURNAL_COLUMNS,
    }
    return CASE_TABLES.get(table) or directory[table]


def _set_counters_sqlite(connection: sqlite3.Connection, counters: dict[int, int]) -> None:
    connection.executemany(
        "INSERT INTO case_number_counter (year, last) VALUES (?, ?) "
        "ON CONFLICT (year) DO UPDATE SET last = excluded.last",
        list(counters.items()),
    )


def load_postgresql(
    dataset: Dataset, database_url: str, *, progress: Callable[[int], None] = lambda done: None
) -> LoadReport:
    """Every case of `dataset` into a migrated PostgreSQL database by COPY, then VACUUM ANALYZE."""
    started, rows = time.perf_counter(), 0
    encode = CopyEncoder()
    with psycopg.connect(libpq_url(database_url)) as connection:
        # The rows are consistent by construction; checking each foreign key would triple the time.
        connection.execute("SET session_replication_role = replica")
        connection.execute("SET maintenance_work_mem = '256MB'")
        rebuild = _drop_postgresql_indexes(connection, CASE_TABLES)
        for table, batch in dataset.directory_rows().items():
            rows += _copy(connection, table, batch)
        for low, high in chunks(dataset.shape.cases):
            for table, batch in dataset.case_rows(low, high, encode).items():
                rows += _copy(connection, table, batch)
            progress(high)
        for statement in rebuild:
            connection.execute(statement)
        _finish_postgresql(connection, dataset.year_counters(), journal_last_id=dataset.shape.cases)
    return LoadReport(cases=dataset.shape.cases, seconds=time.perf_counter() - started, rows=rows)


def _drop_postgresql_indexes(connection: psycopg.Connection[Any], tables: Iterable[str]) -> list[str]:
    """Drop the secondary indexes and UNIQUE constraints of `tables`; returns what recreates them."""
    found = connection.execute(
        """
        SELECT t.relname, i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid),
               c.conname, pg_get_constraintdef(c.oid)
        FROM pg_index i
        JOIN pg_class t ON t.oid = i.indrelid
        LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.conrelid = t.oid AND c.contype = 'u'
        WHERE t.relname = ANY(%s) AND NOT i.indisprimary
        """,
        (list(tables),),
    ).fetchall()
    rebuild = []
    for table, index, definition, constraint, constraint_definition in found:
        if constraint is not None:
            connection.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{constraint}"')
            rebuild.append(f'ALTER TABLE {table} ADD CONSTRAINT "{constraint}" {constraint_definition}')
        else:
            connection.execute(f"DROP INDEX {index}")
            rebuild.append(definition)
    return rebuild


def _copy(connection: psycopg.Connection[Any], table: str, batch: list[tuple[Any, ...]]) -> int:
    with connection.cursor() as cursor:
        with cursor.copy(f"COPY {table} ({', '.join(_columns(table))}) FROM STDIN") as copy:
            for row in batch:
                copy.write_row(row)
    return len(batch)


def _finish_postgresql(connection: psycopg.Connection[Any], counters: dict[int, int], *, journal_last_id: int) -> None:
    """Sequences past the loaded ids, the year counters, and fresh planner statistics."""
    for table in SERIAL_TABLES:
        connection.execute(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT coalesce(max(id), 1) FROM {table}))"
        )
    # The loaded cases' journal entries are not loaded (see the module docstring); new ids follow theirs.
    connection.execute("SELECT setval(pg_get_serial_sequence('journal_entry', 'id'), %s)", (journal_last_id,))
    for year, last in counters.items():
        connection.execute(
            "INSERT INTO case_number_counter (year, last) VALUES (%s, %s) "
            "ON CONFLICT (year) DO UPDATE SET last = excluded.last",
            (year, last),
        )
    connection.commit()
    connection.autocommit = True
    connection.execute("VACUUM ANALYZE")
