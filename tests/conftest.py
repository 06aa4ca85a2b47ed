"""Shared fixtures: a real gateway on loopback ports, a database per test, and mail helpers.

The backend is SQLite by default; `GATEWAY_TEST_BACKEND=postgresql` runs the same tests against a
fresh PostgreSQL database per test (created on the server at GATEWAY_TEST_PG_URL).
"""

from __future__ import annotations

import asyncio
import email
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from email import policy
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from sqlalchemy import create_engine, func, text
from sqlmodel import col, select

from gateway.service import Gateway
from gateway.settings import Settings, load_settings
from gateway.views import case_detail, case_summary
from store import cases
from store.db import reading
from store.models import JournalEntry, OutboxItem

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"
PG_SERVER_URL = os.environ.get("GATEWAY_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
BACKEND = os.environ.get("GATEWAY_TEST_BACKEND", "sqlite")
SUPPORT = "bok@example.test"
STAFF = "agent@example.test"
STAFF_QUEUE = "staff-queue@example.test"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On the PostgreSQL pass, run only the tests whose outcome depends on the database."""
    if BACKEND != "postgresql":
        return
    kept = [item for item in items if "database_url" in getattr(item, "fixturenames", ())]
    config.hook.pytest_deselected(items=[item for item in items if item not in kept])
    items[:] = kept


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    if BACKEND != "postgresql":
        yield f"sqlite:///{tmp_path / 'gateway.db'}"
        return
    name = f"gw_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_SERVER_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    yield PG_SERVER_URL.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def settings_factory(tmp_path: Path, database_url: str):  # type: ignore[no-untyped-def]
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": database_url,
            "data_dir": tmp_path / "data",
            "smtp_port": free_port(),
            "http_port": free_port(),
            "relay_url": f"maildir:{tmp_path / 'sent'}",
            "support_address": SUPPORT,
            "staff_addresses": [STAFF, "@staff.example.test"],
            "staff_queue_address": STAFF_QUEUE,
            "panel_secret": "test-panel-secret",
            "signing_secret": "test-signing-secret",
            "outbox_poll_seconds": 0.2,
            "instance_name": f"test-{uuid.uuid4().hex[:6]}",
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


def make_mail(
    *,
    sender: str = "jan.kowalski@klient.example",
    to: str = SUPPORT,
    subject: str = "Problem z pocztą",
    body: str = "Dzień dobry, nie działa mi poczta.",
    message_id: str | None = None,
    in_reply_to: str | None = None,
    headers: dict[str, str] | None = None,
    attachments: list[tuple[str, bytes]] | None = None,
) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = message_id or make_msgid(domain="klient.example")
    if in_reply_to:
        message["In-Reply-To"] = in_reply_to
        message["References"] = in_reply_to
    for name, value in (headers or {}).items():
        message[name] = value
    message.set_content(body)
    for filename, content in attachments or []:
        message.add_attachment(content, maintype="application", subtype="octet-stream", filename=filename)
    return message


async def send(
    settings: Settings,
    message: EmailMessage | bytes,
    *,
    mail_from: str | None = None,
    recipients: list[str] | None = None,
) -> tuple[int, str]:
    """Deliver over real SMTP to the gateway's listener; returns the reply to DATA."""
    raw = message if isinstance(message, bytes) else message.as_bytes()
    if mail_from is None:
        mail_from = "sender@klient.example" if isinstance(message, bytes) else str(message["From"])
    async with aiosmtplib.SMTP(
        hostname=settings.smtp_host, port=settings.smtp_port, timeout=60, start_tls=False
    ) as client:
        await client.ehlo()
        await client.mail(mail_from)
        for recipient in recipients or [SUPPORT]:
            await client.rcpt(recipient)
        response = await client.data(raw)
    return response.code, response.message


async def settle(gateway: Gateway, *, timeout: float = 30.0, outbox: bool = False) -> None:
    """Wait until every journal entry is processed (and, with outbox=True, every mail sent)."""
    assert gateway.components is not None
    engine, journal_engine = gateway.components.engine, gateway.components.journal_engine

    def busy() -> bool:
        with reading(journal_engine) as session:
            pending = session.exec(select(func.count()).where(JournalEntry.status == "pending")).one()
        with reading(engine) as session:
            queued = 0
            if outbox:
                queued = session.exec(
                    select(func.count()).where(col(OutboxItem.status).in_(("queued", "sending")))
                ).one()
        return bool(pending or queued)

    deadline = asyncio.get_running_loop().time() + timeout
    while await asyncio.to_thread(busy):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("the gateway did not settle in time")
        if outbox and gateway.outbox is not None:
            gateway.outbox.wake()
        await asyncio.sleep(0.05)


def all_cases(gateway: Gateway) -> list[dict[str, Any]]:
    assert gateway.components is not None
    with reading(gateway.components.engine) as session:
        return [case_detail(session=session, case=case) for case in reversed(cases.list_cases(session=session))]


def case_by_number(gateway: Gateway, number: str) -> dict[str, Any]:
    assert gateway.components is not None
    with reading(gateway.components.engine) as session:
        case = cases.get_case_by_number(session=session, number=number)
        assert case is not None, number
        return case_detail(session=session, case=case)


def parsed(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def parsed_sent(settings: Settings) -> list[EmailMessage]:
    return [parsed(raw) for raw in sent_mail(settings)]


def sent_to(settings: Settings, address: str) -> list[EmailMessage]:
    """What the relay delivered to `address` (on the To line), oldest first."""
    return [message for message in parsed_sent(settings) if address in str(message["To"])]


def engine_of(gateway: Gateway):  # type: ignore[no-untyped-def]
    assert gateway.components is not None
    return gateway.components.engine


def sent_mail(settings: Settings) -> list[bytes]:
    """Everything the maildir relay delivered, oldest first."""
    new = Path(settings.relay_url.removeprefix("maildir:")) / "new"
    if not new.is_dir():
        return []
    return [path.read_bytes() for path in sorted(new.iterdir(), key=lambda p: p.stat().st_mtime_ns)]


__all__ = ["case_summary"]
