"""The outbox worker's passes: rows a lease no longer covers go back unattempted; results are counted.

Against the real SMTP sink (tests/servers/relay_sink.py) and a real database.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest

from gateway.app import Components
from gateway.metrics import REGISTRY
from gateway.settings import Settings
from store.models import utcnow
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
        await worker._lane(claimed)

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
