"""The outbox against a real SMTP relay (tests/relay_sink.py): retries, backoff, failures, exactly once.

The gateway relays to an aiosmtpd sink on loopback that can answer 421/451/550 or drop the
connection; what the sink saw on the wire and what the outbox table says are both checked.
"""

from __future__ import annotations

import asyncio
import email
import itertools
import random
import signal
import smtplib
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from email import policy
from pathlib import Path

import pytest
from sqlmodel import col, select

from gateway.app import Gateway
from gateway.outbound.relay import make_relay
from gateway.outbound.worker import OutboxWorker
from gateway.settings import Settings
from store.db import make_engine, reading
from store.models import Message, OutboxItem
from tests.helpers import STAFF_QUEUE, make_mail, send, settle
from tests.servers.relay_sink import DROP, Delivery, RelaySink
from tests.servers.serve import serve_env, start_serve, wait_until

CUSTOMER = "jan.kowalski@klient.example"
BACKOFF = 0.2


@pytest.fixture
def sink() -> Iterator[RelaySink]:
    with RelaySink() as running:
        yield running


@pytest.fixture
def relay_settings(settings_factory: Callable[..., Settings], sink: RelaySink) -> Settings:
    return settings_factory(relay_url=sink.url, outbox_backoff_seconds=BACKOFF, relay_timeout_seconds=5)


@pytest.fixture
async def relayed(relay_settings: Settings) -> AsyncIterator[Gateway]:
    running = Gateway(relay_settings)
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


def outbox_rows(gateway: Gateway) -> list[OutboxItem]:
    assert gateway.components is not None
    with reading(gateway.components.engine) as session:
        return list(session.exec(select(OutboxItem).order_by(col(OutboxItem.id))).all())


def row_of(gateway: Gateway, *, kind: str, recipient: str) -> OutboxItem:
    [row] = [r for r in outbox_rows(gateway) if _kind(r) == kind and r.recipient == recipient]
    return row


def _kind(row: OutboxItem) -> str:
    """The kind of mail, whichever variant: an unverified sender's acknowledgement is still one."""
    return row.kind.removesuffix("_unverified")


def delivery_status(gateway: Gateway, outbox_id: int) -> str | None:
    assert gateway.components is not None
    with reading(gateway.components.engine) as session:
        message = session.exec(select(Message).where(Message.outbox_id == outbox_id)).one()
        return message.delivery_status


async def wait_rows(
    gateway: Gateway, predicate: Callable[[list[OutboxItem]], bool], *, timeout: float = 30.0
) -> list[OutboxItem]:
    deadline = time.monotonic() + timeout
    while True:
        rows = await asyncio.to_thread(outbox_rows, gateway)
        if predicate(rows):
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(f"outbox never reached the expected state: {[(r.kind, r.status) for r in rows]}")
        await asyncio.sleep(0.05)


async def customer_writes(gateway: Gateway, settings: Settings, **fields: str) -> None:
    assert (await send(settings, make_mail(sender=CUSTOMER, **fields)))[0] == 250
    await settle(gateway)


# --- temporary failures ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply",
    ["451 4.3.0 Temporary local problem", "421 4.3.2 Service shutting down", DROP],
    ids=["451", "421", "dropped-connection"],
)
async def test_temporary_failures_are_retried_with_growing_backoff(relayed, relay_settings, sink, reply):
    sink.fail(reply, count=3, recipient=CUSTOMER)
    await customer_writes(relayed, relay_settings)
    await sink.wait_for(lambda s: len(s.accepted_to(CUSTOMER)) == 1)

    [ack] = sink.accepted_to(CUSTOMER)
    attempts = sink.attempts_of(ack.message_id)
    assert [a.reply for a in attempts] == [reply] * 3 + [ack.reply]
    # The very same bytes every time: Message-ID, Date and body are fixed before the first attempt.
    assert len({a.raw for a in attempts}) == 1
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(attempts)]
    # Backoff 0.2 s doubling, jitter ±20 %: never sooner than 0.16, 0.32, 0.64 s. Only lower bounds:
    # a loaded machine makes gaps longer, never shorter, so this cannot fail for slowness; how long
    # the gaps really are is a matter for `make bench`, not for a test.
    for number, gap in enumerate(gaps):
        assert gap >= 0.8 * BACKOFF * 2**number - 0.01, gaps

    await settle(relayed, outbox=True)
    row = row_of(relayed, kind="ack", recipient=CUSTOMER)
    assert (row.status, row.attempts, row.message_id) == ("sent", 4, ack.message_id)
    assert row.last_error and (reply[:3] in row.last_error or "Disconnected" in row.last_error)
    assert delivery_status(relayed, row.id or 0) == "sent"
    assert len(sink.accepted) == 2  # the ack and the staff notification, nothing twice


