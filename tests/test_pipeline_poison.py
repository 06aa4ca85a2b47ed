"""A message whose processing never finishes is quarantined after `poison_max_attempts`, not replayed forever.

Each attempt is committed to the journal before the work starts, so it is visible from outside
while the message is being processed. The test kills a real `gateway serve` (SIGKILL) exactly then,
restarts it, and repeats: after the configured number of unfinished attempts the entry is
quarantined with that reason, and the mail behind it is processed. The message is slow for an
honest reason: three attachments just under the 15 MiB limit (decoding, hashing, storing and
forwarding them to staff takes seconds, far longer than one poll of the journal).
"""

from __future__ import annotations

import json
import os
import smtplib
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

from sqlmodel import col, select

from store.db import journal_engine_for, make_engine, reading
from store.models import JournalEntry
from tests.helpers import REPO, SUPPORT, make_mail
from tests.servers.serve import Served, serve_env, start_serve, wait_until

MAX_ATTEMPTS = 3
ATTACHMENT_BYTES = 14 * 1024 * 1024  # within the per-attachment limit: a legitimate, merely heavy message


class _Entry(NamedTuple):
    id: int
    status: str
    attempts: int


def _entries(env: dict[str, str]) -> list[_Entry]:
    """The journal's entries without their raw bytes: loading the heavy one's 57 MB took a poll over a
    second on PostgreSQL, long enough for the attempt it waited for to finish unseen."""
    engine = journal_engine_for(make_engine(env["GATEWAY_DATABASE_URL"]), Path(env["GATEWAY_DATA_DIR"]))
    try:
        with reading(engine) as session:
            rows = session.exec(
                select(col(JournalEntry.id), JournalEntry.status, JournalEntry.attempts).order_by(col(JournalEntry.id))
            )
            return [_Entry(entry_id or 0, status, attempts) for entry_id, status, attempts in rows]
    finally:
        engine.dispose()


def _attempts(env: dict[str, str], journal_id: int) -> int:
    return next(entry.attempts for entry in _entries(env) if entry.id == journal_id)


def _deliver(served: Served, message: bytes, sender: str) -> None:
    with smtplib.SMTP("127.0.0.1", served.smtp_port, timeout=120) as client:
        client.sendmail(sender, [SUPPORT], message)  # returns once the gateway answered 250


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode in (0, 1), done.stderr
    return done.stdout


def test_a_message_that_kills_the_process_every_time_ends_in_quarantine(tmp_path: Path, database_url: str):
    env = serve_env(
        tmp_path,
        database_url,
        f"maildir:{tmp_path / 'sent'}",
        GATEWAY_POISON_MAX_ATTEMPTS=str(MAX_ATTEMPTS),
        GATEWAY_STAFF_QUEUE_ADDRESS="staff-queue@example.test",
    )
    log = tmp_path / "gateway.log"
    heavy = make_mail(
        sender="ciezki@klient.example",
        subject="Trzy duże załączniki",
        attachments=[(f"dump-{n}.bin", os.urandom(ATTACHMENT_BYTES)) for n in range(3)],
    ).as_bytes()
    later = make_mail(sender="pozniej@klient.example", subject="Wiadomość po ciężkiej").as_bytes()

    served = start_serve(env, log)
    try:
        _deliver(served, heavy, "ciezki@klient.example")
        _deliver(served, later, "pozniej@klient.example")
        heavy_id, later_id = (entry.id for entry in _entries(env))
        for attempt in range(1, MAX_ATTEMPTS + 1):
            if attempt > 1:
                served = start_serve(env, log)  # start-up replays what is pending, oldest first
            wait_until(lambda n=attempt: _attempts(env, heavy_id) >= n, 60, f"attempt {attempt} on record")
            # The attempt is on record and processing is under way: the process dies in the middle.
            served.kill()
            statuses = {entry.id: entry.status for entry in _entries(env)}
            assert statuses[heavy_id] == "pending", "processing finished before the kill: the test proves nothing"
            assert _attempts(env, heavy_id) == attempt
            assert statuses[later_id] == "pending"  # it waits behind the heavy one

        served = start_serve(env, log)
        wait_until(
            lambda: {e.id: e.status for e in _entries(env)}[later_id] == "done", 60, "the later mail to be processed"
        )
        quarantined = json.loads(_cli(env, "quarantine", "list", "--json"))
        assert [(q["id"], q["reason"]) for q in quarantined] == [
            (heavy_id, f"processing did not finish in {MAX_ATTEMPTS} attempts; the process may have died")
        ]
        requesters = {case["requester"] for case in json.loads(_cli(env, "cases", "list", "--json"))}
        assert requesters == {"pozniej@klient.example"}
        assert served.healthz().status_code == 200  # still serving

        # After a fix, `quarantine retry` starts the count afresh (nothing kills the process now).
        _cli(env, "quarantine", "retry", str(heavy_id))
        assert {e.id: (e.status, e.attempts) for e in _entries(env)}[heavy_id] == ("done", 1)
        requesters = {case["requester"] for case in json.loads(_cli(env, "cases", "list", "--json"))}
        assert requesters == {"pozniej@klient.example", "ciezki@klient.example"}
    finally:
        served.stop()
