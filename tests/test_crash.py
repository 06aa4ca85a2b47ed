"""Nothing acknowledged is lost: SIGKILL a real `gateway serve` while clients stream mail into it.

The kill leaves journal entries that were acknowledged but not processed yet; after the restart
every one of them must be processed, every acknowledged message stored, and none stored twice.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import aiosmtplib
from sqlmodel import select

from store.db import journal_engine_for, make_engine, reading
from store.models import JournalEntry
from tests.helpers import REPO, make_mail
from tests.servers.serve import serve_env, start_serve, wait_until

TARGET = 150  # acknowledged messages before the kill
STREAM_DEADLINE = 120.0  # seconds the clients get to reach TARGET; a wedged gateway fails the test


async def _stream(port: int, client_number: int, acknowledged: list[str], stop: asyncio.Event) -> None:
    """Send mail until told to stop or the server dies; remember every Message-ID that got 250."""
    sequence = 0
    try:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10) as client:
            while not stop.is_set():
                sequence += 1
                message = make_mail(
                    sender=f"klient{client_number}@klient.example",
                    subject=f"wiadomość {client_number}/{sequence}",
                    body="treść " * 200,
                )
                await client.send_message(message)
                acknowledged.append(str(message["Message-ID"]).strip("<>"))
    except (TimeoutError, aiosmtplib.SMTPException, OSError):
        pass  # the server was killed under us: what was not acknowledged is the sender's to retry


def _journal(database_url: str, data_dir: Path) -> dict[str, str]:
    """raw_sha256 -> status of every journal entry."""
    engine = journal_engine_for(make_engine(database_url), data_dir)
    try:
        with reading(engine) as session:
            return {entry.raw_sha256: entry.status for entry in session.exec(select(JournalEntry))}
    finally:
        engine.dispose()


def _stored_inbound(env: dict[str, str]) -> tuple[Counter[str], set[str]]:
    """(Message-ID -> how many times stored, raw_sha256 of every stored inbound message) via `gateway export`."""
    export = subprocess.run(
        [sys.executable, "-m", "gateway", "export"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert export.returncode == 0, export.stderr
    messages = [
        message
        for line in export.stdout.splitlines()
        for message in json.loads(line)["messages"]
        if message["direction"] == "inbound"
    ]
    return Counter(m["message_id"] for m in messages), {m["raw_sha256"] for m in messages}


def test_sigkill_while_streaming_loses_no_acknowledged_message(tmp_path: Path, database_url: str):
    # Processing may trail the acknowledgements by up to a minute while mail streams in (a setting),
    # so the kill surely leaves acknowledged entries that only the replay after the restart can finish.
    env = serve_env(tmp_path, database_url, f"maildir:{tmp_path / 'sent'}", GATEWAY_PIPELINE_MAX_LAG_SECONDS="60")
    log = tmp_path / "gateway.log"
    served = start_serve(env, log)
    acknowledged: list[str] = []

    async def stream_then_kill() -> None:
        stop = asyncio.Event()
        clients = [asyncio.create_task(_stream(served.smtp_port, n, acknowledged, stop)) for n in range(6)]
        deadline = time.monotonic() + STREAM_DEADLINE
        try:
            while len(acknowledged) < TARGET:
                assert time.monotonic() < deadline, f"only {len(acknowledged)} acknowledged in {STREAM_DEADLINE}s"
                assert not all(c.done() for c in clients), "every client stopped before the kill"
                await asyncio.sleep(0.01)
            served.process.kill()  # SIGKILL mid-stream: some DATA are in flight right now
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*clients), 30)

    try:
        asyncio.run(stream_then_kill())
        served.process.wait(30)
    finally:
        served.stop()
    assert len(acknowledged) >= TARGET

    # The pipeline trails the acknowledgements, so the kill leaves work only replay can finish.
    at_kill = _journal(database_url, tmp_path / "data")
    pending_at_kill = {digest for digest, status in at_kill.items() if status == "pending"}
    assert pending_at_kill, "nothing was pending at the kill: the test would not exercise the replay"

    restarted = start_serve(env, log)
    try:
        wait_until(
            lambda: not any(s == "pending" for s in _journal(database_url, tmp_path / "data").values()),
            120,
            "the restarted gateway to replay the journal",
            interval=0.5,
        )
        after = _journal(database_url, tmp_path / "data")
        stored_ids, stored_raw = _stored_inbound(env)
    finally:
        restarted.stop()

    assert {after[digest] for digest in pending_at_kill} <= {"done", "duplicate"}
    assert pending_at_kill <= stored_raw, "entries pending at the kill were not stored after the restart"
    lost = set(acknowledged) - set(stored_ids)
    assert lost == set(), f"{len(lost)} acknowledged messages lost"
    twice = {message_id: count for message_id, count in stored_ids.items() if count > 1}
    assert twice == {}