async def test_a_temporary_refusal_at_rcpt_is_retried(relayed, relay_settings, sink):
    sink.fail("450 4.2.1 Mailbox busy", count=2, recipient=CUSTOMER, stage="rcpt")
    await customer_writes(relayed, relay_settings)
    await sink.wait_for(lambda s: len(s.accepted_to(CUSTOMER)) == 1)
    assert len(sink.refused_recipients) == 2
    await settle(relayed, outbox=True)
    assert row_of(relayed, kind="ack", recipient=CUSTOMER).attempts == 3


async def test_a_refused_connection_waits_in_the_queue(settings_factory):
    # A port that is bound but not listening refuses every connection, and stays ours for the test.
    with socket.socket() as closed_port:
        closed_port.bind(("127.0.0.1", 0))
        port = closed_port.getsockname()[1]
        settings = settings_factory(relay_url=f"smtp://127.0.0.1:{port}", outbox_backoff_seconds=BACKOFF)
        gateway = Gateway(settings)
        await gateway.start()
        try:
            await customer_writes(gateway, settings)
            rows = await wait_rows(gateway, lambda rows: len(rows) == 2 and all(r.attempts >= 2 for r in rows))
            for row in rows:
                assert row.status in ("queued", "sending")
                assert row.last_error and "Connect" in row.last_error
                assert row.sent_at is None
        finally:
            await gateway.stop()


async def test_next_attempt_is_scheduled_after_a_failure(relayed, relay_settings, sink):
    sink.fail("451 4.3.0 later", recipient=CUSTOMER)
    await customer_writes(relayed, relay_settings)
    # Wait for a moment between attempts (status queued), not one caught in the middle of an attempt.
    rows = await wait_rows(
        relayed, lambda rows: any(_kind(r) == "ack" and r.attempts >= 3 and r.status == "queued" for r in rows)
    )
    [row] = [r for r in rows if _kind(r) == "ack"]
    assert row.next_attempt_at > row.created_at
    assert row.claimed_by is None and row.claimed_until is None
    assert sink.accepted_to(CUSTOMER) == []


def test_backoff_doubles_with_jitter_and_is_capped(relay_settings: Settings):
    worker = OutboxWorker(
        engine=None,  # type: ignore[arg-type]  # backoff_seconds touches no database
        settings=relay_settings.model_copy(update={"outbox_backoff_seconds": 30, "outbox_backoff_max_seconds": 600}),
        relay=make_relay(relay_settings.relay_url, timeout=1),
        replies=None,  # type: ignore[arg-type]
    )
    random.seed(4)
    for attempts, nominal in [(1, 30), (2, 60), (3, 120), (4, 240), (5, 480), (6, 600), (12, 600)]:
        values = [worker.backoff_seconds(attempts) for _ in range(200)]
        assert all(0.8 * nominal <= value <= 1.2 * nominal for value in values), (attempts, min(values), max(values))
        assert max(values) - min(values) > 0.1 * nominal  # jitter: instances do not retry in lockstep


# --- permanent failures ------------------------------------------------------------------------


def _parse(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=policy.default)  # type: ignore[return-value]


@pytest.mark.parametrize("stage", ["data", "rcpt"])
async def test_a_permanent_failure_marks_the_message_failed_and_tells_staff(relayed, relay_settings, sink, stage):
    sink.fail("550 5.1.1 <jan.kowalski@klient.example>: Recipient address rejected", recipient=CUSTOMER, stage=stage)
    await customer_writes(relayed, relay_settings, subject="Faktura")
    await settle(relayed, outbox=True)

    row = row_of(relayed, kind="ack", recipient=CUSTOMER)
    assert row.status == "failed" and row.attempts == 1  # no retry for a 5xx
    assert "550" in (row.last_error or "")
    assert delivery_status(relayed, row.id or 0) == "failed"
    assert sink.accepted_to(CUSTOMER) == []

    notices = [_parse(d.raw) for d in sink.accepted_to(STAFF_QUEUE)]
    [notice] = [n for n in notices if n["In-Reply-To"] == f"<{row.message_id}>"]
    assert CUSTOMER in str(notice["Subject"]) and "[#" in str(notice["Subject"])
    body = notice.get_body(("plain",)).get_content()
    assert "550" in body and CUSTOMER in body
    assert row_of(relayed, kind="delivery_failed", recipient=STAFF_QUEUE).status == "sent"


