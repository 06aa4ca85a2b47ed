"""The runner: feeds journaled entries to the pipeline in batches, in order, off the event loop.

Acknowledging is what senders wait for, and the pipeline competes with it for the one
interpreter. Processing does not wait for mail to stop arriving: it runs all the time, and while
mail arrives it gives way after each batch for five times as long as the batch took, so acknowledging
keeps five sixths of the interpreter (parsing, the CPU-heavy step that needs no database, runs in
the parse pool's processes meanwhile, at a lower priority). Once the oldest waiting entry is `max_lag` seconds old it stops
giving way until it has caught up. Entries the pipeline left for later (a batch budget) go back to
the front of the line; deferred ones are offered again shortly. The lag (the age of the oldest
entry not processed yet) is kept, with the largest seen, for /healthz and the log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from itertools import islice

from gateway.pipeline import Pipeline
from store.states import Outcome

log = logging.getLogger(__name__)

DEFER_SECONDS = 0.5  # how soon a deferred entry is tried again
# While mail arrives, the pause after a batch, in multiples of the time the batch took: 5 keeps
# processing to a sixth of the interpreter then (bench/sustained.py: acknowledgements >= 40% of a
# no-op sink; with 2 they fell to 29-35% once batches got cheaper and came more often, with 4 to
# 37-40% once the outbox rows went in per batch), and it catches up at full speed once the
# senders pause or the lag reaches max_lag.
GIVE_WAY = 5.0
# ...but never longer than this: a batch that took long because it waited (a database outage holds
# a write for the whole busy timeout, 60 s) used no interpreter, and five times that would leave the
# backlog untouched for minutes after the database came back.
MAX_GIVE_WAY_SECONDS = 2.0
# How often a pause checks whether mail still arrives (Intake.busy: a journal write within the last
# 20 ms). A burst that ends mid-pause left up to MAX_GIVE_WAY_SECONDS of backlog untouched before
# (bench/sustained.py: nothing finished for 0.5-1.5 s after the last acknowledgement).
GIVE_WAY_CHECK_SECONDS = 0.05


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
        self._queued: dict[int, float] = {}  # journal id -> time.monotonic() it was submitted
        self._wakeup = asyncio.Event()
        self.processed = 0
        self.max_lag_seen = 0.0  # seconds, the largest lag seen after a batch
        self._busy_since: float | None = None  # time.monotonic() the backlog stopped being empty

    def submit(self, journal_ids: list[int]) -> None:
        now = time.monotonic()
        for journal_id in journal_ids:
            if journal_id not in self._queued:
                self._queued[journal_id] = now
                self._waiting.append(journal_id)
        if self._waiting:
            self._wakeup.set()

    def lag(self) -> float:
        """Seconds the oldest entry not processed yet has waited (0 when there is none); any thread."""
        queued = list(self._queued.values())  # one step under the GIL: /healthz reads it from a thread
        return max(0.0, time.monotonic() - min(queued)) if queued else 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._pipeline.parse_pool.start)
        while True:
            while not self._waiting:
                self._caught_up(time.monotonic())
                self._wakeup.clear()
                await self._wakeup.wait()
            if self._busy_since is None:
                self._busy_since = time.monotonic()
            batch = [self._waiting.popleft() for _ in range(min(self._batch_size, len(self._waiting)))]
            # The pool parses the following batch while this one's transaction runs.
            following = list(islice(self._waiting, self._batch_size))
            started = time.monotonic()
            outcomes = await asyncio.to_thread(self._pipeline.process_batch, batch, parse_next=following)
            took = time.monotonic() - started
            log.debug(
                "batch of %d in %.3f s (%d parsed ahead so far), %d waiting, lag %.2f s",
                len(batch),
                took,
                self._pipeline.parse_pool.delivered,
                len(self._waiting),
                self.lag(),
            )
            self.max_lag_seen = max(self.max_lag_seen, self.lag())
            left = [journal_id for journal_id in batch if journal_id not in outcomes]
            self._waiting.extendleft(reversed(left))  # still first in line
            for journal_id, outcome in outcomes.items():
                self._queued.pop(journal_id, None)
                self.processed += 1
                if outcome == Outcome.DEFERRED:
                    # Earlier mail of its thread is still in flight, or the database is away.
                    loop.call_later(DEFER_SECONDS, self.submit, [journal_id])
            if Outcome.DONE in outcomes.values():
                self._on_done()
            await self._give_way(min(took * GIVE_WAY, MAX_GIVE_WAY_SECONDS))

    async def _give_way(self, seconds: float) -> None:
        """While mail is arriving, acknowledging goes first: pause for `seconds` (GIVE_WAY times as
        long as the batch took leaves it most of the interpreter, and processing still never
        stops), but no longer than mail keeps arriving and the lag stays under max_lag: a burst's
        backlog is worked off from the moment the senders pause, not a whole pause later."""
        resume_at = time.monotonic() + seconds
        while self._waiting and self.arriving() and self.lag() < self._max_lag:
            remaining = resume_at - time.monotonic()
            if remaining <= 0:
                return
            await asyncio.sleep(min(remaining, GIVE_WAY_CHECK_SECONDS))

    def _caught_up(self, now: float) -> None:
        if self._busy_since is not None and self.processed:
            log.info(
                "pipeline caught up after %.1f s of backlog; largest lag %.2f s",
                now - self._busy_since,
                self.max_lag_seen,
            )
        self._busy_since = None

    @property
    def backlog(self) -> int:
        return len(self._waiting)
