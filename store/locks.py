"""Cluster-wide locks for work that one instance at a time must do (PostgreSQL advisory locks).

On SQLite there is one host by construction, so the lock is always granted. On PostgreSQL the
lock belongs to a database session: if its holder dies, the server drops the connection and the
lock with it, and another instance takes over on its next try.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

from sqlalchemy import Connection, Engine, text


def lock_key(name: str) -> int:
    """A stable signed 64-bit key for `name` (advisory locks are keyed by bigint)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def try_lock(connection: Connection, name: str) -> bool:
    if connection.dialect.name != "postgresql":
        return True
    return bool(connection.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": lock_key(name)}).scalar())


def unlock(connection: Connection, name: str) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": lock_key(name)})


@contextlib.contextmanager
def cluster_lock(engine: Engine, name: str) -> Iterator[bool]:
    """Yields True if this instance holds `name` for the duration of the block, else False."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        held = try_lock(connection, name)
        try:
            yield held
        finally:
            if held:
                unlock(connection, name)
