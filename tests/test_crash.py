"""Nothing acknowledged is lost: SIGKILL a real `gateway serve` while clients stream mail into it."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiosmtplib
from sqlalchemy import func
from sqlmodel import select

from store.db import journal_engine_for, make_engine, reading
from store.models import JournalEntry
from tests.helpers import REPO, make_mail
from tests.servers.serve import serve_env, start_serve, wait_healthy


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


def test_sigkill_while_streaming_loses_no_acknowledged_message(tmp_path: Path, database_url: str):
    env, smtp_port, http_port = serve_env(tmp_path, database_url, f"maildir:{tmp_path / 'sent'}")
    log = tmp_path / "gateway.log"
    process = start_serve(env, log)
    wait_healthy(http_port, process)

    acknowledged: list[str] = []

    async def stream_then_kill() -> None:
        stop = asyncio.Event()
        clients = [asyncio.create_task(_stream(smtp_port, n, acknowledged, stop)) for n in range(6)]
        while len(acknowledged) < 150:
            await asyncio.sleep(0.01)
        process.send_signal(signal.SIGKILL)  # mid-stream: some DATA are in flight right now
        await asyncio.wait_for(asyncio.gather(*clients), 30)

    asyncio.run(stream_then_kill())
    process.wait(10)
    assert len(acknowledged) >= 150
    # The pipeline trails the acknowledgements, so the kill leaves work only replay can finish.
    engine = journal_engine_for(make_engine(database_url), tmp_path / "data")
    with reading(engine) as session:
        pending = session.exec(select(func.count()).where(JournalEntry.status == "pending")).one()
    engine.dispose()
    print(f"acknowledged {len(acknowledged)}, pending at the kill {pending}")

    restarted = start_serve(env, log)
    try:
        wait_healthy(http_port, restarted)
        deadline = time.monotonic() + 120
        while True:
            export = subprocess.run(
                [sys.executable, "-m", "gateway", "export"], cwd=REPO, env=env, capture_output=True, text=True
            )
            stored = {
                message["message_id"]
                for line in export.stdout.splitlines()
                for message in json.loads(line)["messages"]
                if message["direction"] == "inbound"
            }
            missing = set(acknowledged) - stored
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert missing == set(), f"{len(missing)} acknowledged messages lost"
    finally:
        restarted.send_signal(signal.SIGTERM)
        restarted.wait(30)
