"""IMAP mail through the whole gateway (SPEC §9): cases, dedupe with SMTP, the 15 MiB rule, health.

The pollers here are the ones `gateway serve` builds from settings, against a real Dovecot.
"""

from __future__ import annotations

import asyncio
import time
from email.message import EmailMessage

import httpx
from sqlalchemy import update

from gateway.app import Gateway
from store.db import transaction
from store.models import ImapState
from tests.helpers import all_cases, make_mail, send, sent_to, settle
from tests.servers.dovecot import make_dovecot_fixture

dovecot = make_dovecot_fixture()
dovecot_without_idle = make_dovecot_fixture(
    name="dovecot_without_idle", extra_config="imap_capability = IMAP4rev1 LITERAL+\n"
)

LIMIT = 15 * 1024 * 1024


def crlf(message) -> bytes:  # type: ignore[no-untyped-def]
    return message.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def plain_text(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("plain",))
    assert isinstance(body, EmailMessage), "no text part"
    return str(body.get_content())


async def _gateway(settings_factory, server, **mailbox) -> Gateway:  # type: ignore[no-untyped-def]
    settings = settings_factory(imap_mailboxes=[server.mailbox_settings(**mailbox)])
    gateway = Gateway(settings)
    await gateway.start()
    return gateway


async def _wait_for_cases(gateway: Gateway, count: int, timeout: float = 30, start: float | None = None) -> float:
    start = time.monotonic() if start is None else start
    while len(all_cases(gateway)) < count:
        assert time.monotonic() - start < timeout, "IMAP mail did not become a case"
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def _time_append_to_case(gateway: Gateway, server, subject: str, count: int) -> float:  # type: ignore[no-untyped-def]
    raw = crlf(make_mail(subject=subject))
    start = time.monotonic()  # before the APPEND: the poll may run while the client logs out
    await asyncio.to_thread(server.append, raw)
    return await _wait_for_cases(gateway, count, start=start)


async def test_appended_mail_becomes_a_case_quickly_with_idle_and_with_polling(
    settings_factory, dovecot, dovecot_without_idle
):
    timings = {}
    for label, server, poll in (("idle", dovecot, 300.0), ("poll 1 s", dovecot_without_idle, 1.0)):
        gateway = await _gateway(settings_factory, server, poll_seconds=poll)
        try:
            await _wait_for_state(gateway, ("idle", "waiting"))
            before = len(all_cases(gateway))  # both gateways share the test's database
            timings[label] = [
                await _time_append_to_case(gateway, server, f"{label} {n}", before + n + 1) for n in range(3)
            ]
        finally:
            await gateway.stop()
    # Each case arrived within _wait_for_cases' 30 s deadline; with a 300 s poll only IDLE explains
    # that. The figures themselves are for reading (bounds on them belong in `make bench`).
    print("APPEND to case, seconds:", {k: [round(v, 3) for v in vs] for k, vs in timings.items()})
    assert all(len(values) == 3 for values in timings.values())


async def _wait_for_state(gateway: Gateway, states: tuple[str, ...], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not all(poller.status["state"] in states for poller in gateway.pollers):
        assert time.monotonic() < deadline, [poller.status for poller in gateway.pollers]
        await asyncio.sleep(0.05)


async def test_healthz_reports_each_mailbox(settings_factory, dovecot):
    gateway = await _gateway(settings_factory, dovecot, poll_seconds=300.0)
    try:
        await _wait_for_state(gateway, ("idle",))
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{gateway.settings.http_port}/healthz")
        assert response.status_code == 200
        assert response.json()["imap"]["support"]["state"] == "idle"
    finally:
        await gateway.stop()


async def test_the_same_mail_over_smtp_and_in_the_mailbox_is_stored_once(settings_factory, dovecot):
    gateway = await _gateway(settings_factory, dovecot, poll_seconds=300.0)
    try:
        message = make_mail(subject="Dwiema drogami")
        await send(gateway.settings, message)
        await settle(gateway)
        copy = crlf(message)
        copy = b"Delivered-To: support@example.test\r\nReturn-Path: <jan@klient.example>\r\n" + copy
        await asyncio.to_thread(dovecot.append, copy)
        await _wait_for_journal_entries(gateway, 2)
        await settle(gateway)
        [case] = all_cases(gateway)
        assert [m["direction"] for m in case["messages"]].count("inbound") == 1
    finally:
        await gateway.stop()


async def _wait_for_journal_entries(gateway: Gateway, count: int, timeout: float = 20) -> None:
    from sqlalchemy import func
    from sqlmodel import select

    from store.db import reading
    from store.models import JournalEntry

    deadline = time.monotonic() + timeout
    while True:
        with reading(gateway.components.journal_engine) as session:
            if session.exec(select(func.count()).select_from(JournalEntry)).one() >= count:
                return
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)


async def test_oversized_attachment_from_a_mailbox_is_refused_and_the_sender_told(settings_factory, dovecot):
    gateway = await _gateway(settings_factory, dovecot, poll_seconds=300.0)
    try:
        message = make_mail(
            sender="duzy@klient.example", subject="Duży plik", attachments=[("skan.pdf", b"x" * (LIMIT + 1))]
        )
        await asyncio.to_thread(dovecot.append, crlf(message))
        await _wait_for_cases(gateway, 1)
        await settle(gateway, outbox=True)
        [case] = all_cases(gateway)
        [attachment] = case["messages"][0]["attachments"]
        assert attachment["refused"] and attachment["size"] == LIMIT + 1
        # Read decoded: the notice's text may travel base64- or QP-encoded.
        texts = [plain_text(message) for message in sent_to(gateway.settings, "duzy@klient.example")]
        assert len([text for text in texts if "skan.pdf" in text]) == 1
    finally:
        await gateway.stop()


async def test_refetch_after_a_crash_before_the_flag_yields_no_duplicate(settings_factory, dovecot):
    """As if the gateway died after journaling but before flagging and recording the UID."""
    gateway = await _gateway(settings_factory, dovecot, poll_seconds=300.0)
    try:
        uid = await asyncio.to_thread(dovecot.append, crlf(make_mail(subject="Raz tylko")))
        await _wait_for_cases(gateway, 1)
        await settle(gateway)
    finally:
        await gateway.stop()
    with transaction(gateway.components.engine) as session:
        session.execute(update(ImapState).values(last_uid=0))
    with dovecot.client() as connection:
        connection.select("INBOX")
        connection.uid("STORE", str(uid), "-FLAGS", "(\\Seen)")
    restarted = Gateway(gateway.settings)
    await restarted.start()
    try:
        await _wait_for_journal_entries(restarted, 2)
        await settle(restarted)
        [case] = all_cases(restarted)
        assert [m["direction"] for m in case["messages"]].count("inbound") == 1
        assert "\\Seen" in dovecot.messages()[uid]
    finally:
        await restarted.stop()
