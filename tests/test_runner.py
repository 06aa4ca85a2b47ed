"""The runner's pause while mail arrives is bounded: a batch that took long because it waited (on a
locked or unreachable database) must not hold the backlog back for several times that afterwards;
and it lasts only while mail arrives: when a burst ends, its backlog is worked off at once.

The pipeline here is a stand-in whose first batch blocks, as a real one blocks for the whole
SQLite busy timeout during an outage (tests/test_contract_outage.py causes that for real, and
took minutes to settle before the bound)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from gateway import runner as runner_module
from gateway.runner import PipelineRunner
from store.states import Outcome

BLOCKED_SECONDS = 1.5


class _Pool:
    delivered = 0

    def start(self) -> None:
        pass


class _BlockedOnceThenQuick:
    """process_batch blocks (no CPU) on its first call, then returns at once; records when each ran."""

    def __init__(self, blocked_seconds: float = BLOCKED_SECONDS) -> None:
        self.parse_pool = _Pool()
        self.blocked_seconds = blocked_seconds
        self.started: list[float] = []
        self.finished: list[float] = []

    def process_batch(self, journal_ids: list[int], *, parse_next: list[int]) -> dict[int, Outcome]:
        self.started.append(time.monotonic())
        if len(self.started) == 1:
            time.sleep(self.blocked_seconds)
        self.finished.append(time.monotonic())
        return {journal_id: Outcome.DONE for journal_id in journal_ids}


async def _pause_after_first_batch(pipeline: _BlockedOnceThenQuick, arriving: Callable[[], bool]) -> float:
    """Seconds between the end of the first batch and the start of the second."""
    runner = PipelineRunner(
        pipeline,  # type: ignore[arg-type]
        on_done=lambda: None,
        max_lag=3600,  # never reached here: the pause is what is under test
        batch_size=1,
        arriving=arriving,
    )
    running = asyncio.create_task(runner.run())
    try:
        runner.submit([1, 2])
        deadline = time.monotonic() + 60
        while len(pipeline.started) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    finally:
        running.cancel()
    assert len(pipeline.started) == 2
    return pipeline.started[1] - pipeline.finished[0]


async def test_a_batch_that_waited_does_not_stall_the_backlog():
    pause_bound = runner_module.MAX_GIVE_WAY_SECONDS
    # Senders keep connecting throughout.
    pause = await _pause_after_first_batch(_BlockedOnceThenQuick(), arriving=lambda: True)
    # Unbounded, the pause would be GIVE_WAY times the blocked batch (6 s here).
    assert pause_bound + 2 < runner_module.GIVE_WAY * BLOCKED_SECONDS
    assert pause < pause_bound + 2, pause


async def test_the_pause_lasts_while_mail_arrives():
    pipeline = _BlockedOnceThenQuick(blocked_seconds=0.4)
    pause = await _pause_after_first_batch(pipeline, arriving=lambda: True)
    # GIVE_WAY times the 0.4 s batch, within the bound.
    expected = min(runner_module.GIVE_WAY * 0.4, runner_module.MAX_GIVE_WAY_SECONDS)
    assert expected - 0.1 < pause < expected + 1, pause


async def test_the_pause_ends_when_mail_stops_arriving():
    pipeline = _BlockedOnceThenQuick(blocked_seconds=0.4)
    burst_ends_after_first_batch = 0.3

    def arriving() -> bool:
        return not pipeline.finished or time.monotonic() < pipeline.finished[0] + burst_ends_after_first_batch

    pause = await _pause_after_first_batch(pipeline, arriving)
    # The senders stopped 0.3 s into a pause that was to last 2 s: the backlog's turn comes then.
    assert pause < burst_ends_after_first_batch + 0.5, pause
