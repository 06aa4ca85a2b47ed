"""A database outage (SPEC §3): mail that cannot be journaled gets `451 4.3.0` and is not acknowledged;
mail acknowledged before the outage is kept through it and processed once the database is back.

The outage is real, caused from outside the gateway as an operator or a failure would:
- SQLite: another process holds an exclusive write lock on the journal database for longer than
  the gateway's busy timeout (60 s; the test shortens it to a few seconds, as a clock would be
  mocked). With the default `smtp_timeout_seconds` (also 60 s) the SMTP idle timer drops the
  session before the journal gives up, so the sender sees a dropped connection, not the 451:
  nothing is lost either way, but this test gives the session more time to see the answer the
  contract names;
- PostgreSQL: the test database refuses new connections and every existing one is terminated.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import aiosmtplib
import httpx
import pytest
from sqlalchemy import create_engine, make_url, text

from gateway.app import Gateway
from gateway.settings import Settings
from store import db
from tests.helpers import PG_SERVER_URL, SUPPORT, all_cases, make_mail, settle

# Holds an exclusive write lock on one SQLite file until its stdin closes.
LOCK_HOLDER = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
connection.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
connection.execute("ROLLBACK")
"""


@contextmanager
def sqlite_locked(path: Path) -> Iterator[None]:
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        yield
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(30)


@contextmanager
def postgresql_refusing(database_url: str) -> Iterator[None]:
    name = make_url(database_url).database
    admin = create_engine(PG_SERVER_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            connection.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"), {"name": name}
            )
        yield
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()


@contextmanager
def outage(settings: Settings) -> Iterator[None]:
    if settings.database_url.startswith("sqlite"):
        with sqlite_locked(settings.data_dir / "journal.db"):
            yield
    else:
        with postgresql_refusing(settings.database_url):
            yield


async def _data_reply(settings: Settings, raw: bytes) -> tuple[int, str]:
    """The reply to DATA, whatever it is (a 4xx too), on a fresh connection."""
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=settings.smtp_port, timeout=150) as client:
        await client.ehlo()
        await client.mail("jan.kowalski@klient.example")
        await client.rcpt(SUPPORT)
        try:
            response = await client.data(raw)
        except aiosmtplib.SMTPDataError as error:
            return error.code, error.message
        return response.code, response.message


async def _healthz(settings: Settings) -> int:
    async with httpx.AsyncClient(timeout=30) as client:
        return (await client.get(f"http://127.0.0.1:{settings.http_port}/healthz")).status_code


@pytest.fixture
async def gateway(settings_factory: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Gateway]:
    # An outage of five seconds is as good as one of sixty, and the run is a minute shorter.
    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_SECONDS", 5.0)
    # The SMTP session must outlive the journal's busy timeout to hear the 451 (see the report in
    # the module docstring): with both at 60 s the idle timer drops the session first.
    running = Gateway(settings_factory(smtp_timeout_seconds=150))
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


async def test_an_outage_answers_451_and_keeps_what_was_acknowledged(gateway: Gateway):
    settings = gateway.settings
    before = make_mail(subject="przed awarią")
    during = make_mail(subject="w czasie awarii")
    after = make_mail(subject="po awarii")
    assert (await _data_reply(settings, before.as_bytes()))[0] == 250  # acknowledged: must survive

    with outage(settings):
        code, reply = await _data_reply(settings, during.as_bytes())
        assert (code, reply[:5]) == (451, "4.3.0"), (code, reply)
        if not settings.database_url.startswith("sqlite"):
            # With SQLite only the journal file is locked; the database /healthz reads stays up.
            assert await _healthz(settings) == 503

    assert await _healthz(settings) == 200
    assert (await _data_reply(settings, after.as_bytes()))[0] == 250
    await settle(gateway, timeout=120)
    stored = sorted(
        message["message_id"]
        for case in all_cases(gateway)
        for message in case["messages"]
        if message["direction"] == "inbound"
    )
    expected = sorted(str(m["Message-ID"]).strip("<>") for m in (before, after))
    assert stored == expected  # the acknowledged ones, each once; the refused one never
