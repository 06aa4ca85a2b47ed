"""The parse pool (issue 13): journal entries parsed in child processes ahead of the pipeline.

Real child processes (forkserver) and the real pipeline, on SQLite and (GATEWAY_TEST_BACKEND=
postgresql) PostgreSQL. A child killed with SIGKILL in the middle of parsing costs only time: the
entry is parsed in-process, processed, and neither lost nor counted towards its quarantine.
"""

from __future__ import annotations

import os
import pickle
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, select

from gateway.app import Components
from gateway.intake import Intake
from gateway.parse import DEFAULT_BUDGET, parse_message
from gateway.settings import Settings
from store.db import reading
from store.models import Case, JournalEntry, Message
from store.states import Outcome
from tests.helpers import SUPPORT, authenticated, make_mail
from tests.servers.serve import wait_until

SLOW_PARTS = 2500  # about a millisecond of parsing each: seconds in all, well under the pool's 4 MiB


@pytest.fixture
async def components(settings_factory: Callable[..., Settings]) -> AsyncIterator[Components]:
    # One child, and a MIME budget that lets the slow message below be parsed in full.
    built = Components.build(settings_factory(pipeline_parse_workers=1, mime_max_parts=10_000))
    yield built
    built.dispose()


async def _journal(components: Components, raws: list[bytes], sender: str) -> list[int]:
    intake = Intake(components.journal_engine, instance_name="pool-test")
    meta: dict[str, Any] = {"mail_from": sender, "rcpt_tos": [SUPPORT], "peer": "127.0.0.1"}
    return [(await intake.accept(raw, source="smtp", meta=meta)).journal_id for raw in raws]


