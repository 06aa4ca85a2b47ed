"""The runner's pause while mail arrives is bounded: a batch that took long because it waited (on a
locked or unreachable database) must not hold the backlog back for several times that afterwards.

The pipeline here is a stand-in whose first batch blocks, as a real one blocks for the whole
SQLite busy timeout during an outage (tests/test_contract_outage.py causes that for real, and
took minutes to settle before the bound)."""

from __future__ import annotations

import asyncio
import time

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

    def __init__(self) -> None:
        self.parse_pool = _Pool()
        self.started: list[float] = []

    def process_batch(self, journal_ids: list[int], *, parse_next: list[int]) -> dict[int, Outcome]:
        self.started.append(time.monotonic())
        if len(self.started) == 1:
            time.sleep(BLOCKED_SECONDS)
        return {journal_id: Outcome.DONE for journal_id in journal_ids}


async def test_a_batch_that_waited_does_not_stall_the_backlog():
    pause_bound = runner_module.MAX_GIVE_WAY_SECONDS
    pipeline = _BlockedOnceThenQuick()
    runner = PipelineRunner(
        pipeline,  # type: ignore[arg-type]
        on_done=lambda: None,
        max_lag=3600,  # never reached here: the pause is what is under test
        batch_size=1,
        arriving=lambda: True,  # senders keep connecting throughout
    )
    running = asyncio.create_task(runner.run())
    try:
        runner.submit([1, 2])
        deadline = time.monotonic() + 60
        while len(pipeline.started) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        running.cancel()
    assert len(pipeline.started) == 2
    pause = pipeline.started[1] - pipeline.started[0] - BLOCKED_SECONDS
    # Unbounded, the pause would be GIVE_WAY times the blocked batch (6 s here).
    assert pause_bound + 2 < runner_module.GIVE_WAY * BLOCKED_SECONDS
    assert pause < pause_bound + 2, pause
