"""Wiring: settings -> engine -> pipeline, outbox, listeners, scheduler, in one event loop.

`Components` is everything that works on mail without listening to the network (the CLI's
`ingest` and `quarantine retry` use it as they are); `Gateway` adds the SMTP and HTTP listeners,
the IMAP pollers and the scheduler for `gateway serve`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, text

from gateway.addresses import ReplyAddresses
from gateway.intake import Intake
from gateway.outbound.relay import relay_for
from gateway.outbound.replies import Replies
from gateway.outbound.templates import MailTemplates
from gateway.outbound.worker import OutboxWorker
from gateway.pipeline import Pipeline
from gateway.runner import PipelineRunner
from gateway.settings import Settings
from store import db
from store.blobs import BlobStore, make_blob_store
from store.locks import Presence
from store.secrets import get_or_create_secret, get_or_set_value

if TYPE_CHECKING:
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    from gateway.http import HttpDeps, HttpServer
    from gateway.imap.poller import MailboxPoller
    from gateway.ops.figures import MailboxView

log = logging.getLogger(__name__)

TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "templates"


@dataclass
class Components:
    settings: Settings
    engine: Engine
    journal_engine: Engine  # the same engine on PostgreSQL; see store.db.journal_engine_for
    blobs: BlobStore
    addresses: ReplyAddresses
    replies: Replies
    pipeline: Pipeline
    panel_secret: str

    @classmethod
    def build(cls, settings: Settings, *, migrate: bool | None = None) -> Components:
        engine = db.make_engine(settings.database_url)
        journal_engine = db.journal_engine_for(engine, settings.data_dir)
        if settings.auto_migrate if migrate is None else migrate:
            db.upgrade(engine)
            if journal_engine is not engine:
                db.upgrade(journal_engine)
        if journal_engine is not engine:
            _check_journal_pairing(engine, journal_engine, settings)
        with db.transaction(engine) as session:
            signing_secret = settings.signing_secret or get_or_create_secret(session=session, key="signing_secret")
            panel_secret = settings.panel_secret or get_or_create_secret(session=session, key="panel_secret")
        addresses = ReplyAddresses(
            support_address=settings.support_address,
            secret=signing_secret,
            staff_queue_address=settings.staff_queue_address,
            staff_token_days=settings.staff_token_days,
        )
        templates = MailTemplates(
            builtin_dir=TEMPLATES_DIR,
            override_dir=settings.template_dir,
            default_language=settings.default_language,
        )
        replies = Replies(settings=settings, templates=templates, addresses=addresses)
        blobs = make_blob_store(settings.blob_store, settings.data_dir)
        pipeline = Pipeline(
            engine=engine,
            journal_engine=journal_engine,
            settings=settings,
            blobs=blobs,
            replies=replies,
            addresses=addresses,
        )
        return cls(settings, engine, journal_engine, blobs, addresses, replies, pipeline, panel_secret)

    def dispose(self) -> None:
        self.pipeline.close()  # stops the parse pool's child processes
        self.engine.dispose()
        self.journal_engine.dispose()


class JournalMismatch(RuntimeError):
    """The SQLite database was used with another journal (another data directory)."""


def _check_journal_pairing(engine: Engine, journal_engine: Engine, settings: Settings) -> None:
    """With SQLite the journal is a file in the data directory and processed entries are known by
    journal id alone, so a database paired with another journal would take new entries for old
    ones and mark them done unstored. Each journal gets an identity; the database keeps the first
    one it met and refuses any other (a second instance with its own data directory, a data
    directory replaced under an existing database). Several instances need PostgreSQL."""
    with db.transaction(journal_engine) as session:
        identity = get_or_create_secret(session=session, key="journal_identity")
    with db.transaction(engine) as session:
        paired = get_or_set_value(session=session, key="sqlite_journal_identity", value=identity)
    if paired != identity:
        raise JournalMismatch(
            f"the database {settings.database_url} belongs to another journal than "
            f"{settings.data_dir / 'journal.db'}: with SQLite, one gateway uses one database and one data "
            "directory (several instances need PostgreSQL). If the data directory was replaced on purpose "
            "and its journal is gone, delete the key_value row 'sqlite_journal_identity' to pair them anew."
        )


class Gateway:
    """`gateway serve`: everything in one process and one event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.components: Components | None = None
        self.smtp_server: asyncio.Server | None = None
        self.http_server: HttpServer | None = None
        self.pollers: list[MailboxPoller] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._scheduler: AsyncIOScheduler | None = None
        self.runner: PipelineRunner | None = None
        self.outbox: OutboxWorker | None = None
        self.intake: Intake | None = None
        self._presence: Presence | None = None

    async def start(self) -> None:
        # Imported here, not at the top: the CLI's other commands use Components and should not
        # pay for importing uvicorn, FastAPI and aioimaplib (about half a second).
        from gateway.http import start_http_server
        from gateway.jobs import build_scheduler, pending_journal_ids
        from gateway.smtp import start_smtp_server

        settings = self.settings
        components = await asyncio.to_thread(Components.build, settings)
        self.components = components
        # Held while this process runs: other instances leave what this one acknowledged to it.
        self._presence = Presence(components.journal_engine, settings.instance_name)
        await asyncio.to_thread(self._presence.start)
        relay = relay_for(settings)
        self.outbox = OutboxWorker(engine=components.engine, settings=settings, relay=relay, replies=components.replies)
        self.runner = PipelineRunner(
            components.pipeline,
            on_done=self.outbox.wake,
            max_lag=settings.pipeline_max_lag_seconds,
            batch_size=settings.pipeline_batch_max_entries,
        )
        self.intake = Intake(
            components.journal_engine, instance_name=settings.instance_name, on_journaled=self.runner.submit
        )
        self.runner.arriving = lambda: self.intake is not None and self.intake.busy
        self._spawn(self.runner.run(), "pipeline")
        self._spawn(self.outbox.run(), "outbox")
        # Whatever was acknowledged before a crash and not processed yet goes first.
        self.runner.submit(
            await asyncio.to_thread(
                pending_journal_ids,
                components.journal_engine,
                older_than_seconds=0,
                instance_name=settings.instance_name,
            )
        )
        self.pollers = self._build_pollers()
        for poller in self.pollers:
            self._spawn(poller.run(), f"imap-{poller.mailbox.name}")
        self.smtp_server = await start_smtp_server(
            settings=settings, intake=self.intake, addresses=components.addresses
        )
        self.http_server = await start_http_server(
            self._http_deps(components, self.intake), host=settings.http_host, port=settings.http_port
        )
        # Port 0 in the settings means any free port: from here on they name the ports actually bound.
        settings.smtp_port, settings.http_port = self.smtp_port, self.http_port
        self._scheduler = build_scheduler(
            engine=components.engine,
            journal_engine=components.journal_engine,
            settings=settings,
            replies=components.replies,
            submit=self.runner.submit,
            wake_outbox=self.outbox.wake,
            presence=self._presence,
        )
        self._scheduler.start()
        log.info(
            "gateway ready: SMTP %s:%s, HTTP %s:%s, database %s",
            settings.smtp_host,
            settings.smtp_port,
            settings.http_host,
            settings.http_port,
            components.engine.url.render_as_string(hide_password=True),
        )
        if settings.ports_file is not None:
            # Written aside and renamed, so a reader never sees half a file.
            partial = settings.ports_file.with_name(settings.ports_file.name + ".partial")
            partial.write_text(json.dumps({"smtp": self.smtp_port, "http": self.http_port}))
            partial.replace(settings.ports_file)

    @property
    def smtp_port(self) -> int:
        """The SMTP port bound (the settings may ask for 0, any free port)."""
        assert self.smtp_server is not None and self.smtp_server.sockets
        return int(self.smtp_server.sockets[0].getsockname()[1])

    @property
    def http_port(self) -> int:
        """The HTTP port bound (the settings may ask for 0, any free port)."""
        assert self.http_server is not None
        return self.http_server.port

    def _http_deps(self, components: Components, intake: Intake) -> HttpDeps:
        """Everything the HTTP routes work with, built once the engines and the intake exist."""
        from gateway.http import HttpDeps
        from gateway.ops.figures import OpsDeps
        from gateway.panel.deps import PanelDeps

        panel = PanelDeps(
            settings=self.settings,
            engine=components.engine,
            journal_engine=components.journal_engine,
            blobs=components.blobs,
            intake=intake,
            panel_secret=components.panel_secret,
        )
        ops = OpsDeps(
            settings=self.settings,
            engine=components.engine,
            journal_engine=components.journal_engine,
            panel_secret=components.panel_secret,
            mailboxes=self.mailbox_views,
        )
        return HttpDeps(panel=panel, ops=ops, health=self.health)

    def mailbox_views(self) -> list[MailboxView]:
        """Each IMAP mailbox of this instance as /status and /metrics show it."""
        from gateway.ops.figures import mailbox_view

        return [mailbox_view(poller.state) for poller in self.pollers]

    def _build_pollers(self) -> list[MailboxPoller]:
        if not self.settings.imap_mailboxes:
            return []
        from gateway.imap.poller import MailboxPoller

        assert self.components is not None and self.intake is not None
        return [
            MailboxPoller(mailbox, engine=self.components.engine, intake=self.intake)
            for mailbox in self.settings.imap_mailboxes
        ]

    def _spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks.append(asyncio.create_task(coroutine, name=name))

    def database_ready(self) -> bool:
        if self.components is None:
            return False
        try:
            with self.components.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    def health(self) -> tuple[bool, dict[str, Any]]:
        listening = self.smtp_server is not None and self.smtp_server.is_serving()
        database = self.database_ready()
        body = {
            "status": "ok" if listening and database else "unavailable",
            "database": database,
            "smtp": listening,
            "instance": self.settings.instance_name,
            "pipeline_backlog": self.runner.backlog if self.runner else None,
            # Seconds the oldest acknowledged entry not processed yet has waited, and the most seen.
            "pipeline_lag_seconds": round(self.runner.lag(), 3) if self.runner else None,
            "pipeline_max_lag_seconds": round(self.runner.max_lag_seen, 3) if self.runner else None,
            "imap": {poller.mailbox.name: poller.status for poller in self.pollers},
            # A mailbox that cannot log in (a revoked OAuth2 token, a changed password) is named
            # here but does not make the gateway unready: SMTP, the panel and the others still work.
            "imap_failing": sorted(view.name for view in self.mailbox_views() if view.failing),
        }
        return listening and database, body

    async def serve_forever(self) -> None:
        """Run until the HTTP server is told to exit (SIGINT/SIGTERM), then stop everything."""
        assert self.http_server is not None
        try:
            await self.http_server.serve_task
        finally:
            await self.stop()

    async def stop(self) -> None:
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        if self.smtp_server is not None:
            self.smtp_server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.smtp_server.wait_closed(), 5)
        if self.http_server is not None:
            await self.http_server.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._presence is not None:
            self._presence.close()
        if self.components is not None:
            self.components.dispose()
            log.info("gateway stopped")
