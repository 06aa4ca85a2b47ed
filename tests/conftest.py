"""Shared fixtures: a real gateway on loopback ports and a database per test (helpers: tests/helpers.py).

The backend is SQLite by default; `GATEWAY_TEST_BACKEND=postgresql` runs the same tests against a
fresh PostgreSQL database per test (created on the server at GATEWAY_TEST_PG_URL).
"""

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, make_url, text

from gateway.app import Gateway
from gateway.settings import Settings, load_settings
from store import db
from tests.helpers import (
    BACKEND,
    PG_SERVER_URL,
    STAFF,
    STAFF_QUEUE,
    SUPPORT,
    TRUSTED_AUTHSERV_ID,
    throwaway_pg_database,
)

# Sender trust: no gateway the tests start (in process or as `gateway serve`/`ingest` children, which
# inherit this) asks this machine's resolver; tests/test_trust*.py turn checks on with their own DNS server.
os.environ.setdefault("GATEWAY_SENDER_VERIFICATION", "off")


def _missing_components() -> list[str]:
    """What the suite drives for real and this machine lacks: PostgreSQL, Dovecot, Chromium."""
    from tests.servers.chromium import CANDIDATES
    from tests.servers.dovecot import dovecot_binary

    missing = []
    try:
        engine = create_engine(PG_SERVER_URL)
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as error:
        missing.append(f"PostgreSQL at {PG_SERVER_URL} ({type(error).__name__})")
    if dovecot_binary() is None:
        missing.append("Dovecot (dovecot-imapd)")
    if not any(shutil.which(name) for name in CANDIDATES):
        missing.append(f"Chromium (one of {', '.join(CANDIDATES)} on PATH)")
    return missing


def pytest_sessionstart(session: pytest.Session) -> None:
    """A missing required component stops the run as an error: the tests that need it would otherwise
    fail one by one (or, worse, be skipped and read as passed). tests/install-system-deps.sh installs them."""
    if session.config.option.collectonly:
        return
    missing = _missing_components()
    if missing:
        pytest.exit(
            "required for the test suite and missing: " + "; ".join(missing) + " (run tests/install-system-deps.sh)",
            returncode=pytest.ExitCode.USAGE_ERROR,
        )


_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _skipped.append(f"{report.nodeid}: {reason}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With GATEWAY_TEST_NO_SKIPS=1 (CI, where ../shared is beside the clone) any skip fails the run:
    only the optional corpus may skip, and CI has it."""
    if os.environ.get("GATEWAY_TEST_NO_SKIPS") == "1" and _skipped:
        print("\nGATEWAY_TEST_NO_SKIPS=1 and these tests were skipped:\n  " + "\n  ".join(_skipped))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On the PostgreSQL pass, run only the tests whose outcome depends on the database; on SQLite,
    leave out those about something only PostgreSQL has (deselected rather than skipped, so that
    GATEWAY_TEST_NO_SKIPS still means no test was skipped)."""
    if BACKEND != "postgresql":
        kept = [item for item in items if item.get_closest_marker("postgresql_only") is None]
    else:
        kept = [
            item for item in items if {"database_url", "empty_database_url"} & set(getattr(item, "fixturenames", ()))
        ]
    config.hook.pytest_deselected(items=[item for item in items if item not in kept])
    items[:] = kept


def _migrate(url: str) -> None:
    engine = db.make_engine(url)
    try:
        db.upgrade(engine)
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def migrated_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A database at the head revision, made once per run: each test's database starts as a copy of
    it (a file copy on SQLite, CREATE DATABASE ... TEMPLATE on PostgreSQL), instead of running the
    migrations again, which took about half a second per test on PostgreSQL. Yields the SQLite file's
    path or the PostgreSQL database's name."""
    if BACKEND != "postgresql":
        path = tmp_path_factory.mktemp("template") / "gateway.db"
        _migrate(f"sqlite:///{path}")
        # The last connection's close checkpoints the write-ahead log into the file and removes it:
        # the file alone is the whole database.
        assert not path.with_name(path.name + "-wal").exists()
        yield str(path)
        return
    with throwaway_pg_database("gw_template") as url:
        _migrate(url)
        yield make_url(url).database or ""


@pytest.fixture
def database_url(tmp_path: Path, migrated_template: str) -> Iterator[str]:
    """This test's own database, at the head revision (as `gateway serve` leaves a new one)."""
    if BACKEND != "postgresql":
        copy = tmp_path / "gateway.db"
        shutil.copyfile(migrated_template, copy)
        yield f"sqlite:///{copy}"
        return
    with throwaway_pg_database("gw_test", template=migrated_template) as url:
        yield url


@pytest.fixture
def empty_database_url(tmp_path: Path) -> Iterator[str]:
    """A new database no migration has touched: for the tests of the migrations themselves."""
    if BACKEND != "postgresql":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    with throwaway_pg_database("gw_empty") as url:
        yield url


@pytest.fixture
def settings_factory(tmp_path: Path, database_url: str):  # type: ignore[no-untyped-def]
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": database_url,
            "data_dir": tmp_path / "data",
            # Any free port: Gateway.start() binds port 0 and writes the ports it got back here.
            "smtp_port": 0,
            "http_port": 0,
            "relay_url": f"maildir:{tmp_path / 'sent'}",
            "support_address": SUPPORT,
            "staff_addresses": [STAFF, "@staff.example.test"],
            "staff_queue_address": STAFF_QUEUE,
            "panel_secret": "test-panel-secret",
            "signing_secret": "test-signing-secret",
            "outbox_poll_seconds": 0.2,
            "instance_name": f"test-{uuid.uuid4().hex[:6]}",
            # Sender trust: never ask this machine's resolver; 127.0.0.1 (where the tests send from) is
            # a trusted relay, so a test may authenticate mail with an Authentication-Results header
            # of TRUSTED_AUTHSERV_ID (tests/helpers.py); tests/test_trust*.py start their own DNS server.
            "sender_verification": "off",
            "trusted_relays": ["127.0.0.1"],
            "trusted_authserv_ids": [TRUSTED_AUTHSERV_ID],
        }
        values.update(overrides)
        return load_settings(**values)

    return make


@pytest.fixture
def settings(settings_factory) -> Settings:  # type: ignore[no-untyped-def]
    return settings_factory()


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[Gateway]:
    running = Gateway(settings)
    await running.start()
    try:
        yield running
    finally:
        await running.stop()
