"""The IMAP poller against a real Dovecot: IDLE and polling, after-fetch actions, restarts, UIDVALIDITY,
bad messages, large mail, TLS. Assertions are on journal rows (byte-exact) and on the server's state.

The database is made by the migrations (`store.db.upgrade`), as `gateway serve` makes it. "Nothing
more happened" is shown by poll rounds or errors that did happen meanwhile (`polls_pass`,
`errors_pass`), never by a fixed sleep. Latencies are printed; their bounds belong in `make bench`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from gateway.imap import MailboxPoller
from gateway.intake import Intake
from gateway.metrics import REGISTRY
from store import imap_state
from store.db import make_engine, transaction
from store.models import ImapState, JournalEntry
from tests.servers.dovecot import DovecotServer, make_dovecot_fixture

dovecot = make_dovecot_fixture()
dovecot_tls = make_dovecot_fixture(name="dovecot_tls", tls=True)
# A server without IDLE, MOVE and UIDPLUS: the poller must poll, and move by COPY + expunge.
dovecot_minimal = make_dovecot_fixture(name="dovecot_minimal", extra_config="imap_capability = IMAP4rev1 LITERAL+\n")

MIB = 1024 * 1024
# Long enough that only IDLE (not the safety-net re-sync) can explain a delivery within seconds.
LONG_POLL = 120.0


def message(n: int, *, subject: str | None = None) -> bytes:
    subject = subject or f"Test {n}"
    return (
        f"From: Klient {n} <klient{n}@example.test>\r\n"
        "To: bok@example.test\r\n"
        f"Subject: {subject}\r\n"
        f"Message-ID: <test-{n}-{os.urandom(4).hex()}@example.test>\r\n"
        "Date: Wed, 25 Nov 2026 10:00:00 +0000\r\n"
        "\r\n"
        f"Body of message {n}.\r\n"
    ).encode()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """SQLite, or PostgreSQL on the PostgreSQL pass (the lease is then a real advisory lock)."""
    engine = make_engine(database_url)  # migrated as `gateway serve` leaves it, journal included
    yield engine
    engine.dispose()


@pytest.fixture
def intake(engine: Engine) -> Intake:
    return Intake(engine, instance_name="test")


def journal(engine: Engine) -> list[JournalEntry]:
    with Session(engine) as session:
        return list(session.exec(select(JournalEntry).order_by(JournalEntry.id)).all())


def state(engine: Engine, mailbox: str = "support") -> ImapState | None:
    with transaction(engine) as session:
        return imap_state.get_state(session=session, mailbox=mailbox)


async def journal_async(engine: Engine) -> list[JournalEntry]:
    return await asyncio.to_thread(journal, engine)


async def wait_until(check: Callable[[], object], *, timeout: float = 15.0, what: str = "") -> float:
    """Poll `check` (run in a thread: it may touch the database) until truthy; return the seconds."""
    start = time.monotonic()
    while not await asyncio.to_thread(check):
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what or check}")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def polls_pass(poller: MailboxPoller, rounds: int = 2) -> None:
    """Wait until the poller has completed `rounds` more syncs of the folder."""
    for _ in range(rounds):
        before = poller.state.last_poll_at
        await wait_until(lambda: poller.state.last_poll_at != before, what="another poll round")  # noqa: B023


def imap_polls(mailbox: str = "support") -> float:
    return REGISTRY.get_sample_value("gateway_imap_polls_total", {"mailbox": mailbox}) or 0.0


def imap_errors(mailbox: str = "support") -> float:
    return REGISTRY.get_sample_value("gateway_imap_errors_total", {"mailbox": mailbox}) or 0.0


async def errors_pass(count: int = 2, mailbox: str = "support") -> None:
    """Wait until the poller has recorded `count` more errors (failed reconnects, failed actions)."""
    target = imap_errors(mailbox) + count
    await wait_until(lambda: imap_errors(mailbox) >= target, what=f"{count} more IMAP errors")


async def wait_rows(engine: Engine, count: int, *, timeout: float = 15.0) -> list[JournalEntry]:
    await wait_until(lambda: len(journal(engine)) >= count, timeout=timeout, what=f"{count} journal rows")
    return await journal_async(engine)


@contextlib.asynccontextmanager
async def running(poller: MailboxPoller) -> AsyncIterator[asyncio.Task[None]]:
    """Run the poller for the block; it must still be running at the end (it never crashes)."""
    task = asyncio.create_task(poller.run())
    try:
        yield task
        assert not task.done(), "the poller ended on its own"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert poller.status["state"] == "stopped"


def make_poller(dovecot: DovecotServer, engine: Engine, intake: Intake, **settings: object) -> MailboxPoller:
    return MailboxPoller(dovecot.mailbox_settings(**settings), engine=engine, intake=intake, reconnect_max_seconds=2)


async def append(dovecot: DovecotServer, raw: bytes, **kwargs: object) -> int:
    return await asyncio.to_thread(dovecot.append, raw, **kwargs)  # type: ignore[arg-type]


async def timed_delivery(dovecot: DovecotServer, engine: Engine, raw: bytes, rows: int) -> float:
    """Seconds from the APPEND's completion (the message exists on the server) to its journal row."""
    await append(dovecot, raw)
    appended = time.monotonic()
    found = await wait_rows(engine, rows, timeout=10)
    seconds = time.monotonic() - appended
    assert found[-1].raw == raw
    return seconds