def _slow_to_parse(sender: str) -> bytes:
    """Many small parts, each with its own RFC 2231 name and an ISO-8859-2 body to decode (numbered:
    the parser parses a header value once, so identical parts would cost it nothing)."""
    boundary = "graniczna"
    head = (
        f"From: {sender}\r\nTo: {SUPPORT}\r\nSubject: =?UTF-8?Q?Wyci=C4=85g_z_wielu_plik=C3=B3w?=\r\n"
        f"Message-ID: <wiele-czesci@klient.example>\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: multipart/mixed; boundary={boundary}\r\n\r\n"
    )
    parts = "".join(
        f'--{boundary}\r\nContent-Type: text/plain; charset=iso-8859-2; name="plik{index}.txt"\r\n'
        f"Content-Disposition: attachment; filename*=UTF-8''plik{index}%C5%BC.txt\r\n"
        f"Content-Description: =?iso-8859-2?q?opis_pliku_{index}_za=BF=F3=B3=E6_g=EA=B6l=B1?=\r\n"
        f"Content-ID: <plik{index}@klient.example>\r\n\r\n"
        "za\xbf\xf3\xb3\xe6 g\xea\xb6l\xb1 ja\xbc\xf1\r\n"
        for index in range(SLOW_PARTS)
    )
    return (head + parts + f"--{boundary}--\r\n").encode("latin-1")


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used so far (/proc/PID/stat, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _entry(components: Components, journal_id: int) -> JournalEntry:
    with reading(components.journal_engine) as session:
        entry = session.get(JournalEntry, journal_id)
        assert entry is not None
        return entry


def test_what_crosses_to_a_child_pickles():
    raw = authenticated(make_mail(subject="Zażółć gęślą jaźń", attachments=[("a.bin", b"\0\1")])).as_bytes()
    parsed = parse_message(raw, envelope_sender=None, budget=DEFAULT_BUDGET)
    assert pickle.loads(pickle.dumps(DEFAULT_BUDGET)) == DEFAULT_BUDGET
    assert pickle.loads(pickle.dumps(parsed)) == parsed


async def test_a_child_killed_while_parsing_loses_nothing_and_quarantines_nothing(components: Components):
    sender = "wiele@klient.example"
    (journal_id,) = await _journal(components, [_slow_to_parse(sender)], sender)
    pool = components.pipeline.parse_pool

    pool.parse_ahead(journal_engine=components.journal_engine, journal_ids=[journal_id])
    wait_until(lambda: pool.worker_pids(), 30, "the pool's child to start")
    (child,) = pool.worker_pids()
    # Parsing is under way once the child has spent a while on the CPU (starting costs far less).
    wait_until(lambda: _cpu_seconds(child) > 0.5, 60, "the child to be busy parsing")
    os.kill(child, signal.SIGKILL)
    wait_until(lambda: pool.broken, 30, "the pool to notice its child died")

    assert components.pipeline.process_batch([journal_id]) == {journal_id: Outcome.DONE}

    assert pool.crashes == 1, "the child finished before the kill: the test proves nothing"
    assert pool.delivered == 0
    entry = _entry(components, journal_id)
    assert (entry.status, entry.attempts) == ("done", 1)  # the in-process attempt only
    with reading(components.engine) as session:
        (case,) = session.exec(select(Case))
        assert case.requester == sender
    # The pool is replaced: the next entries are parsed by a new child.
    later = await _journal(components, [make_mail(sender=sender).as_bytes() for _ in range(3)], sender)
    pool.parse_ahead(journal_engine=components.journal_engine, journal_ids=later)
    wait_until(lambda: pool.ready(later), 30, "the new child to parse them")
    assert components.pipeline.process_batch(later) == dict.fromkeys(later, Outcome.DONE)
    assert pool.delivered == 3 and pool.worker_pids() != [child]


async def test_a_reply_and_its_parent_parsed_in_parallel_land_in_one_case(components: Components):
    pool = components.pipeline.parse_pool
    sender = "anna@klient.example"
    parent = authenticated(make_mail(sender=sender, subject="Brak dostępu do panelu"))
    replies = [
        authenticated(
            make_mail(sender=sender, subject="Re: Brak dostępu do panelu", body=f"Uzupełnienie {n}.", in_reply_to=ref)
        )
        for n, ref in enumerate([str(parent["Message-ID"])] * 3)
    ]
    ids = await _journal(components, [parent.as_bytes(), *(reply.as_bytes() for reply in replies)], sender)

    # The child parses the replies while this process parses the parent and stores it (the
    # pipeline never waits for the child: it takes what is ready, so the test lets it finish).
    first = components.pipeline.process_batch(ids[:1], parse_next=ids[1:])
    wait_until(lambda: pool.ready(ids[1:]), 30, "the child to parse the replies")
    second = components.pipeline.process_batch(ids[1:])

    assert {**first, **second} == dict.fromkeys(ids, Outcome.DONE)
    assert pool.delivered == 3, "the replies were to be parsed by the child"
    with reading(components.engine) as session:
        cases = list(session.exec(select(Case)))
        inbound = list(session.exec(select(Message).where(Message.direction == "inbound").order_by(col(Message.id))))
    assert len(cases) == 1
    assert [m.case_id for m in inbound] == [cases[0].id] * 4


async def test_the_children_stop_with_the_components(components: Components):
    raws = [make_mail(sender="jan@klient.example", subject=f"Sprawa {n}").as_bytes() for n in range(4)]
    ids = await _journal(components, raws, "jan@klient.example")
    components.pipeline.parse_pool.parse_ahead(journal_engine=components.journal_engine, journal_ids=ids)
    children = components.pipeline.parse_pool.worker_pids()
    assert children

    components.dispose()  # what `gateway serve` (Gateway.stop) and `gateway ingest` do at the end

    def gone(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
        except FileNotFoundError:
            return True

    wait_until(lambda: all(gone(pid) for pid in children), 30, "the pool's children to stop with the components")
    # Entries are still processed after the pool is gone: in-process, as with 0 workers.
    assert components.pipeline.process_batch(ids) == dict.fromkeys(ids, Outcome.DONE)