async def test_the_give_up_age_turns_temporary_failures_into_a_failure(settings_factory, sink):
    settings = settings_factory(
        relay_url=sink.url,
        outbox_backoff_seconds=0.1,
        outbox_give_up_hours=1.0 / 3600,  # one second
    )
    sink.fail("451 4.7.1 Greylisted, try again later", recipient=CUSTOMER)
    gateway = Gateway(settings)
    await gateway.start()
    try:
        await customer_writes(gateway, settings)
        await wait_rows(gateway, lambda rows: any(_kind(r) == "ack" and r.status == "failed" for r in rows))
        row = row_of(gateway, kind="ack", recipient=CUSTOMER)
        assert row.attempts >= 2 and "gave up" in (row.last_error or "")
        assert delivery_status(gateway, row.id or 0) == "failed"
        await sink.wait_for(
            lambda s: any(_parse(d.raw)["In-Reply-To"] == f"<{row.message_id}>" for d in s.accepted_to(STAFF_QUEUE))
        )
        assert sink.accepted_to(CUSTOMER) == []
    finally:
        await gateway.stop()


async def test_a_failed_staff_notice_does_not_notify_about_itself(relayed, relay_settings, sink):
    sink.fail("550 5.1.1 no such mailbox", recipient=STAFF_QUEUE)
    await customer_writes(relayed, relay_settings)
    await settle(relayed, outbox=True)
    assert row_of(relayed, kind="notification", recipient=STAFF_QUEUE).status == "failed"
    assert [_kind(r) for r in outbox_rows(relayed)] == ["ack", "notification"]
    assert len(sink.accepted_to(CUSTOMER)) == 1


# --- exactly once ----------------------------------------------------------------------------------


async def test_two_instances_on_one_database_send_each_message_once(settings_factory, sink):
    first = Gateway(settings_factory(relay_url=sink.url, outbox_backoff_seconds=BACKOFF))
    second = Gateway(settings_factory(relay_url=sink.url, outbox_backoff_seconds=BACKOFF))
    await first.start()
    await second.start()
    try:
        sink.fail("451 4.3.0 later", count=6)
        for number in range(8):
            await send(first.settings, make_mail(sender=f"klient{number}@klient.example", subject=f"sprawa {number}"))
        await settle(first)
        await settle(second, outbox=True)
        await settle(first, outbox=True)
        ids = [row.message_id for row in outbox_rows(first)]
        assert len(ids) == 16
        assert Counter(d.message_id for d in sink.accepted) == Counter(ids)
    finally:
        await second.stop()
        await first.stop()


def test_an_attempt_that_outlived_its_lease_does_not_undo_a_delivery(tmp_path: Path, database_url: str):
    """Two `gateway serve` processes. The relay keeps the first attempt waiting and its instance is
    frozen (SIGSTOP) past its lease; the other instance takes the row over and delivers it. When the
    frozen one wakes up (SIGCONT) and its attempt finally fails, the row must stay sent: were it
    queued again, the customer would get the mail twice."""
    with RelaySink() as sink:
        release = sink.hold("451 4.3.0 try later", recipient=CUSTOMER)
        instances = {}
        for name in ("gw-a", "gw-b"):
            env = serve_env(
                tmp_path / name,
                database_url,
                sink.url,
                GATEWAY_STAFF_QUEUE_ADDRESS=STAFF_QUEUE,
                GATEWAY_INSTANCE_NAME=name,
                GATEWAY_OUTBOX_POLL_SECONDS="0.2",
                GATEWAY_OUTBOX_BACKOFF_SECONDS="0.5",
                GATEWAY_RELAY_TIMEOUT_SECONDS="1",  # a lease of a few seconds
                GATEWAY_PANEL_SECRET="shared-panel-secret",
                GATEWAY_SIGNING_SECRET="shared-signing-secret",
                # One data directory: with SQLite it holds the journal, which instances on one
                # database must share (each its own journal.db would reuse journal ids).
                GATEWAY_DATA_DIR=str(tmp_path / "data"),
            )
            instances[name] = start_serve(env, tmp_path / f"{name}.log")
        try:
            with smtplib.SMTP("127.0.0.1", instances["gw-a"].smtp_port, timeout=30) as client:
                client.send_message(make_mail(sender=CUSTOMER, subject="pierwsza"))
            wait_until(lambda: sink.holding == 1, 60, "an instance to be stuck on the acknowledgement")
            [ack] = [r for r in _outbox_snapshot(database_url) if r.recipient == CUSTOMER]  # the acknowledgement
            assert ack.claimed_by in instances
            stuck = instances[ack.claimed_by]
            other = next(served for name, served in instances.items() if name != ack.claimed_by)

            stuck.process.send_signal(signal.SIGSTOP)
            try:
                wait_until(lambda: len(sink.accepted_to(CUSTOMER)) == 1, 60, "the other instance to take the row over")
                release.set()  # the stuck attempt's answer is a failure, waiting in the frozen one's socket
            finally:
                stuck.process.send_signal(signal.SIGCONT)
            wait_until(lambda: sink.held_sessions_closed == 1, 60, "the woken instance to finish its old attempt")

            # Proof that nothing more is coming from the stale attempt: the woken instance, alone now,
            # delivers a later message; its worker has been through the outbox again since.
            other.stop()
            with smtplib.SMTP("127.0.0.1", stuck.smtp_port, timeout=30) as client:
                second = make_mail(sender=CUSTOMER, subject="druga")
                client.send_message(second)
            second_id = str(second["Message-ID"]).strip("<>")
            wait_until(
                lambda: any(_in_reply_to(d) == second_id for d in sink.accepted_to(CUSTOMER)),
                60,
                "the acknowledgement of the second message",
            )
        finally:
            for served in instances.values():
                served.stop()

        rows = {row.message_id: row for row in _outbox_snapshot(database_url)}
        assert rows[ack.message_id].status == "sent"
        accepted = Counter(d.message_id for d in sink.accepted_to(CUSTOMER))
        assert accepted[ack.message_id] == 1, f"the first acknowledgement reached the customer {accepted} times"
        assert len(accepted) == 2 and sum(accepted.values()) == 2, accepted


