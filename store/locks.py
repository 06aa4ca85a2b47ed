"""Cluster-wide locks for work that one instance at a time must do, and each instance's presence
(PostgreSQL advisory locks).

On SQLite there is one host by construction, so the lock is always granted. On PostgreSQL the
lock belongs to a database session: if its holder dies, the server drops the connection and the
lock with it, and another instance takes over on its next try.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterable, Iterator

from sqlalchemy import Connection, Engine, text

log = logging.getLogger(__name__)


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


def _presence_name(instance_name: str) -> str:
    return f"instance:{instance_name}"


def _lock_ids(name: str) -> tuple[int, int]:
    """How pg_locks shows an advisory lock taken with one bigint key: its high and low 32 bits
    (unsigned) as classid and objid."""
    unsigned = lock_key(name) & 0xFFFF_FFFF_FFFF_FFFF
    return unsigned >> 32, unsigned & 0xFFFF_FFFF


class Presence:
    """This process's mark of life in the cluster: the advisory lock `instance:<name>`, held on a
    connection of its own for as long as the process runs. The server drops it with the
    connection, so a crashed or killed instance is seen gone at once, with no heartbeat to write
    and no timeout to wait. The journal replay asks `live_instances` before it takes over entries
    another instance acknowledged: a live one still has them in its own queue. SQLite: nothing
    to hold (one host, and the replay takes everything)."""

    def __init__(self, engine: Engine, instance_name: str) -> None:
        self._engine = engine
        self._name = _presence_name(instance_name)
        self._connection: Connection | None = None

    def start(self) -> None:
        if self._engine.dialect.name != "postgresql":
            return
        connection = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        if not try_lock(connection, self._name):
            # Two processes with one instance name: each would take the other's entries for its
            # own. Processing stays correct (claims, the processed records); throughput does not.
            log.warning("another running process holds the instance name of this one (%s)", self._name)
        self._connection = connection

    def renew(self) -> None:
        """Take the lock again if its connection was lost (a database restart or outage): until
        then the other instances take this one for gone. Called by the periodic replay."""
        if self._engine.dialect.name != "postgresql":
            return
        if self._connection is not None:
            try:
                self._connection.execute(text("SELECT 1"))
                return
            except Exception:  # the session is gone, and the lock with it
                self._connection.invalidate()
                self._connection.close()
                self._connection = None
        self.start()

    def close(self) -> None:
        if self._connection is not None:
            # The pool keeps the database session open: the lock must be let go, not just left.
            with contextlib.suppress(Exception):  # a connection already broken holds nothing
                unlock(self._connection, self._name)
            self._connection.close()
            self._connection = None


def live_instances(connection: Connection, instance_names: Iterable[str]) -> set[str]:
    """Those of `instance_names` whose process holds its `Presence` now (PostgreSQL; on SQLite none)."""
    if connection.dialect.name != "postgresql":
        return set()
    held = {
        (int(classid), int(objid))
        for classid, objid in connection.execute(
            text(
                "SELECT classid::bigint, objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND objsubid = 1 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
        )
    }
    return {name for name in instance_names if _lock_ids(_presence_name(name)) in held}
