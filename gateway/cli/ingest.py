"""`gateway ingest`: .eml files, mbox files and maildirs through intake and the pipeline, in batches."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from gateway.settings import Settings
from store.states import Outcome

if TYPE_CHECKING:
    from rich.progress import Progress

    from gateway.app import Components
    from gateway.intake import Intake


def ingest(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.cli.sources import count_messages, iter_raw_messages

    missing = [str(path) for path in args.paths if not path.exists()]
    if missing:
        print(f"no such file or directory: {', '.join(missing)}", file=sys.stderr)
        return 2
    outcomes: Counter[str] = Counter()
    total = count_messages(args.paths) if sys.stdout.isatty() else None
    asyncio.run(_ingest_all(settings, iter_raw_messages(args.paths), outcomes, total, quiet=not args.notify))
    summary = ", ".join(f"{name} {count}" for name, count in sorted(outcomes.items()))
    print(f"ingested {sum(outcomes.values())} message(s): {summary or 'nothing'}")
    return 1 if outcomes.get("quarantined") or outcomes.get("deferred") else 0


async def _ingest_all(
    settings: Settings,
    messages: Iterable[tuple[str, bytes]],
    outcomes: Counter[str],
    total: int | None,
    *,
    quiet: bool,
) -> None:
    from gateway.app import Components
    from gateway.intake import Intake
    from store.locks import Presence

    components = await asyncio.to_thread(Components.build, settings)
    name = f"{settings.instance_name}-ingest"
    intake = Intake(components.journal_engine, instance_name=name)
    # Running `serve` instances leave what this command journals to it while it runs.
    presence = Presence(components.journal_engine, name)
    await asyncio.to_thread(presence.start)
    meta = {"quiet": True} if quiet else {}
    # The pool's children start (a new interpreter each) while the first files are journaled.
    pool_started = asyncio.create_task(asyncio.to_thread(components.pipeline.parse_pool.start))
    with _progress(total) as advance:
        # Each chunk is journaled before the one before it is processed, so that the parse pool
        # parses it while the pipeline works through the previous one.
        previous: _Journaled | None = None
        chunk: list[tuple[str, bytes]] = []
        for item in messages:
            chunk.append(item)
            if len(chunk) >= INGEST_CHUNK:
                journaled = await _journal(intake, chunk, meta)
                await pool_started
                if previous is not None:
                    await _process(components, previous, outcomes, advance, parse_next=list(journaled))
                previous, chunk = journaled, []
        last = await _journal(intake, chunk, meta) if chunk else None
        await pool_started
        for ready, following in ((previous, last), (last, None)):
            if ready is not None:
                await _process(components, ready, outcomes, advance, parse_next=list(following or ()))
    presence.close()
    components.dispose()


INGEST_CHUNK = 50  # the pipeline's batch (pipeline_batch_max_entries' default)
_Journaled = dict[int, str]  # journal id -> the file (and position) it came from


async def _journal(intake: Intake, chunk: list[tuple[str, bytes]], meta: dict[str, Any]) -> _Journaled:
    # Journaling the chunk concurrently shares one commit among its messages (group commit).
    receipts = await asyncio.gather(*(intake.accept(raw, source="file", meta=meta) for _, raw in chunk))
    return {receipt.journal_id: label for (label, _), receipt in zip(chunk, receipts, strict=True)}


async def _process(
    components: Components,
    labels: _Journaled,
    outcomes: Counter[str],
    advance: Callable[[], None],
    *,
    parse_next: list[int],
) -> None:
    # Processing them together shares a transaction. Entries a batch budget left, and entries
    # deferred because earlier mail of their thread was still pending, come back in the next
    # round, in order; a round that settles nothing ends it (they stay pending for `serve`).
    pending = list(labels)
    while pending:
        done = await asyncio.to_thread(components.pipeline.process_batch, pending, parse_next=parse_next)
        parse_next = []  # handed over once
        settled = {journal_id: outcome for journal_id, outcome in done.items() if outcome != Outcome.DEFERRED}
        if not settled:
            for journal_id in pending:
                outcomes[str(Outcome.DEFERRED)] += 1
                print(f"deferred: {labels[journal_id]} (journal entry {journal_id})", file=sys.stderr)
                advance()
            return
        for journal_id, outcome in settled.items():
            outcomes[str(outcome)] += 1
            if outcome == Outcome.QUARANTINED:
                print(f"quarantined: {labels[journal_id]} (journal entry {journal_id})", file=sys.stderr)
            advance()
        pending = [journal_id for journal_id in pending if journal_id not in settled]


class _progress:
    """A rich progress bar on a terminal; nothing when the output is a pipe or a file."""

    def __init__(self, total: int | None) -> None:
        self._total = total
        self._bar: Progress | None = None

    def __enter__(self) -> Callable[[], None]:
        if self._total is None:
            return lambda: None
        from rich.progress import Progress

        bar = self._bar = Progress()
        bar.start()
        task = bar.add_task("ingesting", total=self._total)
        return lambda: bar.advance(task)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
