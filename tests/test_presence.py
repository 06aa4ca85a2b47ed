"""The journal replay leaves a live instance's entries to it (issue 13: instances that add up).

Every instance replays pending journal entries older than ten seconds. In a long burst an
instance's own backlog is that old, and a second instance used to take it too: both prepared the
same entries, and each entry's attempts, counted twice, made it look like it had crashed a process,
so it went in a batch of its own. Now an instance holds `store.locks.Presence` (an advisory lock on
a connection of its own) while it runs, and the replay takes another instance's entries only once
that instance is gone, which PostgreSQL notices as soon as the process dies (here: kill -9 of a
real process).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from gateway.intake import Intake
from gateway.jobs import pending_journal_ids
from store import db
from store.locks import Presence
from tests.helpers import make_mail, throwaway_pg_database

HOLDER = """
import sys, time
from store.db import make_engine
from store.locks import Presence
presence = Presence(make_engine(sys.argv[1]), sys.argv[2])
presence.start()
print("present", flush=True)
time.sleep(3600)
"""


@pytest.fixture
def pg_url() -> Iterator[str]:
    with throwaway_pg_database("gw_presence") as url:
        yield url


def _journal(engine: Engine, instance_name: str, count: int) -> list[int]:
    intake = Intake(engine, instance_name=instance_name)

    async def accept_all() -> list[int]:
        return [(await intake.accept(make_mail().as_bytes(), source="smtp", meta={})).journal_id for _ in range(count)]

    return asyncio.run(accept_all())


def test_a_live_instances_entries_are_left_to_it_until_it_dies(pg_url: str):
    engine = db.make_engine(pg_url)
    db.upgrade(engine)
    try:
        alpha = _journal(engine, "alpha", 3)
        gamma = _journal(engine, "gamma", 2)
        mine = _journal(engine, "beta", 1)

        def replayed_by(name: str) -> list[int]:
            return pending_journal_ids(engine, older_than_seconds=0, instance_name=name)

        # alpha runs in this process; gamma in a process of its own, killed below.
        alpha_presence = Presence(engine, "alpha")
        alpha_presence.start()
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER, pg_url, "gamma"], stdout=subprocess.PIPE, text=True, env=os.environ.copy()
        )
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "present"
            assert replayed_by("beta") == mine  # nobody else's while they run
            assert replayed_by("alpha") == alpha + mine  # its own, and those of a name nobody holds

            holder.send_signal(signal.SIGKILL)
            holder.wait(10)
            deadline = time.monotonic() + 10
            while replayed_by("beta") != gamma + mine and time.monotonic() < deadline:
                time.sleep(0.05)
            assert replayed_by("beta") == gamma + mine  # gamma died: its entries are anyone's

            alpha_presence.close()  # alpha stopped
            assert replayed_by("beta") == alpha + gamma + mine
        finally:
            alpha_presence.close()
            if holder.poll() is None:
                holder.kill()
                holder.wait(10)
    finally:
        engine.dispose()


def test_presence_is_taken_again_after_the_database_dropped_it(pg_url: str):
    engine = db.make_engine(pg_url)
    db.upgrade(engine)
    try:
        entries = _journal(engine, "alpha", 1)
        presence = Presence(engine, "alpha")
        presence.start()
        assert pending_journal_ids(engine, older_than_seconds=0, instance_name="beta") == []
        with engine.connect() as admin:  # as a database restart would: every other session ends
            admin.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
        engine.dispose()  # the pool's other sessions were terminated too
        assert pending_journal_ids(engine, older_than_seconds=0, instance_name="beta") == entries
        presence.renew()
        assert pending_journal_ids(engine, older_than_seconds=0, instance_name="beta") == []
        presence.close()
    finally:
        engine.dispose()


def test_sqlite_has_no_presence_and_the_replay_takes_everything(tmp_path: Path):
    engine = db.make_engine(f"sqlite:///{tmp_path / 'journal.db'}")
    db.upgrade(engine)
    try:
        entries = _journal(engine, "alpha", 2)
        presence = Presence(engine, "alpha")
        presence.start()
        assert pending_journal_ids(engine, older_than_seconds=0, instance_name="beta") == entries
        presence.close()
    finally:
        engine.dispose()
