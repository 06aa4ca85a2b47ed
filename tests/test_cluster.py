"""Two real `gateway serve` processes on one PostgreSQL database (SPEC §10).

1 000 messages (new cases and follow-ups, interleaved across both instances) are stored once, in
order, with unique case numbers and every outgoing message sent exactly once; then one instance
is killed while its mail waits for a retry and while it polls the IMAP mailbox: the survivor
delivers the mail and takes the mailbox over.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiosmtplib
import httpx
import pytest
from sqlalchemy import func
from sqlmodel import col, select

from store.db import make_engine, reading
from store.models import Case, JournalEntry, Message, OutboxItem
from tests.helpers import make_mail, throwaway_pg_database
from tests.servers.dovecot import make_dovecot_fixture
from tests.servers.relay_sink import RelaySink
from tests.servers.serve import serve_env, start_serve, wait_until

dovecot = make_dovecot_fixture()

CONVERSATIONS = 200
PER_CONVERSATION = 5  # one new case and four follow-ups


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh database on the test PostgreSQL server. No server is an error, never a skip: make test
    installs and starts PostgreSQL, and a cluster test that cannot run must not read as passed."""
    with throwaway_pg_database("gw_cluster") as url:
        yield url


def _instance_env(tmp_path: Path, pg_url: str, relay_url: str, name: str, mailbox: str | None) -> dict[str, str]:
    extra = {"GATEWAY_IMAP_MAILBOXES": mailbox} if mailbox else {}
    return serve_env(
        tmp_path / name,
        pg_url,
        relay_url,
        GATEWAY_BLOB_STORE="database",
        GATEWAY_RELAY_TIMEOUT_SECONDS="2",
        GATEWAY_OUTBOX_BACKOFF_SECONDS="0.5",
        GATEWAY_OUTBOX_BACKOFF_MAX_SECONDS="1",
        GATEWAY_JOURNAL_REPLAY_SECONDS="1",
        GATEWAY_STAFF_QUEUE_ADDRESS="staff-queue@example.test",
        GATEWAY_PANEL_SECRET="cluster-secret",
        GATEWAY_SIGNING_SECRET="cluster-signing",
        GATEWAY_INSTANCE_NAME=name,
        **extra,
    )


async def _send(port: int, message) -> None:  # type: ignore[no-untyped-def]
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=60) as client:
        await client.send_message(message)


async def _stream(ports: list[int]) -> dict[int, list[str]]:
    """Every conversation's Message-IDs in the order they were acknowledged."""
    sent: dict[int, list[str]] = {n: [] for n in range(CONVERSATIONS)}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for number in range(CONVERSATIONS):
        queue.put_nowait(number)

    async def worker() -> None:
        while not queue.empty():
            number = queue.get_nowait()
            customer = f"klient{number}@klient.example"
            first_id = None
            for step in range(PER_CONVERSATION):
                message = make_mail(
                    sender=customer, subject=f"rozmowa {number}", body=f"krok {step}", in_reply_to=first_id
                )
                await _send(ports[(number + step) % 2], message)  # alternate the instances
                first_id = first_id or str(message["Message-ID"])
                sent[number].append(str(message["Message-ID"]).strip("<>"))

    await asyncio.gather(*(worker() for _ in range(16)))
    return sent


def _settled(engine) -> bool:  # type: ignore[no-untyped-def]
    with reading(engine) as session:
        pending = session.exec(select(func.count()).where(JournalEntry.status == "pending")).one()
        unsent = session.exec(select(func.count()).where(col(OutboxItem.status).in_(("queued", "sending")))).one()
    return pending == 0 and unsent == 0


