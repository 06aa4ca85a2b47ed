"""SIGKILL a real `gateway serve` while it ingests a mailbox, restart it: no mail lost, none doubled.

The poller journals a message, then flags it, then records its UID. A kill in between leaves a
journaled message the server still shows as new: the restarted poller fetches it again and the
pipeline's dedupe must make one message of the two journal rows. The mailbox is configured the way
an operator does it (GATEWAY_IMAP_MAILBOXES), and the database is made by `serve`'s migrations.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import select

from store.db import journal_engine_for, make_engine, reading
from store.models import JournalEntry
from tests.helpers import REPO
from tests.servers.dovecot import DovecotServer, make_dovecot_fixture
from tests.servers.serve import serve_env, start_serve, wait_until

dovecot = make_dovecot_fixture()

BEFORE_START = 120  # waiting in the INBOX when the gateway starts: it is busy ingesting when killed
KILL_AT = 15  # journal rows of the mailbox when the SIGKILL comes
WHILE_DOWN = 5  # delivered to the INBOX while the gateway is dead


def message(n: int) -> bytes:
    return (
        f"From: Klient {n} <klient{n}@klient.example>\r\n"
        "To: bok@example.test\r\n"
        f"Subject: Zlecenie {n}\r\n"
        f"Message-ID: <kill-{n}-{os.urandom(4).hex()}@klient.example>\r\n"
        "Date: Wed, 25 Nov 2026 10:00:00 +0000\r\n"
        "\r\n"
        f"Treść wiadomości {n}.\r\n"
    ).encode()


def imap_journal(engine: Engine) -> list[JournalEntry]:
    with reading(engine) as session:
        return list(session.exec(select(JournalEntry).where(JournalEntry.source == "imap")).all())


def journal_report(database_url: str, data_dir: Path) -> str:
    engine = journal_engine_for(make_engine(database_url), data_dir)
    try:
        entries = imap_journal(engine)
    finally:
        engine.dispose()
    statuses = Counter(str(entry.status) for entry in entries)
    odd = [(entry.id, entry.meta.get("uid"), entry.status, entry.reason) for entry in entries if entry.status != "done"]
    return f"journal: {dict(statuses)}, not done: {odd[:10]}"


def stored_inbound(env: dict[str, str]) -> Counter[str]:
    """Message-ID -> how many times it is stored, via `gateway export`."""
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


def test_sigkill_while_polling_loses_and_doubles_nothing(
    tmp_path: Path, database_url: str, dovecot: DovecotServer
) -> None:
    mailbox = {
        "name": "support",
        "host": "127.0.0.1",
        "port": dovecot.port,
        "security": "none",
        "user": "support",
        "password_env": "TEST_IMAP_PASSWORD",  # as an operator keeps secrets out of the config
        "folder": "INBOX",
        "after_fetch": "flag",
        "poll_seconds": 300,
    }
    env = serve_env(
        tmp_path,
        database_url,
        f"maildir:{tmp_path / 'sent'}",
        GATEWAY_IMAP_MAILBOXES=json.dumps([mailbox]),
        TEST_IMAP_PASSWORD=dovecot.users["support"],
    )
    data_dir = Path(env["GATEWAY_DATA_DIR"])
    raws = [message(n) for n in range(1, BEFORE_START + 1)]
    dovecot.append_many(raws)

    served = start_serve(env, tmp_path / "gateway-1.log")
    journal_engine = journal_engine_for(make_engine(database_url), data_dir)
    try:
        wait_until(lambda: len(imap_journal(journal_engine)) >= KILL_AT, 60, f"{KILL_AT} journal rows", interval=0.01)
        served.kill()
        at_kill = len(imap_journal(journal_engine))
    finally:
        journal_engine.dispose()
    assert at_kill < BEFORE_START, "the kill came after the poller had finished: it proves nothing"

    later = [message(n) for n in range(BEFORE_START + 1, BEFORE_START + WHILE_DOWN + 1)]
    dovecot.append_many(later)
    raws += later

    restarted = start_serve(env, tmp_path / "gateway-2.log")
    try:
        wait_until(
            lambda: all("\\Seen" in flags for flags in dovecot.messages().values()), 120, "every message flagged"
        )
        expected = {raw.split(b"Message-ID: <")[1].split(b">")[0].decode() for raw in raws}
        try:
            wait_until(lambda: set(stored_inbound(env)) >= expected, 120, "every message stored", interval=1.0)
        except AssertionError:
            missing = expected - set(stored_inbound(env))
            raise AssertionError(f"not stored: {sorted(missing)}; {journal_report(database_url, data_dir)}") from None
        stored = stored_inbound(env)
    finally:
        restarted.stop()
    assert set(stored) == expected  # nothing lost, nothing else
    assert all(count == 1 for count in stored.values()), stored.most_common(3)  # nothing doubled
    journal_engine = journal_engine_for(make_engine(database_url), data_dir)
    try:
        journal = imap_journal(journal_engine)
    finally:
        journal_engine.dispose()
    # Every journal row holds the bytes of one appended message, byte-exact.
    assert {entry.raw for entry in journal} == set(raws)
    refetched = [uid for uid, count in Counter(entry.meta["uid"] for entry in journal).items() if count > 1]
    print(f"\nkilled at {at_kill} journal rows; re-fetched after the restart: UIDs {refetched}")
