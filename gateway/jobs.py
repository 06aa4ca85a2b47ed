"""The scheduler's job table (APScheduler) and the periodic work itself: replay, wake-ups, auto-close.

Every instance runs the scheduler. Replay and outbox wake-ups are safe anywhere (rows are claimed);
auto-close runs once per cluster at a time, under an advisory lock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy import Engine
from sqlmodel import col, select

from gateway.outbound.replies import Outgoing, Replies, conversation
from gateway.retention import purge
from gateway.settings import Settings
from store import journal
from store.db import reading, transaction
from store.locks import Presence, cluster_lock, live_instances
from store.models import Case, utcnow
from store.states import CaseStatus

log = logging.getLogger(__name__)


def pending_journal_ids(engine: Engine, *, older_than_seconds: float, instance_name: str) -> list[int]:
    """Pending entries this instance should take: its own, and those of instances no longer running
    (store.locks.Presence). A live instance's entries wait in its own queue: taking them too would
    make both prepare them, and their attempts counted twice would send them one at a time."""
    with reading(engine) as session:
        before = utcnow() - timedelta(seconds=older_than_seconds)
        pending = journal.pending_ids(session=session, received_before=before)
        others = {by for _, by in pending if by != instance_name}
        alive = live_instances(session.connection(), others) if others else set()
    return [journal_id for journal_id, by in pending if by not in alive]


def auto_close(engine: Engine, *, settings: Settings, replies: Replies) -> int:
    """Close cases answered and idle for `auto_close_days`, telling the customer; returns how many."""
    idle_before = utcnow() - timedelta(days=settings.auto_close_days)
    closed = 0
    with transaction(engine) as session:
        statement = (
            select(Case)
            .where(Case.status == CaseStatus.ANSWERED, col(Case.updated_at) < idle_before)
            .order_by(col(Case.id))
            .limit(200)
        )
        if session.get_bind().dialect.name == "postgresql":
            statement = statement.with_for_update(skip_locked=True)
        for case in session.exec(statement).all():
            case.status, case.closed_at, case.updated_at = CaseStatus.CLOSED, utcnow(), utcnow()
            session.add(case)
            # It follows our answer, which went unanswered: thread it under that.
            in_reply_to, references = conversation(session=session, case=case, answer_latest=True)
            replies.queue(
                session=session,
                case=case,
                mail=Outgoing(
                    kind="closed",
                    recipient=case.requester,
                    automatic=True,
                    context={"by_staff": False, "idle_days": settings.auto_close_days},
                    in_reply_to=in_reply_to,
                    references=references,
                ),
            )
            closed += 1
    return closed


def build_scheduler(
    *,
    engine: Engine,
    journal_engine: Engine,
    settings: Settings,
    replies: Replies,
    submit: Callable[[list[int]], None],
    wake_outbox: Callable[[], None],
    presence: Presence | None = None,
) -> AsyncIOScheduler:
    scheduler = AsyncIOScheduler(timezone="UTC")

    async def replay() -> None:
        if presence is not None:
            await asyncio.to_thread(presence.renew)
        ids = await asyncio.to_thread(
            pending_journal_ids, journal_engine, older_than_seconds=10, instance_name=settings.instance_name
        )
        if ids:
            log.info("replaying %d pending journal entries", len(ids))
            submit(ids)

    def close_idle_once_per_cluster() -> int:
        with cluster_lock(engine, "job:auto-close") as held:
            return auto_close(engine, settings=settings, replies=replies) if held else 0

    async def close_idle() -> None:
        count = await asyncio.to_thread(close_idle_once_per_cluster)
        if count:
            log.info("auto-closed %d cases", count)
            wake_outbox()

    scheduler.add_job(
        replay, "interval", seconds=settings.journal_replay_seconds, id="journal-replay", coalesce=True, max_instances=1
    )
    scheduler.add_job(
        wake_outbox,
        "interval",
        seconds=max(5.0, settings.outbox_poll_seconds * 5),
        id="outbox-wake",
        coalesce=True,
        max_instances=1,
    )
    scheduler.add_job(close_idle, "interval", minutes=15, id="auto-close", coalesce=True, max_instances=1)

    def purge_once_per_cluster() -> None:
        with cluster_lock(engine, "job:purge") as held:
            if held:
                report = purge(
                    engine=engine,
                    journal_engine=journal_engine,
                    journal_days=settings.journal_retention_days,
                    outbox_days=settings.outbox_retention_days,
                )
                if report.journal_entries or report.outbox_rows:
                    log.info("purged %d journal entries, %d outbox rows", report.journal_entries, report.outbox_rows)

    async def purge_expired() -> None:
        await asyncio.to_thread(purge_once_per_cluster)

    scheduler.add_job(
        purge_expired, "interval", hours=settings.purge_interval_hours, id="purge", coalesce=True, max_instances=1
    )
    return scheduler
