"""The journal's group commit: many small messages share one transaction (one fsync), but large
ones that arrive at the same moment are committed one after another (intake.GROUP_MAX_BYTES), so
a group never holds several of them in memory at once (bench/peak_memory.py: 2.72x -> 2.27x)."""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select

from gateway import intake as intake_module
from gateway.intake import Intake
from store import db
from store.models import JournalEntry


def _spied(intake: Intake) -> list[list[int]]:
    """The raw sizes of each group the intake writes (the real write still happens)."""
    groups: list[list[int]] = []
    write = intake._write

    def spy(batch: list[intake_module._Queued]) -> list[intake_module.Receipt]:
        groups.append([len(item.raw) for item in batch])
        return write(batch)

    intake._write = spy  # type: ignore[method-assign]
    return groups


async def test_large_messages_are_committed_apart_and_small_ones_together(database_url: str, tmp_path) -> None:
    engine = db.journal_engine_for(db.make_engine(database_url), tmp_path / "data")
    db.upgrade(engine)
    intake = Intake(engine, instance_name="groups")
    groups = _spied(intake)
    big = intake_module.GROUP_MAX_BYTES // 2 + 1  # two of them pass the bound
    small = [b"small %d" % index for index in range(40)]
    raws = [b"A" * big, b"B" * big, b"C" * big, *small]
    receipts = await asyncio.gather(*(intake.accept(raw, source="smtp") for raw in raws))

    assert len({receipt.journal_id for receipt in receipts}) == len(raws)
    with db.reading(engine) as session:
        assert session.execute(select(func.count()).select_from(JournalEntry)).scalar_one() == len(raws)
    # No group holds more than the bound, except a single message larger than it.
    assert all(sum(sizes) <= intake_module.GROUP_MAX_BYTES or len(sizes) == 1 for sizes in groups), groups
    assert all(sizes.count(big) <= 1 for sizes in groups), groups  # never two large ones together
    # The small ones still share commits: far fewer groups than messages.
    assert len(groups) < len(raws) // 2, groups
    engine.dispose()


async def test_one_message_larger_than_the_bound_is_journaled_alone(database_url: str, tmp_path) -> None:
    engine = db.journal_engine_for(db.make_engine(database_url), tmp_path / "data")
    db.upgrade(engine)
    intake = Intake(engine, instance_name="groups")
    groups = _spied(intake)
    huge = intake_module.GROUP_MAX_BYTES + 1
    await asyncio.gather(intake.accept(b"x" * huge, source="smtp"), intake.accept(b"y", source="smtp"))
    assert [huge] in groups and sum(map(len, groups)) == 2
    engine.dispose()