def report(label: str, latencies: list[float]) -> None:
    print(f"\n{label} APPEND -> journal row: " + ", ".join(f"{s * 1000:.0f} ms" for s in latencies))


# --- delivery: polling and IDLE --------------------------------------------------------------------


async def test_polling_journals_existing_and_new_mail(dovecot: DovecotServer, engine: Engine, intake: Intake) -> None:
    before = [message(1), message(2)]
    for raw in before:
        await append(dovecot, raw)
    polls_before = imap_polls()
    poller = make_poller(dovecot, engine, intake, idle=False, poll_seconds=0.5)
    async with running(poller):
        rows = await wait_rows(engine, 2)
        assert [row.raw for row in rows] == before
        latencies = [await timed_delivery(dovecot, engine, message(n), n) for n in (3, 4, 5)]
        report("polling every 0.5 s:", latencies)
        rows = await journal_async(engine)
        # The UID is recorded after the journal row and the flag, a moment later.
        await wait_until(lambda: poller.status["last_uid"] == 5, what="last_uid 5")
    assert all(row.source == "imap" for row in rows)
    assert rows[0].meta == {"mailbox": "support", "uid": 1, "uidvalidity": dovecot.uidvalidity()}
    assert poller.status["last_uid"] == 5
    assert imap_polls() >= polls_before + 4  # one sync per delivery at least, counted per mailbox
    saved = state(engine)
    assert saved is not None and saved.last_uid == 5 and saved.uidvalidity == dovecot.uidvalidity()


async def test_idle_delivers_within_seconds(dovecot: DovecotServer, engine: Engine, intake: Intake) -> None:
    poller = make_poller(dovecot, engine, intake, poll_seconds=LONG_POLL)
    async with running(poller):
        await wait_until(lambda: poller.status["state"] == "idle", what="IDLE")
        latencies = []
        for n in range(1, 6):
            latencies.append(await timed_delivery(dovecot, engine, message(n), n))
            await wait_until(lambda: poller.status["state"] == "idle", what="back in IDLE")
        # Each delivery waited at most 10 s (timed_delivery's deadline) with a 120 s poll: IDLE did it.
        report(f"IDLE (safety-net poll every {LONG_POLL:.0f} s):", latencies)
        status = poller.status
        assert status["last_poll_at"] is not None
        assert {key: value for key, value in status.items() if key != "last_poll_at"} == {
            "state": "idle",
            "connected": True,
            "last_error": None,
            "last_uid": 5,
            "uidvalidity": dovecot.uidvalidity(),
        }
        state = poller.state
        assert (state.name, state.phase, state.connected, state.last_error) == ("support", "idle", True, None)


