"""kill -9 of a real `gateway serve` in the middle of a batch, while its parse pool is busy (issue 13).

A backlog of acknowledged mail is being processed in batches, with the pool parsing the next batch,
when the process is killed. After a restart every acknowledged message is stored exactly once,
nothing is quarantined, the outbox holds exactly one acknowledgement per customer and one staff
notification per message, and the relay sink receives each of them. Only a row the dead instance
was handing to the relay at the kill (status "sending") may reach the sink twice, with the same
Message-ID: SMTP's own window between the relay's 250 and our record of it, not the pipeline's.
"""

from __future__ import annotations

import json
import smtplib
import subprocess
import sys
from collections import Counter
from pathlib import Path

from sqlmodel import select

from store.db import journal_engine_for, make_engine, reading
from store.models import JournalEntry, OutboxItem
from tests.helpers import REPO, SUPPORT, make_mail
from tests.servers.relay_sink import RelaySink
from tests.servers.serve import serve_env, start_serve, wait_until

MESSAGES = 120
PARTS = 40  # attachments per message: parsing is the heavy step, so the pool is busy at the kill
STAFF_QUEUE = "kolejka@example.test"


def _statuses(env: dict[str, str]) -> Counter[str]:
    engine = journal_engine_for(make_engine(env["GATEWAY_DATABASE_URL"]), Path(env["GATEWAY_DATA_DIR"]))
    try:
        with reading(engine) as session:
            return Counter(session.exec(select(JournalEntry.status)))  # not the raw bytes: this is polled
    finally:
        engine.dispose()


def _outbox(env: dict[str, str]) -> list[OutboxItem]:
    engine = make_engine(env["GATEWAY_DATABASE_URL"])
    try:
        with reading(engine) as session:
            return list(session.exec(select(OutboxItem)))
    finally:
        engine.dispose()


def _stored_inbound(env: dict[str, str]) -> Counter[str]:
    """Message-ID -> how many times stored as inbound mail, via `gateway export`."""
    export = subprocess.run(
        [sys.executable, "-m", "gateway", "export"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert export.returncode == 0, export.stderr
    return Counter(
        message["message_id"]
        for line in export.stdout.splitlines()
        for message in json.loads(line)["messages"]
        if message["direction"] == "inbound"
    )


def _children_of(pid: int) -> set[int]:
    """Every process descended from `pid` (the pool's forkserver and its workers)."""
    found: set[int] = set()
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            children = task / "children"
            if children.exists():
                for child in map(int, children.read_text().split()):
                    if child not in found:
                        found.add(child)
                        frontier.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_kill_9_in_the_middle_of_a_batch_loses_nothing_and_sends_nothing_twice(tmp_path: Path, database_url: str):
    senders = [f"klient{n}@klient.example" for n in range(MESSAGES)]
    mails = [
        make_mail(
            sender=sender,
            subject=f"Zgłoszenie {n}",
            attachments=[(f"log-{n}-{k}.txt", f"wpis {n}/{k}\n".encode() * 20) for k in range(PARTS)],
        )
        for n, sender in enumerate(senders)
    ]
    with RelaySink() as sink:
        env = serve_env(
            tmp_path,
            database_url,
            sink.url,
            GATEWAY_PIPELINE_PARSE_WORKERS="1",
            GATEWAY_PIPELINE_BATCH_MAX_ENTRIES="10",
            GATEWAY_STAFF_QUEUE_ADDRESS=STAFF_QUEUE,
            GATEWAY_SENDER_VERIFICATION="off",
            GATEWAY_AUTO_REPLIES_PER_HOUR=str(10 * MESSAGES),
            # The rows the killed instance held are retried once its lease (a few timeouts) runs out.
            GATEWAY_RELAY_TIMEOUT_SECONDS="2",
        )
        log = tmp_path / "gateway.log"
        served = start_serve(env, log)
        try:
            with smtplib.SMTP("127.0.0.1", served.smtp_port, timeout=60) as client:
                for sender, mail in zip(senders, mails, strict=True):
                    client.sendmail(sender, [SUPPORT], mail.as_bytes())  # returns once acknowledged (250)
            # Some batches are done and the pool is parsing the ones to come: kill -9 now.
            wait_until(lambda: _statuses(env)["done"] >= 15, 120, "the first batches to be processed")
            pool = _children_of(served.process.pid)
            assert pool, "no parse pool child: the test would not exercise it"
            served.kill()
        finally:
            served.stop()
        at_kill = _statuses(env)
        in_relay_at_kill = {item.message_id for item in _outbox(env) if item.status == "sending"}
        assert at_kill["pending"] > 0, "everything was processed before the kill: the test proves nothing"
        # The pool does not outlive its gateway (no orphan holds memory or the journal's files).
        wait_until(lambda: not any(_alive(pid) for pid in pool), 30, "the pool's children to exit with serve")

        restarted = start_serve(env, log)
        try:
            wait_until(lambda: set(_statuses(env)) == {"done"}, 180, "the replay of the journal", interval=0.5)
            stored = _stored_inbound(env)
            wait_until(
                lambda: {item.status for item in _outbox(env)} == {"sent"}, 120, "every reply to reach the relay"
            )
            outbox = _outbox(env)
        finally:
            restarted.stop()

    assert _statuses(env) == {"done": MESSAGES}  # nothing quarantined, nothing pending
    assert sorted(stored) == sorted(str(mail["Message-ID"]).strip("<>") for mail in mails)
    assert set(stored.values()) == {1}, "a message was stored twice"
    # Exactly once in the outbox: one acknowledgement per customer, one notification per message.
    assert Counter(item.recipient for item in outbox if item.recipient != STAFF_QUEUE) == dict.fromkeys(senders, 1)
    assert sum(item.recipient == STAFF_QUEUE for item in outbox) == MESSAGES
    accepted = Counter(delivery.message_id for delivery in sink.accepted)
    assert set(accepted) == {item.message_id for item in outbox}
    sent_twice = {message_id for message_id, count in accepted.items() if count > 1}
    assert sent_twice <= in_relay_at_kill
