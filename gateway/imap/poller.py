"""The IMAP mailbox poller: new mail in one folder -> `intake.accept`, then (only then) act on the server.

One `MailboxPoller` per configured mailbox (SPEC §9). The database's ImapState (UIDVALIDITY, last
journaled UID) is the source of truth for what is new, not \\Seen. Each message is fetched alone, in
UID order, journaled, then flagged/moved/deleted, then its UID recorded; a crash anywhere in between
means a re-fetch, which the pipeline's dedupe makes harmless. IDLE is used where offered, polling
otherwise; a re-sync every `poll_seconds` is the safety net either way. Any failure drops the
connection and reconnects with exponential backoff; nothing here ends the process, and one
mailbox's trouble (a refused password, a revoked OAuth2 grant) never touches the others.

With several instances on PostgreSQL, one poller per mailbox works at a time: it holds an advisory
lock on a database connection of its own for as long as it polls; the others stand by and try
again every few seconds, so when the holder dies (and its connection with it) one takes over.

The wire (TLS, SASL, literals, aioimaplib's quirks) is `client.py`'s business; tokens are `oauth.py`'s.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine

from gateway.imap.client import COMMAND_TIMEOUT_SECONDS, ConnectionLost, ImapClient, ImapError, MissingFolder
from gateway.imap.oauth import OAuthTokens
from gateway.intake import Intake
from gateway.metrics import IMAP_ERRORS, IMAP_POLLS
from gateway.settings import MailboxSettings
from store import imap_state
from store.db import transaction
from store.locks import try_lock, unlock
from store.models import utcnow

log = logging.getLogger(__name__)

FIRST_BACKOFF_SECONDS = 1.0
STANDBY_SECONDS = 3.0  # how often a standing-by instance tries to take a mailbox over


@dataclass(frozen=True)
class MailboxState:
    """What an operator sees of one mailbox (/healthz, /status): a snapshot, safe to keep."""

    name: str
    # starting | standby | connecting | polling | idle | waiting | error | stopped
    phase: str
    connected: bool  # logged in right now
    last_poll_at: datetime | None  # the end of the last complete sync of the folder
    last_error: str | None  # None once a connection has worked again


class MailboxPoller:
    def __init__(
        self,
        mailbox: MailboxSettings,
        *,
        engine: Engine,
        intake: Intake,
        reconnect_max_seconds: float = 60,
        command_timeout: float = COMMAND_TIMEOUT_SECONDS,
    ) -> None:
        self._mailbox = mailbox
        self._engine = engine
        self._intake = intake
        self._reconnect_max = reconnect_max_seconds
        self._timeout = command_timeout
        self._tokens = OAuthTokens(mailbox, engine=engine) if mailbox.auth != "password" else None
        self._phase = "starting"
        self._connected = False
        self._last_poll_at: datetime | None = None
        self._last_error: str | None = None
        self._uidvalidity = 0
        self._last_uid = 0
        self._synced_once = False  # the current connection has completed a sync

    @property
    def mailbox(self) -> MailboxSettings:
        return self._mailbox

    @property
    def name(self) -> str:
        return self._mailbox.name

    @property
    def state(self) -> MailboxState:
        return MailboxState(
            name=self.name,
            phase=self._phase,
            connected=self._connected,
            last_poll_at=self._last_poll_at,
            last_error=self._last_error,
        )

    @property
    def status(self) -> dict[str, Any]:
        """What /healthz shows for this mailbox (JSON-ready)."""
        return {
            "state": self._phase,
            "connected": self._connected,
            "last_poll_at": self._last_poll_at.isoformat() if self._last_poll_at else None,
            "last_error": self._last_error,
            "last_uid": self._last_uid,
            "uidvalidity": self._uidvalidity,
        }

    # --- the outer loop: never ends on its own, never raises except on cancellation ------------------

    async def run(self) -> None:
        try:
            while True:
                lease = await asyncio.to_thread(self._take_lease)
                if lease is None:
                    self._phase = "standby"  # another instance polls this mailbox
                    await asyncio.sleep(STANDBY_SECONDS)
                    continue
                try:
                    await self._poll_forever()
                finally:
                    await asyncio.to_thread(self._return_lease, lease)
        finally:
            self._phase = "stopped"
            self._connected = False

    def _lock_name(self) -> str:
        return f"imap:{self.name}"

    def _take_lease(self) -> Connection | None:
        """A connection holding this mailbox's cluster lock, or None while someone else has it."""
        try:
            connection = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        except Exception as error:
            self._record_error(error)
            return None
        if try_lock(connection, self._lock_name()):
            return connection
        connection.close()
        return None

    def _return_lease(self, connection: Connection) -> None:
        try:
            unlock(connection, self._lock_name())
        except Exception:
            pass  # a dead connection has released the lock already
        finally:
            connection.close()

    async def _poll_forever(self) -> None:
        backoff = FIRST_BACKOFF_SECONDS
        while True:
            try:
                await self._load_state()
                await self._session()
                continue  # the session ended on purpose (its token is due for renewal): at once
            except asyncio.CancelledError:
                raise
            except Exception as error:  # whatever went wrong, the answer is: reconnect later
                self._record_error(error)
            finally:
                self._connected = False
            if self._synced_once:
                backoff = FIRST_BACKOFF_SECONDS  # that session worked: a fresh failure
            log.info("mailbox %s: reconnecting in %.0f s", self.name, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._reconnect_max)

    def _record_error(self, error: BaseException) -> None:
        text = f"{type(error).__name__}: {error}".rstrip(": ")
        self._phase = "error"
        self._last_error = text
        IMAP_ERRORS.labels(mailbox=self.name).inc()
        log.warning("mailbox %s: %s", self.name, text)

    def _record_problem(self, text: str) -> None:
        """A message-level problem: the mailbox keeps working, but an operator should see it."""
        self._last_error = text
        IMAP_ERRORS.labels(mailbox=self.name).inc()
        log.error("mailbox %s: %s", self.name, text)

    async def _load_state(self) -> None:
        state = await asyncio.to_thread(self._read_state)
        if state is not None:
            self._uidvalidity, self._last_uid = state

    def _read_state(self) -> tuple[int, int] | None:
        with transaction(self._engine) as session:
            state = imap_state.get_state(session=session, mailbox=self.name)
            return None if state is None else (state.uidvalidity, state.last_uid)

    async def _save_state(self, uidvalidity: int, last_uid: int) -> None:
        def write() -> None:
            with transaction(self._engine) as session:
                imap_state.save_state(session=session, mailbox=self.name, uidvalidity=uidvalidity, last_uid=last_uid)

        await asyncio.to_thread(write)
        self._uidvalidity, self._last_uid = uidvalidity, last_uid

    # --- one connection ---------------------------------------------------------------------------

    async def _session(self) -> None:
        """Connect, log in, sync and wait until the connection fails (raises) or the OAuth2 access
        token is due for renewal (returns: the caller reconnects at once with a fresh one)."""
        self._synced_once = False
        self._phase = "connecting"
        client = ImapClient(self._mailbox, timeout=self._timeout)
        await client.open()
        try:
            await self._authenticate(client)
            self._connected = True
            self._last_error = None  # connected again: earlier trouble is over
            await self._prepare_target_folder(client)
            use_idle = self._mailbox.idle and client.has_capability("IDLE")
            while True:
                await self._sync(client)
                self._synced_once = True
                wait = self._mailbox.poll_seconds
                renew_in = self._tokens.seconds_until_refresh() if self._tokens else None
                if renew_in is not None:
                    if renew_in <= 0:
                        return
                    wait = min(wait, renew_in)
                if use_idle:
                    self._phase = "idle"
                    await client.idle(wait)
                else:
                    self._phase = "waiting"
                    await client.wait(wait)
        finally:
            await client.close()

    async def _authenticate(self, client: ImapClient) -> None:
        if self._tokens is None:
            password = await asyncio.to_thread(self._mailbox.resolved_password)
            await client.login(password)
            return
        token = await self._tokens.access_token()
        try:
            await client.authenticate_bearer(self._mailbox.auth.upper(), token)
        except ImapError as error:
            if not isinstance(error, ConnectionLost):
                self._tokens.invalidate()  # revoked or expired early: refresh before the next try
            raise

    async def _prepare_target_folder(self, client: ImapClient) -> None:
        """For `move:FOLDER`, create the folder if it does not exist yet (RFC 3501 CREATE)."""
        folder = self._move_target()
        if folder is None:
            return
        try:
            if await client.create(folder):
                log.info("mailbox %s: created folder %s for after_fetch", self.name, folder)
        except ConnectionLost:
            raise
        except ImapError as error:
            # Not fatal: the folder may exist under rules CREATE does not know; the move will tell.
            self._record_problem(f"folder {folder} could not be created: {error}")

    def _move_target(self) -> str | None:
        action = self._mailbox.after_fetch
        return action.removeprefix("move:") if action.startswith("move:") else None

    # --- the work -----------------------------------------------------------------------------------

    async def _sync(self, client: ImapClient) -> None:
        """Journal every message with a UID above the stored one, one at a time, in UID order."""
        self._phase = "polling"
        IMAP_POLLS.labels(mailbox=self.name).inc()
        # Re-SELECT every round: it costs one round trip and re-reads UIDVALIDITY each time.
        uidvalidity = await client.select(self._mailbox.folder)
        if uidvalidity != self._uidvalidity:
            if self._uidvalidity:
                log.warning(
                    "mailbox %s: UIDVALIDITY changed %d -> %d, fetching the folder again",
                    self.name,
                    self._uidvalidity,
                    uidvalidity,
                )
            await self._save_state(uidvalidity, 0)
        for uid in await client.uids_above(self._last_uid):
            await self._ingest(client, uid)
        self._last_poll_at = utcnow()

    async def _ingest(self, client: ImapClient, uid: int) -> None:
        try:
            raw = await client.fetch(uid)
        except ConnectionLost:
            raise
        except ImapError as error:
            # One unreadable message must not block the mailbox. It stays on the server untouched.
            self._record_problem(f"UID {uid} could not be fetched, skipped: {error}")
            return
        meta = {"mailbox": self.name, "uid": uid, "uidvalidity": self._uidvalidity}
        # Raises JournalUnavailable: then nothing is done on the server and run() backs off.
        await self._intake.accept(raw, source="imap", meta=meta)
        await self._after_fetch(client, uid)
        await self._save_state(self._uidvalidity, uid)

    async def _after_fetch(self, client: ImapClient, uid: int) -> None:
        action = self._mailbox.after_fetch
        try:
            folder = self._move_target()
            if action == "flag":
                await client.add_flag(uid, "\\Seen")
            elif action == "delete":
                await client.delete(uid)
            elif folder is not None:
                await self._move(client, uid, folder)
        except ConnectionLost:
            raise
        except ImapError as error:
            # The message is journaled: recording its UID stops an endless re-fetch; the message
            # just stays where it is on the server, which an operator can see in the log.
            self._record_problem(f"{action} UID {uid} failed: {error}")

    async def _move(self, client: ImapClient, uid: int, folder: str) -> None:
        try:
            await client.move(uid, folder)
        except MissingFolder:
            # Deleted (or renamed) since start-up: create it again and retry once.
            await client.create(folder)
            log.info("mailbox %s: re-created folder %s on TRYCREATE", self.name, folder)
            await client.move(uid, folder)
