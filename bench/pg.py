"""Throwaway PostgreSQL databases for the benchmarks that measure the scale backend (SPEC §10).

Each benchmark creates its own databases on the server named by BENCH_PG_URL (default: the local
server the tests use) and drops them afterwards, also when the benchmark fails half-way.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

SERVER_URL = os.environ.get("BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


class NoPostgres(Exception):
    """The PostgreSQL server cannot be reached (or databases cannot be created there)."""


def database_url(name: str) -> str:
    """The SQLAlchemy URL of database `name` on the benchmark server."""
    return make_url(SERVER_URL).set(database=name).render_as_string(hide_password=False)


def libpq_url(sqlalchemy_url: str) -> str:
    """The same database as a libpq connection string (what psycopg.connect wants)."""
    return make_url(sqlalchemy_url).set(drivername="postgresql").render_as_string(hide_password=False)


def _admin(statement: str) -> None:
    engine = create_engine(SERVER_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(text(statement))
    finally:
        engine.dispose()


def create_database(prefix: str) -> str:
    """A new empty database; returns its URL. NoPostgres when the server is not there."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    try:
        _admin(f'CREATE DATABASE "{name}"')
    except Exception as error:  # connection refused, authentication, permissions...
        raise NoPostgres(f"cannot create a database on {make_url(SERVER_URL).render_as_string()}: {error}") from error
    return database_url(name)


def drop_database(url: str) -> None:
    name = make_url(url).database
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def throwaway_database(prefix: str) -> Iterator[str]:
    """A database for the duration of the block, dropped afterwards (connections are cut)."""
    url = create_database(prefix)
    try:
        yield url
    finally:
        drop_database(url)