async def test_uid_tracking_not_seen_decides_what_is_new(
    dovecot: DovecotServer, engine: Engine, intake: Intake
) -> None:
    # Mail already \Seen by a human before the gateway ever ran is still new to the gateway...
    first, second = message(1), message(2)
    await append(dovecot, first, flags="(\\Seen)")
    await append(dovecot, second)
    poller = make_poller(dovecot, engine, intake, idle=False, poll_seconds=0.3)
    async with running(poller):
        await wait_rows(engine, 2)
        await wait_until(lambda: poller.status["last_uid"] == 2, what="last_uid 2")
    # ...and a UID at or below the recorded one is never fetched again, \Seen or not: a human
    # marks both unread again while the gateway is down.
    await asyncio.to_thread(dovecot.remove_flag, [1, 2], "\\Seen")
    assert all("\\Seen" not in flags for flags in dovecot.messages().values())
    third = message(3)
    await append(dovecot, third)
    restarted = make_poller(dovecot, engine, intake, idle=False, poll_seconds=0.3)
    async with running(restarted):
        await wait_rows(engine, 3)
        await polls_pass(restarted, 3)  # a few more poll rounds: nothing else may arrive
    rows = await journal_async(engine)
    assert [row.raw for row in rows] == [first, second, third]
    assert [row.meta["uid"] for row in rows] == [1, 2, 3]


# --- after-fetch actions ---------------------------------------------------------------------------


async def test_flag_sets_seen_and_leaves_the_message(dovecot: DovecotServer, engine: Engine, intake: Intake) -> None:
    uids = [await append(dovecot, message(n)) for n in (1, 2)]
    async with running(make_poller(dovecot, engine, intake, after_fetch="flag", poll_seconds=LONG_POLL)):
        await wait_rows(engine, 2)
        await wait_until(lambda: all("\\Seen" in f for f in dovecot.messages().values()), what="\\Seen")
    assert set(dovecot.messages()) == set(uids)
    assert all("\\Deleted" not in flags for flags in dovecot.messages().values())


async def test_delete_expunges(dovecot: DovecotServer, engine: Engine, intake: Intake) -> None:
    raws = [message(n) for n in (1, 2, 3)]
    for raw in raws:
        await append(dovecot, raw)
    async with running(make_poller(dovecot, engine, intake, after_fetch="delete", poll_seconds=LONG_POLL)):
        rows = await wait_rows(engine, 3)
        await wait_until(lambda: dovecot.messages() == {}, what="an empty INBOX")
        later = message(4)
        await append(dovecot, later)
        rows = await wait_rows(engine, 4)
        await wait_until(lambda: dovecot.messages() == {}, what="an empty INBOX again")
    assert [row.raw for row in rows] == [*raws, later]


async def test_move_to_folder(dovecot: DovecotServer, engine: Engine, intake: Intake) -> None:
    dovecot.create_folder("Processed Mail")  # a space: the name must be quoted on the wire
    raws = [message(n) for n in (1, 2)]
    for raw in raws:
        await append(dovecot, raw)
    poller = make_poller(dovecot, engine, intake, after_fetch="move:Processed Mail", poll_seconds=LONG_POLL)
    async with running(poller):
        await wait_rows(engine, 2)
        await wait_until(lambda: len(dovecot.messages(folder="Processed Mail")) == 2, what="moved mail")
    assert dovecot.messages() == {}
    moved = dovecot.messages(folder="Processed Mail")
    assert sorted(dovecot.fetch(uid, folder="Processed Mail") for uid in moved) == sorted(raws)
    # The move is the only thing done to the message: fetching with PEEK did not mark it read.
    assert all("\\Seen" not in flags for flags in moved.values())


async def test_server_without_idle_move_uidplus(dovecot_minimal: DovecotServer, engine: Engine, intake: Intake) -> None:
    dovecot_minimal.create_folder("Done")
    raws = [message(1), message(2)]
    for raw in raws:
        await append(dovecot_minimal, raw)
    poller = make_poller(dovecot_minimal, engine, intake, after_fetch="move:Done", poll_seconds=0.3)
    async with running(poller):
        await wait_rows(engine, 2)
        await wait_until(lambda: poller.status["state"] == "waiting", what="polling, not IDLE")
        await wait_until(lambda: len(dovecot_minimal.messages(folder="Done")) == 2, what="moved mail")
        latency = await timed_delivery(dovecot_minimal, engine, message(3), 3)
        report("polling every 0.3 s, no IDLE offered:", [latency])
        await wait_until(lambda: len(dovecot_minimal.messages(folder="Done")) == 3, what="moved mail")
    assert dovecot_minimal.messages() == {}  # copied, flagged \Deleted, expunged


