"""The IMAP mailbox poller: new mail in one folder -> `intake.accept`, then (only then) act on the server.

One `MailboxPoller` per configured mailbox (SPEC §9). The database's ImapState (UIDVALIDITY, last
journaled UID) is the source of truth for what is new, not \\Seen. Each message is fetched alone, in
UID order, journaled, then flagged/moved/deleted, then its UID recorded; a crash anywhere in between
means a re-fetch, which the pipeline's dedupe makes harmless. IDLE is used where offered, polling
otherwise; a re-sync every `poll_seconds` is the safety net either way. Any failure drops the
connection and reconnects with exponential backoff; nothing here ends the process.

With several instances on PostgreSQL, one poller per mailbox works at a time: it holds an advisory
lock on a database connection of its own for as long as it polls; the others stand by and try
again every few seconds, so when the holder dies (and its connection with it) one takes over.

aioimaplib 2.0.3 notes that shape this module:
- a pending command never completes when the connection drops (it only times out), so every call
  is raced against the connection-lost callback (`_call`);
- IMAP4_SSL takes no conn_lost_cb, so TLS uses IMAP4(ssl_context=...); STARTTLS is not implemented
  by the library and is done here with loop.start_tls;
- FETCH literals arrive as a separate item in `response.lines`, right after the line ending `{n}`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import Awaitable
from typing import Any, TypeVar

import aioimaplib
from sqlalchemy import Connection, Engine

from gateway.intake import Intake
from gateway.settings import MailboxSettings
from store import imap_state
from store.db import transaction
from store.locks import try_lock, unlock

log = logging.getLogger(__name__)

T = TypeVar("T")

# Servers drop idle clients after 30 minutes (RFC 3501 §5.4); re-issue IDLE before that.
MAX_IDLE_SECONDS = 29 * 60.0
COMMAND_TIMEOUT_SECONDS = 30.0
FIRST_BACKOFF_SECONDS = 1.0
STANDBY_SECONDS = 3.0  # how often a standing-by instance tries to take a mailbox over

_UIDVALIDITY_RE = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_LITERAL_RE = re.compile(rb"BODY\[\] \{(\d+)\}$")
_UID_RE = re.compile(rb"UID (\d+)")
_PUSH_RE = re.compile(rb"^\d+ (EXISTS|RECENT)\b")


class ImapError(Exception):
    """The server refused a command or answered something we cannot use."""


class ConnectionLost(ImapError):
    """The server closed the connection (shutdown, restart, idle timeout, network)."""


class MailboxPoller:
    def __init__(
        self,
        mailbox: MailboxSettings,
        *,
        engine: Engine,
        intake: Intake,
        reconnect_max_seconds: float = 60,
        ssl_context: ssl.SSLContext | None = None,
        use_idle: bool = True,
        command_timeout: float = COMMAND_TIMEOUT_SECONDS,
    ) -> None:
        self._mailbox = mailbox
        self._engine = engine
        self._intake = intake
        self._reconnect_max = reconnect_max_seconds
        # None: the system's trust store (ssl.create_default_context) for tls/starttls.
        self._ssl_context = ssl_context
        # False forces polling even where the server offers IDLE (tests, servers with broken IDLE).
        self._use_idle = use_idle
        self._timeout = command_timeout
        self._state = "starting"
        self._last_error: str | None = None
        self._uidvalidity = 0
        self._last_uid = 0
        self._lost: asyncio.Future[Exception | None] | None = None
        self._ready = False  # the current connection has completed a sync

    @property
    def mailbox(self) -> MailboxSettings:
        return self._mailbox

    @property
    def name(self) -> str:
        return self._mailbox.name

    @property
    def status(self) -> dict[str, Any]:
        """What /healthz shows for this mailbox."""
        return {
            "state": self._state,
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
                    self._state = "standby"  # another instance polls this mailbox
                    await asyncio.sleep(STANDBY_SECONDS)
                    continue
                try:
                    await self._poll_forever()
                finally:
                    await asyncio.to_thread(self._return_lease, lease)
        finally:
            self._state = "stopped"

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
            self._ready = False
            try:
                await self._load_state()
                await self._session()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # whatever went wrong, the answer is: reconnect later
                self._record_error(error)
            if self._ready:
                backoff = FIRST_BACKOFF_SECONDS  # that session worked: a fresh failure
            log.info("mailbox %s: reconnecting in %.0f s", self.name, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._reconnect_max)

    def _record_error(self, error: BaseException) -> None:
        text = f"{type(error).__name__}: {error}".rstrip(": ")
        self._state = "error"
        self._last_error = text
        log.warning("mailbox %s: %s", self.name, text)

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
        self._state = "connecting"
        client = await self._connect()
        try:
            await self._login(client)
            self._last_error = None  # connected again: earlier trouble is over
            use_idle = self._use_idle and client.has_capability("IDLE")
            while True:
                await self._sync(client)
                self._ready = True
                if use_idle:
                    await self._idle(client)
                else:
                    self._state = "waiting"
                    await self._call(asyncio.sleep(self._mailbox.poll_seconds), bounded=False)
        finally:
            await self._close(client)

    async def _connect(self) -> aioimaplib.IMAP4:
        loop = asyncio.get_running_loop()
        lost: asyncio.Future[Exception | None] = loop.create_future()
        self._lost = lost

        def on_lost(error: Exception | None) -> None:
            if not lost.done():
                lost.set_result(error)

        security = self._mailbox.security
        context = self._tls_context() if security == "tls" else None
        client = aioimaplib.IMAP4(
            host=self._mailbox.host,
            port=self._mailbox.port,
            timeout=self._timeout,
            conn_lost_cb=on_lost,
            ssl_context=context,
        )
        try:
            await self._call(client.wait_hello_from_server())
            if security == "starttls":
                await self._starttls(client)
        except BaseException:
            await self._close(client)  # e.g. a server that accepts but never greets
            raise
        return client

    def _tls_context(self) -> ssl.SSLContext:
        return self._ssl_context or ssl.create_default_context()

    async def _starttls(self, client: aioimaplib.IMAP4) -> None:
        protocol = client.protocol
        if "STARTTLS" not in protocol.capabilities:
            raise ImapError("server does not offer STARTTLS")
        command = aioimaplib.Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)
        _expect_ok(await self._call(protocol.execute(command)), "STARTTLS")
        transport = await self._call(
            protocol.loop.start_tls(
                protocol.transport, protocol, self._tls_context(), server_hostname=self._mailbox.host
            )
        )
        protocol.transport = transport
        # Capabilities seen before TLS must be forgotten (RFC 3501 §6.2.1).
        await self._call(protocol.capability())

    async def _login(self, client: aioimaplib.IMAP4) -> None:
        mailbox = self._mailbox
        password = await asyncio.to_thread(mailbox.resolved_password)
        response = await self._call(client.login(aioimaplib.quoted(mailbox.user), password))
        _expect_ok(response, "LOGIN")
        # The LOGIN reply's [CAPABILITY ...] is parsed sloppily by aioimaplib; ask again.
        await self._call(client.protocol.capability())

    async def _close(self, client: aioimaplib.IMAP4) -> None:
        try:
            if self._lost is not None and not self._lost.done():
                await asyncio.wait_for(client.logout(), timeout=2)
        except Exception:  # the server may already be gone; closing is best effort
            pass
        finally:
            transport = client.protocol.transport
            if transport is not None:
                transport.close()
            client._client_task.cancel()  # still connecting, if the greeting never came
            for task in list(client.tasks) + list(client.protocol.tasks):
                task.cancel()

    async def _call(self, awaitable: Awaitable[T], *, bounded: bool = True) -> T:
        """Await an aioimaplib call, but fail at once if the connection drops meanwhile.

        `bounded`: also give up after the command timeout (not for FETCH, whose aioimaplib
        timeout restarts with every chunk so large mail can take its time, nor for waits).
        """
        task = asyncio.ensure_future(asyncio.wait_for(awaitable, self._timeout) if bounded else awaitable)
        lost = self._lost
        waiting: set[asyncio.Future[Any]] = {task} if lost is None else {task, lost}
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if task.done():
            return task.result()
        task.cancel()
        assert lost is not None
        raise ConnectionLost(f"connection closed by the server ({lost.result() or 'EOF'})")

    # --- the work -----------------------------------------------------------------------------------

    async def _sync(self, client: aioimaplib.IMAP4) -> None:
        """Journal every message with a UID above the stored one, one at a time, in UID order."""
        self._state = "polling"
        # Re-SELECT every round: it costs one round trip and re-reads UIDVALIDITY each time.
        response = await self._call(client.select(aioimaplib.quoted(self._mailbox.folder)))
        _expect_ok(response, "SELECT")
        uidvalidity = _uidvalidity(response)
        if uidvalidity != self._uidvalidity:
            if self._uidvalidity:
                log.warning(
                    "mailbox %s: UIDVALIDITY changed %d -> %d, fetching the folder again",
                    self.name,
                    self._uidvalidity,
                    uidvalidity,
                )
            await self._save_state(uidvalidity, 0)
        for uid in await self._new_uids(client):
            await self._ingest(client, uid)

    async def _new_uids(self, client: aioimaplib.IMAP4) -> list[int]:
        response = await self._call(client.uid_search("UID", f"{self._last_uid + 1}:*", charset=None))
        _expect_ok(response, "UID SEARCH")
        uids: set[int] = set()
        for line in response.lines[:-1]:  # the last line is the tagged status text
            text = bytes(line).removeprefix(b"SEARCH").strip()
            if re.fullmatch(rb"[\d ]*", text):
                uids.update(int(part) for part in text.split())
        # "n:*" always matches the highest UID, even when it is below n.
        return sorted(uid for uid in uids if uid > self._last_uid)

    async def _ingest(self, client: aioimaplib.IMAP4, uid: int) -> None:
        try:
            raw = await self._fetch(client, uid)
        except ImapError as error:
            if isinstance(error, ConnectionLost):
                raise
            # One unreadable message must not block the mailbox. It stays on the server untouched.
            log.error("mailbox %s: UID %d could not be fetched, skipped: %s", self.name, uid, error)
            self._last_error = f"UID {uid}: {error}"
            return
        meta = {"mailbox": self.name, "uid": uid, "uidvalidity": self._uidvalidity}
        # Raises JournalUnavailable: then nothing is done on the server and run() backs off.
        await self._intake.accept(raw, source="imap", meta=meta)
        await self._after_fetch(client, uid)
        await self._save_state(self._uidvalidity, uid)

    async def _fetch(self, client: aioimaplib.IMAP4, uid: int) -> bytes:
        # BODY.PEEK so that fetching alone never sets \Seen; the action decides what happens.
        # No overall timeout: aioimaplib's FETCH timeout is per chunk, so large mail is fine.
        response = await self._call(client.uid("fetch", str(uid), "(UID BODY.PEEK[])"), bounded=False)
        _expect_ok(response, f"UID FETCH {uid}")
        raw = _literal_for(response.lines, uid)
        if raw is None:
            raise ImapError("no such message (expunged meanwhile?)")
        return raw

    async def _after_fetch(self, client: aioimaplib.IMAP4, uid: int) -> None:
        action = self._mailbox.after_fetch
        try:
            if action == "flag":
                await self._store(client, uid, "\\Seen")
            elif action == "delete":
                await self._store(client, uid, "\\Deleted")
                await self._expunge(client, uid)
            else:
                await self._move(client, uid, action.removeprefix("move:"))
        except ImapError as error:
            if isinstance(error, ConnectionLost):
                raise
            # The message is journaled: recording its UID stops an endless re-fetch; the message
            # just stays where it is on the server, which an operator can see in the log.
            log.error("mailbox %s: %s on UID %d failed: %s", self.name, action, uid, error)
            self._last_error = f"{action} UID {uid}: {error}"

    async def _store(self, client: aioimaplib.IMAP4, uid: int, flag: str) -> None:
        response = await self._call(client.uid("store", str(uid), "+FLAGS.SILENT", f"({flag})"))
        _expect_ok(response, "UID STORE")

    async def _expunge(self, client: aioimaplib.IMAP4, uid: int) -> None:
        if client.has_capability("UIDPLUS"):
            response = await self._call(client.uid("expunge", str(uid)))
        else:
            # Without UIDPLUS this also removes other \Deleted mail in the folder; the operator
            # chose "delete" or "move", so deleted mail there is ours to remove.
            response = await self._call(client.expunge())
        _expect_ok(response, "EXPUNGE")

    async def _move(self, client: aioimaplib.IMAP4, uid: int, folder: str) -> None:
        target = aioimaplib.quoted(folder)
        if client.has_capability("MOVE"):
            _expect_ok(await self._call(client.uid("move", str(uid), target)), "UID MOVE")
            return
        _expect_ok(await self._call(client.uid("copy", str(uid), target)), "UID COPY")
        await self._store(client, uid, "\\Deleted")
        await self._expunge(client, uid)

    async def _idle(self, client: aioimaplib.IMAP4) -> None:
        """Wait in IDLE until the server reports new mail or the safety-net interval is over."""
        seconds = min(self._mailbox.poll_seconds, MAX_IDLE_SECONDS)
        queue = client.protocol.idle_queue
        while not queue.empty():  # pushes from an earlier IDLE, already covered by the sync since
            queue.get_nowait()
        idle = await self._call(client.idle_start(timeout=seconds))
        self._state = "idle"
        try:
            await self._wait_for_push(client, seconds)
        finally:
            if self._lost is not None and not self._lost.done():
                client.idle_done()
        _expect_ok(await self._call(idle), "IDLE")

    async def _wait_for_push(self, client: aioimaplib.IMAP4, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (remaining := deadline - loop.time()) > 0:
            try:
                lines = await self._call(client.wait_server_push(timeout=remaining), bounded=False)
            except TimeoutError:
                return
            if lines == aioimaplib.STOP_WAIT_SERVER_PUSH:  # idle_start's own timer
                return
            if any(_PUSH_RE.match(bytes(line)) for line in lines):
                return
            # anything else ("OK Still here", flag changes by other clients): keep waiting


def _expect_ok(response: aioimaplib.Response, what: str) -> None:
    if response.result != "OK":
        detail = b" ".join(bytes(line) for line in response.lines[-1:]).decode(errors="replace")
        raise ImapError(f"{what}: {response.result} {detail}".strip())


def _uidvalidity(response: aioimaplib.Response) -> int:
    for line in response.lines:
        match = _UIDVALIDITY_RE.search(bytes(line))
        if match:
            return int(match.group(1))
    raise ImapError("SELECT did not report UIDVALIDITY")


def _literal_for(lines: list[Any], uid: int) -> bytes | None:
    """The BODY[] literal of `uid` in a FETCH response.

    aioimaplib puts a literal in `lines` as its own item right after the line that announced it
    (`5 FETCH (UID 9 BODY[] {1234}`); other untagged FETCHes (flag changes by other clients) may
    be interleaved, so the UID is checked on the announcing line or the line closing the item.
    """
    for index, line in enumerate(lines[:-1]):
        if not isinstance(line, bytes):
            continue
        match = _LITERAL_RE.search(line)
        if match is None:
            continue
        literal = lines[index + 1]
        if len(literal) != int(match.group(1)):
            continue
        closing = lines[index + 2] if index + 2 < len(lines) else b""
        found = _UID_RE.search(line) or _UID_RE.search(bytes(closing))
        if found and int(found.group(1)) == uid:
            return bytes(literal)
    return None