def _wait(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    wait_until(condition, timeout, what, interval=0.2)


def _mailbox_state(http_port: int) -> str:
    return httpx.get(f"http://127.0.0.1:{http_port}/healthz", timeout=5).json()["imap"]["support"]["state"]


def test_two_instances_share_the_work_and_survive_losing_one(tmp_path: Path, pg_url: str, dovecot):
    mailbox = json.dumps([dovecot.mailbox_settings(poll_seconds=2.0).model_dump(mode="json")])
    with RelaySink() as sink:
        env_a = _instance_env(tmp_path, pg_url, sink.url, "gw-a", mailbox)
        env_b = _instance_env(tmp_path, pg_url, sink.url, "gw-b", mailbox)
        instance_a = start_serve(env_a, tmp_path / "a.log")  # the first one migrates the schema
        smtp_a, http_a = instance_a.smtp_port, instance_a.http_port
        _wait(lambda: _mailbox_state(http_a) == "idle", 30, "gw-a to poll the mailbox")
        instance_b = start_serve(env_b, tmp_path / "b.log")
        smtp_b, http_b = instance_b.smtp_port, instance_b.http_port
        _wait(lambda: _mailbox_state(http_b) == "standby", 30, "gw-b to stand by for the mailbox")
        engine = make_engine(pg_url)
        try:
            sent = asyncio.run(_stream([smtp_a, smtp_b]))
            _wait(lambda: _settled(engine), 180, "both instances to process and send everything")
            _assert_stored_once_in_order(engine, sent)
            _assert_sent_exactly_once(engine, sink)

            # Losing an instance: its mail waits for a retry when it dies; the survivor sends it.
            sink.fail("451 4.3.0 relay busy, try later")
            late = [make_mail(sender=f"pozny{n}@klient.example", subject=f"późna {n}") for n in range(10)]

            async def send_late() -> None:
                for n, message in enumerate(late):
                    await _send(smtp_a if n % 2 else smtp_b, message)

            asyncio.run(send_late())
            _wait(lambda: _retrying_rows(engine) >= 10, 60, "late mail to wait for a retry")
            instance_a.kill()
            sink.accept_all()
            imap_mail = make_mail(sender="imap@klient.example", subject="przez skrzynkę")
            dovecot.append(imap_mail.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
            _wait(lambda: _mailbox_state(http_b) in ("idle", "waiting"), 60, "gw-b to take the mailbox over")
            late.append(imap_mail)
            _wait(lambda: _stored(engine, imap_mail), 60, "the mailbox's new mail to be stored")
            _wait(lambda: _settled(engine), 120, "the survivor to send what gw-a had")
            _assert_sent_exactly_once(engine, sink)
            with reading(engine) as session:
                late_ids = {str(m["Message-ID"]).strip("<>") for m in late}
                stored = set(session.exec(select(Message.message_id).where(col(Message.message_id).in_(late_ids))))
            assert stored == late_ids
        finally:
            instance_a.stop()
            instance_b.stop()
            engine.dispose()


def _stored(engine, message) -> bool:  # type: ignore[no-untyped-def]
    with reading(engine) as session:
        message_id = str(message["Message-ID"]).strip("<>")
        return session.exec(select(Message.id).where(Message.message_id == message_id)).first() is not None


def _retrying_rows(engine) -> int:  # type: ignore[no-untyped-def]
    """Outbox rows that failed temporarily and wait for their next attempt."""
    with reading(engine) as session:
        return session.exec(
            select(func.count()).where(
                OutboxItem.status == "queued", OutboxItem.attempts > 0, OutboxItem.last_error.is_not(None)
            )
        ).one()


def _assert_stored_once_in_order(engine, sent: dict[int, list[str]]) -> None:  # type: ignore[no-untyped-def]
    with reading(engine) as session:
        cases = session.exec(select(Case)).all()
        numbers = [case.number for case in cases]
        assert len(numbers) == len(set(numbers)) == CONVERSATIONS
        inbound = session.exec(
            select(Message.case_id, Message.message_id)
            .where(Message.direction == "inbound")
            .order_by(col(Message.received_at), col(Message.id))
        ).all()
    assert len(inbound) == CONVERSATIONS * PER_CONVERSATION
    assert len({message_id for _, message_id in inbound}) == len(inbound)
    by_case: dict[int, list[str]] = {}
    for case_id, message_id in inbound:
        by_case.setdefault(case_id, []).append(message_id)
    assert sorted(by_case.values()) == sorted(sent.values())  # each conversation one case, in order


def _assert_sent_exactly_once(engine, sink: RelaySink) -> None:  # type: ignore[no-untyped-def]
    accepted = Counter(delivery.message_id for delivery in sink.accepted)
    twice = {message_id: count for message_id, count in accepted.items() if count > 1}
    assert twice == {}
    with reading(engine) as session:
        outgoing = set(session.exec(select(OutboxItem.message_id).where(OutboxItem.status == "sent")))
    assert set(accepted) == outgoing


# --- an instance dies for good: the survivor finishes what it had acknowledged ------------------


def _journal_states(engine) -> dict[str, tuple[str, str]]:  # type: ignore[no-untyped-def]
    """raw_sha256 -> (status, instance that acknowledged it) of every journal entry."""
    with reading(engine) as session:
        return {e.raw_sha256: (e.status, e.received_by) for e in session.exec(select(JournalEntry))}


def test_a_survivor_processes_what_a_killed_instance_acknowledged(tmp_path: Path, pg_url: str):
    relay = f"maildir:{tmp_path / 'sent'}"
    # gw-a lets its pipeline trail far behind while mail arrives (a setting), so the kill right after
    # its acknowledgements leaves journal entries that only the survivor can process.
    env_a = {**_instance_env(tmp_path, pg_url, relay, "gw-a", None), "GATEWAY_PIPELINE_MAX_LAG_SECONDS": "60"}
    env_b = _instance_env(tmp_path, pg_url, relay, "gw-b", None)
    instance_a = start_serve(env_a, tmp_path / "a.log")
    instance_b = start_serve(env_b, tmp_path / "b.log")
    engine = make_engine(pg_url)
    acknowledged: list[str] = []
    try:

        async def stream_into_a_then_kill_it() -> None:
            async def client(number: int) -> None:
                for step in range(100):
                    message = make_mail(sender=f"klient{number}@klient.example", subject=f"do gw-a {number}/{step}")
                    await _send(instance_a.smtp_port, message)
                    acknowledged.append(str(message["Message-ID"]).strip("<>"))
                    if len(acknowledged) >= 40:
                        return

            await asyncio.wait_for(asyncio.gather(*(client(n) for n in range(4))), 120)
            instance_a.kill()  # right after the last 250: no shutdown code runs

        asyncio.run(stream_into_a_then_kill_it())
        at_kill = _journal_states(engine)
        left_by_a = {digest for digest, (status, by) in at_kill.items() if status == "pending" and by == "gw-a"}
        assert left_by_a, "gw-a had processed everything before the kill: the survivor would have nothing to do"

        _wait(
            lambda: not any(status == "pending" for status, _ in _journal_states(engine).values()),
            120,
            "gw-b to process the journal entries gw-a acknowledged",
        )
        after = _journal_states(engine)
        assert {after[digest][0] for digest in left_by_a} <= {"done", "duplicate"}
        with reading(engine) as session:
            stored = Counter(
                session.exec(
                    select(Message.message_id).where(
                        Message.direction == "inbound", col(Message.message_id).in_(acknowledged)
                    )
                )
            )
        assert set(stored) == set(acknowledged), "acknowledged by gw-a, never stored"
        assert max(stored.values()) == 1, "stored twice"
        assert instance_b.healthz().status_code == 200
    finally:
        instance_a.stop()
        instance_b.stop()
        engine.dispose()