async def test_move_into_a_missing_folder_creates_it(dovecot: DovecotServer, engine: Engine, intake: Intake) -> None:
    """`move:FOLDER` where FOLDER does not exist: created at start-up, and again on TRYCREATE."""
    assert "Zgłoszenia" not in await asyncio.to_thread(dovecot.folders)
    poller = make_poller(dovecot, engine, intake, after_fetch="move:Zgłoszenia", poll_seconds=LONG_POLL)
    async with running(poller):
        await wait_until(lambda: poller.status["state"] == "idle", what="IDLE")
        assert "Zgłoszenia" in await asyncio.to_thread(dovecot.folders)  # created at start-up
        first = message(1)
        await append(dovecot, first)
        await wait_rows(engine, 1)
        await wait_until(lambda: len(dovecot.messages(folder="Zgłoszenia")) == 1, what="moved mail")
        assert dovecot.messages() == {}
        # Someone deletes the folder while the poller runs: the next MOVE gets NO [TRYCREATE].
        await asyncio.to_thread(dovecot.delete_folder, "Zgłoszenia")
        second = message(2)
        await append(dovecot, second)
        await wait_rows(engine, 2)
        await wait_until(lambda: len(dovecot.messages(folder="Zgłoszenia")) == 1, what="moved again")
        assert poller.status["last_error"] is None
    assert dovecot.messages() == {}
    [uid] = dovecot.messages(folder="Zgłoszenia")
    assert dovecot.fetch(uid, folder="Zgłoszenia") == second


async def test_failed_move_is_logged_not_repeated(dovecot: DovecotServer, engine: Engine, intake: Intake) -> None:
    raw = message(1)
    await append(dovecot, raw)
    # A name the server refuses to create (maildir++ has no "/" in names): the move cannot work.
    poller = make_poller(dovecot, engine, intake, idle=False, after_fetch="move:No/Such", poll_seconds=0.2)
    async with running(poller):
        await wait_rows(engine, 1)
        await polls_pass(poller, 3)  # several rounds: the journaled message is not fetched again
        assert "No/Such" in (poller.status["last_error"] or "")
    assert [row.raw for row in await journal_async(engine)] == [raw]
    assert list(dovecot.messages()) == [1]  # still there, untouched, for a human to see


async def test_journal_down_leaves_the_server_untouched(
    dovecot: DovecotServer, engine: Engine, intake: Intake, tmp_path: Path
) -> None:
    raw = message(1)
    await append(dovecot, raw)
    # A journal whose table does not exist: every accept raises JournalUnavailable.
    broken = Intake(make_engine(f"sqlite:///{tmp_path / 'empty.db'}"), instance_name="broken")
    poller = make_poller(dovecot, engine, broken, after_fetch="delete", poll_seconds=LONG_POLL)
    async with running(poller):
        await wait_until(lambda: poller.status["state"] == "error", what="the error state")
        assert "JournalUnavailable" in (poller.status["last_error"] or "")
        await errors_pass(2)  # a retry or two, each failing the same way
    assert list(dovecot.messages()) == [1]  # not deleted
    assert "\\Seen" not in dovecot.messages()[1] and "\\Deleted" not in dovecot.messages()[1]
    assert state(engine) is None or state(engine).last_uid == 0  # type: ignore[union-attr]
    # The journal is back: the message is ingested and only now deleted.
    async with running(make_poller(dovecot, engine, intake, after_fetch="delete", poll_seconds=LONG_POLL)):
        rows = await wait_rows(engine, 1)
        await wait_until(lambda: dovecot.messages() == {}, what="deletion")
    assert rows[0].raw == raw


