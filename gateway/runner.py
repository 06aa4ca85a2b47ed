"""The runner: feeds journaled entries to the pipeline in batches, in order, off the event loop.

Acknowledging is what senders wait for, and the pipeline competes with it for the one
interpreter: while mail is arriving, processing steps aside, but never lets the oldest waiting
entry get more than `max_lag` seconds old. Entries the pipeline left for later (a batch budget)
go back to the front of the line; deferred ones are offered again shortly.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from gateway.pipeline import Pipeline
from store.states import Outcome

DEFER_SECONDS = 0.5  # how soon a deferred entry is tried again


class PipelineRunner:
    def __init__(
        self,
        pipeline: Pipeline,
        *,
        on_done: Callable[[], None],
        max_lag: float,
        batch_size: int = 50,
        arriving: Callable[[], bool] = lambda: False,
    ) -> None:
        self._pipeline = pipeline
        self._on_done = on_done
        self._max_lag = max_lag
        self._batch_size = max(1, batch_size)
        self.arriving = arriving
        self._waiting: deque[int] = deque()  # journal ids, oldest first
        self._queued: dict[int, float] = {}  # journal id -> loop time it was submitted
        self._wakeup = asyncio.Event()
        self.processed = 0

    def submit(self, journal_ids: list[int]) -> None:
        now = asyncio.get_running_loop().time()
        for journal_id in journal_ids:
            if journal_id not in self._queued:
                self._queued[journal_id] = now
                self._waiting.append(journal_id)
        if self._waiting:
            self._wakeup.set()

    async def _step_aside(self, journal_id: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = self._queued.get(journal_id, loop.time()) + self._max_lag
        while self.arriving() and loop.time() < deadline:
            await asyncio.sleep(0.005)

    async def run(self) -> None:
        while True:
            while not self._waiting:
                self._wakeup.clear()
                await self._wakeup.wait()
            await self._step_aside(self._waiting[0])
            batch = [self._waiting.popleft() for _ in range(min(self._batch_size, len(self._waiting)))]
            outcomes = await asyncio.to_thread(self._pipeline.process_batch, batch)
            left = [journal_id for journal_id in batch if journal_id not in outcomes]
            self._waiting.extendleft(reversed(left))  # still first in line
            for journal_id, outcome in outcomes.items():
                self._queued.pop(journal_id, None)
                self.processed += 1
                if outcome == Outcome.DEFERRED:
                    # Earlier mail of its thread is still in flight, or the database is away.
                    asyncio.get_running_loop().call_later(DEFER_SECONDS, self.submit, [journal_id])
            if Outcome.DONE in outcomes.values():
                self._on_done()

    @property
    def backlog(self) -> int:
        return len(self._waiting)
