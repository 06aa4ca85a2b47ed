"""Figures about the shared state (journal, outbox, cases), read from the database when asked.

Counters in gateway.metrics say what this instance did; these say where the whole deployment
stands, so every instance reports the same values for them. `OpsDeps` is what the operators'
routes are handed by the wiring.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from gateway.settings import Settings
from store import operations
from store.db import reading
from store.models import utcnow
from store.operations import JournalFigures, OutboxFigures

CHART_HOURS = 24


@dataclass(frozen=True)
class MailboxView:
    """One IMAP mailbox as an operator sees it; read from the poller's state defensively."""

    name: str
    phase: str  # idle | polling | waiting | error | standby | ...
    connected: bool | None
    last_poll_at: datetime | None
    last_error: str | None

    @property
    def failing(self) -> bool:
        return self.phase == "error" or bool(self.last_error)


@dataclass(frozen=True)
class OpsDeps:
    settings: Settings
    engine: Engine
    journal_engine: Engine
    panel_secret: str  # the panel's system JWT opens /status
    mailboxes: Callable[[], Sequence[MailboxView]] = field(default=lambda: ())


@dataclass(frozen=True)
class Snapshot:
    taken_at: datetime
    journal: JournalFigures
    outbox: OutboxFigures
    spam_cases: int

    def age_seconds(self, moment: datetime | None) -> float:
        return max(0.0, (self.taken_at - moment).total_seconds()) if moment is not None else 0.0


@dataclass(frozen=True)
class HourlyTraffic:
    hours: list[datetime]  # the start of each hour, oldest first; the last one is the current hour
    accepted: list[int]
    processed: list[int]
    sent: list[int]


def snapshot(deps: OpsDeps) -> Snapshot:
    now = utcnow()
    with reading(deps.journal_engine) as session:
        journal = operations.journal_figures(session=session)
    with reading(deps.engine) as session:
        outbox = operations.outbox_figures(session=session, now=now)
        spam = operations.spam_cases(session=session)
    return Snapshot(taken_at=now, journal=journal, outbox=outbox, spam_cases=spam)


def hourly_traffic(deps: OpsDeps, *, hours: int = CHART_HOURS) -> HourlyTraffic:
    current = utcnow().replace(minute=0, second=0, microsecond=0)
    starts = [current - timedelta(hours=hours - 1 - index) for index in range(hours)]
    with reading(deps.journal_engine) as session:
        accepted = operations.accepted_per_hour(session=session, since=starts[0])
        processed = operations.processed_per_hour(session=session, since=starts[0])
    with reading(deps.engine) as session:
        sent = operations.sent_per_hour(session=session, since=starts[0])
    return HourlyTraffic(
        hours=starts,
        accepted=_series(accepted, starts),
        processed=_series(processed, starts),
        sent=_series(sent, starts),
    )


def _series(counts: Mapping[datetime, int], starts: list[datetime]) -> list[int]:
    return [counts.get(start, 0) for start in starts]


def mailbox_view(state: Any) -> MailboxView:
    """A poller's state (gateway.imap MailboxState, or an older dict-shaped status) as a view."""
    if isinstance(state, Mapping):
        get = state.get
    else:

        def get(key: str, default: Any = None) -> Any:
            return getattr(state, key, default)

    last_poll = get("last_poll_at")
    return MailboxView(
        name=str(get("name", "?")),
        phase=str(get("phase") or get("state") or "unknown"),
        connected=get("connected"),
        last_poll_at=last_poll if isinstance(last_poll, datetime) else None,
        last_error=get("last_error"),
    )