async def test_stopped_between_journal_and_flag(dovecot: DovecotServer, engine: Engine) -> None:
    """Stopped after the journal commit, before the flag: the message is fetched again on restart.

    Both journal rows hold the same bytes, so the pipeline's dedupe (raw SHA-256 / Message-ID)
    makes one message of them; nothing is lost. (The stop is a task cancellation at exactly that
    point; the SIGKILL of a real `gateway serve` is tests/test_imap_kill.py.)
    """
    raw = message(1)
    await append(dovecot, raw)
    tasks: list[asyncio.Task[None]] = []
    # The journal writer reports the commit; cancelling the poller there is a kill at the worst time.
    dying = Intake(engine, instance_name="dying", on_journaled=lambda ids: tasks[0].cancel())
    poller = make_poller(dovecot, engine, dying, poll_seconds=LONG_POLL)
    tasks.append(asyncio.create_task(poller.run()))
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(tasks[0], timeout=15)
    assert [row.raw for row in await journal_async(engine)] == [raw]
    assert "\\Seen" not in dovecot.messages()[1]  # killed before the flag
    assert state(engine) is None or state(engine).last_uid == 0  # type: ignore[union-attr]

    restarted = make_poller(dovecot, engine, Intake(engine, instance_name="again"), poll_seconds=LONG_POLL)
    async with running(restarted):
        rows = await wait_rows(engine, 2)
        await wait_until(lambda: "\\Seen" in dovecot.messages()[1], what="\\Seen")
    assert [row.raw_sha256 for row in rows] == [hashlib.sha256(raw).hexdigest()] * 2
    assert state(engine).last_uid == 1  # type: ignore[union-attr]


# --- the server going away, UIDVALIDITY ------------------------------------------------------------


async def test_server_restart_while_polling(dovecot: DovecotServer, engine: Engine, intake: Intake) -> None:
    poller = make_poller(dovecot, engine, intake, poll_seconds=LONG_POLL)
    async with running(poller):
        await append(dovecot, message(1))
        await wait_rows(engine, 1)
        await wait_until(lambda: poller.status["state"] == "idle", what="IDLE")

        await asyncio.to_thread(dovecot.restart)
        raw = message(2)
        await append(dovecot, raw)
        rows = await wait_rows(engine, 2, timeout=20)
        assert rows[-1].raw == raw

        # Down for a while: errors, backoff, then back to work once it returns.
        await asyncio.to_thread(dovecot.stop)
        await wait_until(lambda: poller.status["state"] == "error", what="the error state")
        assert poller.status["last_error"]
        assert not poller.state.connected
        await errors_pass(2)  # several failed reconnects (backoff capped at 2 s here)
        await asyncio.to_thread(dovecot.start)
        raw = message(3)
        await append(dovecot, raw)
        rows = await wait_rows(engine, 3, timeout=20)
        assert rows[-1].raw == raw
        await wait_until(lambda: poller.status["state"] == "idle", what="IDLE again")
        assert poller.status["last_error"] is None
    assert [row.meta["uid"] for row in rows] == [1, 2, 3]


async def test_uidvalidity_change_refetches_the_folder(dovecot: DovecotServer, engine: Engine, intake: Intake) -> None:
    raws = [message(1), message(2)]
    for raw in raws:
        await append(dovecot, raw)
    # A selected IDLE session hears nothing of the change until it next talks to the server:
    # the safety-net re-sync (every poll_seconds, IDLE or not) is what notices it here.
    poller = make_poller(dovecot, engine, intake, poll_seconds=1.0)
    async with running(poller):
        await wait_rows(engine, 2)
        old = poller.status["uidvalidity"]
        new = await asyncio.to_thread(dovecot.change_uidvalidity)
        assert new != old
        # Dovecot drops the IDLE session ("IMAP session state is inconsistent"); the poller
        # reconnects, sees the new UIDVALIDITY and fetches the whole folder again (dedupe
        # downstream makes one message of each pair).
        await wait_until(lambda: poller.status["uidvalidity"] == new, what="the new UIDVALIDITY")
        rows = await wait_rows(engine, 4)
        third = message(3)
        await append(dovecot, third)
        rows = await wait_rows(engine, 5)
        await wait_until(lambda: poller.status["last_uid"] == 3, what="last_uid 3")
    assert [row.raw for row in rows] == raws + raws + [third]
    assert [row.meta["uidvalidity"] for row in rows] == [old, old, new, new, new]
    saved = state(engine)
    assert saved is not None and saved.uidvalidity == new and saved.last_uid == 3
    assert poller.status["uidvalidity"] == new


# --- bad and big messages --------------------------------------------------------------------------


