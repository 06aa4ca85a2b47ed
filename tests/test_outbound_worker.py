"""The outbox worker's passes: rows a lease no longer covers go back unattempted; results are counted.

Against the real SMTP sink (tests/servers/relay_sink.py) and a real database.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, event
from sqlalchemy.exc import OperationalError
from sqlmodel import col, select

from gateway.app import Components
from gateway.metrics import REGISTRY
from gateway.outbound.worker import _SentMarks
from gateway.settings import Settings
from store.db import reading
from store.models import Message, utcnow
from tests.helpers import outbox_rows, outbox_worker, queue_acks
from tests.servers.relay_sink import RelaySink

CUSTOMERS = [f"klient{number}@klient.example" for number in range(3)]


@pytest.fixture
def sink() -> Iterator[RelaySink]:
    with RelaySink() as running:
        yield running


async def test_rows_whose_lease_runs_short_are_handed_back_unattempted(
    settings_factory: Callable[..., Settings], sink: RelaySink
) -> None:
    settings = settings_factory(relay_url=sink.url, relay_max_connections=1)
    components = Components.build(settings)
    try:
        queue_acks(components, CUSTOMERS)
        worker = outbox_worker(components, settings)
        claimed = worker._claim()
        assert len(claimed) == 3
        # As if the first send had taken most of the lease: the later rows' leases would run out
        # during an attempt, and another instance could then send them a second time.
        for item in claimed[1:]:
            item.claimed_until = utcnow() + timedelta(seconds=1)
        sent = _SentMarks(components.engine)
        await worker._lane(claimed, sent)
        await sent.drain()

        first, *rest = outbox_rows(components)
        assert (first.status, first.attempts) == ("sent", 1)
        for row in rest:
            assert (row.status, row.attempts, row.claimed_by, row.last_error) == ("queued", 0, None, None)
        assert [d.recipients for d in sink.deliveries] == [(CUSTOMERS[0],)]

        assert await worker.run_once() == 2  # handed back: due at once, sent by the next pass
        assert {row.status for row in outbox_rows(components)} == {"sent"}
        assert len(sink.accepted) == 3
    finally:
        components.dispose()


def _count(result: str) -> float:
    return REGISTRY.get_sample_value("gateway_outbox_attempts_total", {"result": result}) or 0.0


async def test_every_attempt_is_counted_by_result(settings_factory: Callable[..., Settings], sink: RelaySink) -> None:
    settings = settings_factory(relay_url=sink.url, outbox_backoff_seconds=0.0)
    components = Components.build(settings)
    try:
        before = {result: _count(result) for result in ("sent", "retried", "failed")}
        sink.fail("451 4.3.0 later", count=1, recipient=CUSTOMERS[0])
        sink.fail("550 5.1.1 no such user", recipient=CUSTOMERS[1])
        queue_acks(components, CUSTOMERS[:2])
        worker = outbox_worker(components, settings)
        while await worker.run_once():
            pass
        after = {result: _count(result) - before[result] for result in before}
        # 451 then 250 for the first; 550 for the second, whose staff notice is then sent.
        assert after == {"sent": 2.0, "retried": 1.0, "failed": 1.0}
    finally:
        components.dispose()


async def test_mails_accepted_together_are_recorded_in_one_transaction(
    settings_factory: Callable[..., Settings], sink: RelaySink
) -> None:
    settings = settings_factory(relay_url=sink.url)
    components = Components.build(settings)
    try:
        queue_acks(components, CUSTOMERS)
        rows = outbox_rows(components)
        statements: list[str] = []
        event.listen(components.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
        marks = _SentMarks(components.engine)
        for row in rows:  # accepted while nothing was being recorded: one group
            marks.add(row.id or 0)
        marks.add(rows[0].id or 0)  # reported twice (a lane and a retry): recorded once
        await marks.drain()

        updates = [s for s in statements if s.lstrip().upper().startswith("UPDATE")]
        assert len(updates) == 2, updates  # the outbox rows, then the case messages that carry them
        assert [(row.status, row.attempts) for row in outbox_rows(components)] == [("sent", 1)] * len(rows)
        with reading(components.engine) as session:
            carried = session.exec(select(Message.delivery_status).where(col(Message.outbox_id).is_not(None))).all()
        assert carried == ["sent"] * len(rows)
    finally:
        components.dispose()


async def test_lanes_wait_while_too_many_accepted_mails_are_unrecorded(
    settings_factory: Callable[..., Settings], sink: RelaySink
) -> None:
    settings = settings_factory(relay_url=sink.url)
    components = Components.build(settings)
    try:
        recipients = [f"klient{number}@klient.example" for number in range(_SentMarks.MAX_UNRECORDED)]
        queue_acks(components, recipients)
        marks = _SentMarks(components.engine)
        for row in outbox_rows(components):
            marks.add(row.id or 0)
        await marks.room()  # as many unrecorded as allowed: the next attempt waits for their commit
        assert {row.status for row in outbox_rows(components)} == {"sent"}
        await marks.drain()
    finally:
        components.dispose()


async def test_once_recording_fails_lanes_stop_and_the_pass_reports_it(tmp_path: Path) -> None:
    # A database that cannot take the marks (here: one without tables): the accepted mails stay
    # claimed, to be sent again after their lease; no lane goes on sending what it cannot record.
    engine = create_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    try:
        marks = _SentMarks(engine)
        for item_id in range(_SentMarks.MAX_UNRECORDED):
            marks.add(item_id + 1)
        with pytest.raises(OperationalError):
            await marks.room()
        with pytest.raises(OperationalError):
            await marks.drain()
    finally:
        engine.dispose()
