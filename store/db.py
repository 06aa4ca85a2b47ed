"""The engine (SQLite in WAL mode, or PostgreSQL), sessions, and schema migrations.

SQLite notes: every transaction starts with BEGIN IMMEDIATE, so a writer takes the write lock up
front and never fails half-way with SQLITE_BUSY when it upgrades a read; `synchronous=FULL` makes
each commit durable (fsync of the WAL), which is what the journal's acknowledgement relies on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session

from store.text import make_row_storable

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
READ_ONLY_OPTION = "gateway_read_only"
# How long a SQLite statement waits for another connection's lock before it fails: a journal write
# that gives up answers the SMTP client 451, so this is how long an outage is waited out first.
SQLITE_BUSY_TIMEOUT_SECONDS = 60.0


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def make_engine(database_url: str) -> Engine:
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return create_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)

    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        # The driver's timeout is SQLite's busy timeout (sqlite3_busy_timeout).
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
        pool_size=8,
        max_overflow=8,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin (see module docstring).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # Readers (see `reading`) keep WAL's concurrent reads; writers take the lock up front.
        if connection.get_execution_options().get(READ_ONLY_OPTION):
            connection.exec_driver_sql("BEGIN")
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def journal_engine_for(engine: Engine, data_dir: Path) -> Engine:
    """Where the journal lives: with SQLite, a database file of its own in the data directory, so
    that journaling (and so acknowledging) never waits for the pipeline's write lock; with
    PostgreSQL, which locks rows rather than the whole database, the same database."""
    if not is_sqlite(engine):
        return engine
    return make_engine(f"sqlite:///{data_dir / 'journal.db'}")


@contextlib.contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """A session whose work is committed on success and rolled back on any exception."""
    with Session(engine, expire_on_commit=False) as session, session.begin():
        yield session


@contextlib.contextmanager
def reading(engine: Engine) -> Iterator[Session]:
    """A session for queries only; on SQLite it does not take the write lock."""
    with Session(engine.execution_options(**{READ_ONLY_OPTION: True}), expire_on_commit=False) as session:
        with session.begin():
            yield session


def alembic_config(engine: Engine) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


# The newest migration (tests/test_migrations.py holds it to Alembic's head): a database already at
# it is not handed to Alembic at all, which costs a third of a second at every start (its import,
# its scripts), twice with SQLite's two files; `gateway ingest` starts once per import.
HEAD_REVISION = "0005"


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest migration. Instances starting together serialise here."""
    if current_revision(engine) == HEAD_REVISION:
        return
    from alembic import command

    with _migration_lock(engine):
        command.upgrade(alembic_config(engine), "head")


def current_revision(engine: Engine) -> str | None:
    """The migration the database is at (None: a new database, or one Alembic never touched)."""
    try:
        with engine.execution_options(**{READ_ONLY_OPTION: True}).connect() as connection:
            return connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    except DBAPIError:  # no such table yet
        return None


@contextlib.contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    if is_sqlite(engine):
        yield  # SQLite's BEGIN IMMEDIATE inside Alembic already serialises writers
        return
    with engine.connect() as connection:
        connection.exec_driver_sql("SELECT pg_advisory_lock(7205001)")
        try:
            yield
        finally:
            connection.exec_driver_sql("SELECT pg_advisory_unlock(7205001)")
            connection.commit()


@event.listens_for(Session, "before_flush")
def _storable_rows(session: Session, _context: Any, _instances: Any) -> None:
    # Every row written through a session, whoever built it: no NUL, lone surrogate or over-long
    # VARCHAR value reaches the backend (store.text says why).
    for row in (*session.new, *session.dirty):
        make_row_storable(row)