async def test_malformed_message_between_good_ones(dovecot: DovecotServer, engine: Engine, intake: Intake) -> None:
    malformed = (
        b"this is not a header line\r\n"
        b'Content-Type: multipart/mixed; boundary="never-closed\r\n'
        b"Subject: =?utf-8?B?broken-base64!!?=\r\n"
        b"\r\n--never-closed\r\n\xff\xfe raw 8-bit garbage \x80\x81\r\n"
    )
    raws = [message(1), malformed, message(3)]
    for raw in raws:
        await append(dovecot, raw)
    async with running(make_poller(dovecot, engine, intake, poll_seconds=LONG_POLL)):
        rows = await wait_rows(engine, 3)
        await wait_until(lambda: all("\\Seen" in f for f in dovecot.messages().values()), what="flags")
    assert [row.raw for row in rows] == raws


async def test_unfetchable_message_is_skipped(dovecot: DovecotServer, engine: Engine, intake: Intake) -> None:
    raws = [message(n) for n in (1, 2, 3)]
    for raw in raws:
        await append(dovecot, raw)
    # Pull message 2's file from under Dovecot: its FETCH now returns no body.
    maildir = dovecot.maildir("support")
    files = sorted((maildir / "cur").iterdir()) + sorted((maildir / "new").iterdir())
    victim = next(path for path in files if path.read_bytes().replace(b"\n", b"\r\n") == raws[1])
    victim.unlink()
    poller = make_poller(dovecot, engine, intake, poll_seconds=LONG_POLL)
    async with running(poller):
        rows = await wait_rows(engine, 2)
        await wait_until(lambda: poller.status["last_uid"] == 3, what="last_uid 3")
        later = message(4)
        await append(dovecot, later)
        rows = await wait_rows(engine, 3)
    assert [row.raw for row in rows] == [raws[0], raws[2], later]


async def test_attachment_of_15_mib_plus_one_is_byte_exact(
    dovecot: DovecotServer, engine: Engine, intake: Intake
) -> None:
    mail = EmailMessage()
    mail["From"] = "klient@example.test"
    mail["To"] = "bok@example.test"
    mail["Subject"] = "big attachment"
    mail["Message-ID"] = "<big-1@example.test>"
    mail.set_content("See attached.\n")
    mail.add_attachment(os.urandom(15 * MIB + 1), maintype="application", subtype="octet-stream", filename="big.bin")
    raw = mail.as_bytes(policy=mail.policy.clone(linesep="\r\n"))
    small = message(2)
    await append(dovecot, raw)
    await append(dovecot, small)
    async with running(make_poller(dovecot, engine, intake, poll_seconds=LONG_POLL)):
        rows = await wait_rows(engine, 2, timeout=60)
    assert rows[0].size == len(raw) > 15 * MIB
    assert rows[0].raw_sha256 == hashlib.sha256(raw).hexdigest()
    assert rows[0].raw == raw
    assert rows[1].raw == small


# --- TLS -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("security", ["tls", "starttls"])
async def test_tls_and_starttls(dovecot_tls: DovecotServer, engine: Engine, intake: Intake, security: str) -> None:
    raw = message(1)
    await append(dovecot_tls, raw)
    # Trust comes from the settings: `ca_file` names the server's (self-signed) certificate.
    settings = dovecot_tls.mailbox_settings(security=security, poll_seconds=LONG_POLL)
    assert settings.ca_file == dovecot_tls.cert_path
    poller = MailboxPoller(settings, engine=engine, intake=intake)
    async with running(poller):
        rows = await wait_rows(engine, 1)
        await wait_until(lambda: poller.status["state"] == "idle", what="IDLE over TLS")
    assert rows[0].raw == raw


async def test_untrusted_certificate_is_an_error_not_a_crash(
    dovecot_tls: DovecotServer, engine: Engine, intake: Intake
) -> None:
    await append(dovecot_tls, message(1))
    poller = make_poller(dovecot_tls, engine, intake, security="tls", ca_file=None)  # system trust store only
    async with running(poller):
        await wait_until(lambda: poller.status["state"] == "error", what="the error state")
        assert "CERTIFICATE" in (poller.status["last_error"] or "").upper()
    assert await journal_async(engine) == []


async def test_tls_verify_off_accepts_the_self_signed_certificate(
    dovecot_tls: DovecotServer, engine: Engine, intake: Intake
) -> None:
    raw = message(1)
    await append(dovecot_tls, raw)
    poller = make_poller(dovecot_tls, engine, intake, security="starttls", ca_file=None, tls_verify=False)
    async with running(poller):
        rows = await wait_rows(engine, 1)
    assert rows[0].raw == raw