def _in_reply_to(delivery: Delivery) -> str:
    return str(_parse(delivery.raw)["In-Reply-To"] or "").strip().strip("<>")


def _outbox_snapshot(database_url: str) -> list[OutboxItem]:
    engine = make_engine(database_url)
    try:
        with reading(engine) as session:
            return list(session.exec(select(OutboxItem)).all())
    finally:
        engine.dispose()


def _wait_outbox(
    database_url: str, predicate: Callable[[list[OutboxItem]], bool], *, timeout: float
) -> list[OutboxItem]:
    deadline = time.monotonic() + timeout
    while True:
        rows = _outbox_snapshot(database_url)
        if predicate(rows):
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(f"outbox: {[(r.kind, r.status, r.attempts) for r in rows]}")
        time.sleep(0.1)


def test_sigkill_mid_retry_then_restart_delivers_each_message_exactly_once(tmp_path: Path, database_url: str):
    with RelaySink() as sink:
        env = serve_env(
            tmp_path,
            database_url,
            sink.url,
            GATEWAY_STAFF_QUEUE_ADDRESS=STAFF_QUEUE,
            GATEWAY_OUTBOX_POLL_SECONDS="0.2",
            GATEWAY_OUTBOX_BACKOFF_SECONDS="0.5",
            GATEWAY_OUTBOX_BACKOFF_MAX_SECONDS="2",
            GATEWAY_RELAY_TIMEOUT_SECONDS="2",  # a short lease for rows caught mid-attempt
        )
        sink.fail("451 4.3.0 Temporary failure, try again later")
        log = tmp_path / "gateway.log"
        served = start_serve(env, log)
        try:
            with smtplib.SMTP("127.0.0.1", served.smtp_port, timeout=30) as client:
                for number in range(5):
                    client.send_message(make_mail(sender=f"klient{number}@klient.example", subject=f"sprawa {number}"))
            # Every row has failed at least twice and is waiting for its next attempt.
            _wait_outbox(database_url, lambda rows: len(rows) == 10 and all(r.attempts >= 2 for r in rows), timeout=60)
        finally:
            served.kill()
        before = {row.message_id: row.raw for row in _outbox_snapshot(database_url)}
        assert all(len(sink.attempts_of(message_id)) >= 2 for message_id in before)
        assert sink.accepted == []

        sink.accept_all()
        restarted = start_serve(env, log)
        try:
            rows = _wait_outbox(database_url, lambda rows: all(r.status == "sent" for r in rows), timeout=60)
            # A duplicate would be a second attempt of a row already sent. Proof that none is coming:
            # one more message through the same worker, queued after them, is delivered, and by then
            # every earlier row has had its chance to go out again.
            with smtplib.SMTP("127.0.0.1", restarted.smtp_port, timeout=30) as client:
                client.send_message(make_mail(sender="pozniej@klient.example", subject="później"))
            _wait_outbox(
                database_url, lambda rows: len(rows) == 12 and all(r.status == "sent" for r in rows), timeout=60
            )
        finally:
            restarted.stop()

        assert {row.message_id: row.raw for row in rows} == before  # nothing re-rendered, no new rows
        accepted = Counter(d.message_id for d in sink.accepted if d.message_id in before)
        assert accepted == Counter(list(before))  # each exactly once
        for message_id, raw in before.items():
            attempts = sink.attempts_of(message_id)
            assert {a.header_bytes for a in attempts} == {raw.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]}
        later = {row.message_id for row in _outbox_snapshot(database_url)} - set(before)
        assert set(d.message_id for d in sink.deliveries) == set(before) | later  # no attempt under another id
