"""Helpers the tests share: mail to build, sending it over real SMTP, waiting, reading what was stored and sent.

Fixtures live in conftest.py; everything here is a plain function or constant, imported explicitly.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import os
import re
import socket
import uuid
from collections.abc import Iterator
from email import policy
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

import aiosmtplib
from sqlalchemy import create_engine, func, text
from sqlmodel import col, select

from gateway.app import Components, Gateway
from gateway.cli.views import case_detail
from gateway.outbound.relay import relay_for
from gateway.outbound.replies import Outgoing
from gateway.outbound.worker import OutboxWorker
from gateway.settings import Settings
from store import cases
from store.db import reading, transaction
from store.models import Case, JournalEntry, OutboxItem

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"  # optional: tests that need it skip, naming it, when absent
FIXTURES = REPO / "tests" / "fixtures"  # mail the project ships for its own tests
PG_SERVER_URL = os.environ.get("GATEWAY_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
BACKEND = os.environ.get("GATEWAY_TEST_BACKEND", "sqlite")
SUPPORT = "bok@example.test"
STAFF = "agent@example.test"
STAFF_QUEUE = "staff-queue@example.test"
# The authserv-id of the trusted relay the tests play (conftest: 127.0.0.1 is trusted).
TRUSTED_AUTHSERV_ID = "mx.example.test"


def authenticated(message: EmailMessage) -> EmailMessage:
    """`message` as the trusted relay in front of us passes it on: DMARC pass for its From domain."""
    domain = message["From"].addresses[0].domain if message["From"] else ""
    message["Authentication-Results"] = f"{TRUSTED_AUTHSERV_ID}; dmarc=pass header.from={domain}"
    return message


def free_port() -> int:
    """A port that was free a moment ago, for the one server that cannot bind port 0 and say which
    port it got (Dovecot: port 0 disables a listener). Racy by nature; tests/servers/dovecot.py starts
    again on another port if the bind fails. Everything else binds port 0 and reports its port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
    """Everything the maildir relay delivered, in the order the outbox queued it.

    The relay names each file after its outbox row (`outbox-<id>.<host>`) and row ids only grow, so
    they order the mail without ties; file times can tie within one clock tick.
    """
    new = Path(settings.relay_url.removeprefix("maildir:")) / "new"
    if not new.is_dir():
        return []
    return [path.read_bytes() for path in sorted(new.iterdir(), key=_delivery_order)]


def _delivery_order(path: Path) -> int:
    row = re.match(r"outbox-(\d+)\.", path.name)
    assert row is not None, f"not a file the maildir relay writes: {path.name}"
    return int(row.group(1))


@contextlib.contextmanager
def throwaway_pg_database(prefix: str = "gw_test", *, template: str | None = None) -> Iterator[str]:
    """A fresh database on the test PostgreSQL server (empty, or a copy of the database named
    `template`), dropped afterwards. No server is an error, never a skip: `make test` installs and
    starts PostgreSQL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_SERVER_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            copied_from = f' TEMPLATE "{template}"' if template else ""
            connection.execute(text(f'CREATE DATABASE "{name}"{copied_from}'))
        yield PG_SERVER_URL.rsplit("/", 1)[0] + f"/{name}"
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


# --- the outbox, driven directly (relay tests) -----------------------------------------------------


def queue_acks(components: Components, recipients: list[str], *, subject: str = "test") -> None:
    """One case and an acknowledgement to each recipient, queued as the pipeline would queue them."""
    with transaction(components.engine) as session:
        case = Case(number="2026-000001", requester=recipients[0], subject=subject)
        session.add(case)
        session.flush()
        for recipient in recipients:
            components.replies.queue(
                session=session,
                case=case,
                mail=Outgoing(kind="ack", recipient=recipient, automatic=True, context={"received_subject": subject}),
            )


def outbox_rows(components: Components) -> list[OutboxItem]:
    with reading(components.engine) as session:
        return list(session.exec(select(OutboxItem).order_by(col(OutboxItem.id))).all())


def outbox_worker(components: Components, settings: Settings) -> OutboxWorker:
    return OutboxWorker(
        engine=components.engine, settings=settings, relay=relay_for(settings), replies=components.replies
    )
