"""One IMAP connection, as the poller needs it: aioimaplib 2.0.3 with its quirks handled here.

The poller speaks in folders, UIDs and flags; everything about the wire lives in this module:
TLS and STARTTLS, LOGIN and SASL (XOAUTH2, OAUTHBEARER), where a FETCH literal sits in a response,
what a `NO [TRYCREATE]` means, and racing every call against the connection dropping.

aioimaplib 2.0.3 notes that shape this module:
- a pending command never completes when the connection drops (it only times out), so every call
  is raced against the connection-lost callback (`_call`);
- IMAP4_SSL takes no conn_lost_cb, so TLS uses IMAP4(ssl_context=...); STARTTLS is not implemented
  by the library and is done here with loop.start_tls;
- FETCH literals arrive as a separate item in `response.lines`, right after the line ending `{n}`;
- its `xoauth2()` cannot answer the server's error challenge (the command then hangs until the
  timeout) and there is no OAUTHBEARER, so SASL is sent by `_SaslCommand`, which can.
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aioimaplib

from gateway.settings import MailboxSettings

T = TypeVar("T")

# Servers drop idle clients after 30 minutes (RFC 3501 §5.4); re-issue IDLE before that.
MAX_IDLE_SECONDS = 29 * 60.0
COMMAND_TIMEOUT_SECONDS = 30.0

_UIDVALIDITY_RE = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_LITERAL_RE = re.compile(rb"BODY\[\] \{(\d+)\}$")
_UID_RE = re.compile(rb"UID (\d+)")
_PUSH_RE = re.compile(rb"^\d+ (EXISTS|RECENT)\b")


class ImapError(Exception):
    """The server refused a command or answered something we cannot use."""


class ConnectionLost(ImapError):
    """The server closed the connection (shutdown, restart, idle timeout, network)."""


class AuthenticationFailed(ImapError):
    """LOGIN or AUTHENTICATE was refused: wrong password, or an access token the server rejects."""


class MissingFolder(ImapError):
    """`NO [TRYCREATE]`: the target folder of a COPY/MOVE does not exist (RFC 3501 §6.4.7)."""


def tls_context(mailbox: MailboxSettings) -> ssl.SSLContext:
    """The client TLS context the mailbox's settings ask for.

    `ca_file` trusts a private CA (or a self-signed server certificate) instead of the system's
    store; `tls_verify = false` accepts any certificate, for a server on a trusted network only.
    """
    context = ssl.create_default_context(cafile=str(mailbox.ca_file) if mailbox.ca_file else None)
    if not mailbox.tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def sasl_initial_response(mechanism: str, *, user: str, token: str, host: str, port: int) -> str:
    """The base64 initial client response of XOAUTH2 (Google/Microsoft) or OAUTHBEARER (RFC 7628)."""
    if mechanism == "XOAUTH2":
        text = f"user={user}\x01auth=Bearer {token}\x01\x01"
    else:
        gs2_user = user.replace("=", "=3D").replace(",", "=2C")
        text = f"n,a={gs2_user},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01"
    return base64.b64encode(text.encode()).decode("ascii")


class _SaslCommand(aioimaplib.Command):
    """AUTHENTICATE with an initial response (SASL-IR) that also survives a refusal.

    A server refusing a bearer token first sends an error challenge (`+ <base64 JSON>`) and waits
    for the client's dummy answer before its tagged NO (RFC 7628 §3.2.3; XOAUTH2 does the same).
    aioimaplib hands continuation lines to the pending command's `flush`, which answers here.
    """

    def __init__(self, tag: str, mechanism: str, initial: str, *, loop: Any, send: Callable[[bytes], None]) -> None:
        super().__init__("AUTHENTICATE", tag, mechanism, initial, loop=loop)
        self._send = send
        # OAUTHBEARER's dummy answer is %x01; XOAUTH2's is empty.
        self._dummy = b"AQ==\r\n" if mechanism == "OAUTHBEARER" else b"\r\n"
        self._answered = 0

    def flush(self) -> None:
        # Called after every chunk read while this command is pending, not only after a
        # continuation: answer each continuation line once.
        challenges = sum(1 for line in self.response.lines if bytes(line).startswith(b"+"))
        while self._answered < challenges:
            self._answered += 1
            self._send(self._dummy)


class ImapClient:
    """One connection to the mailbox's server; `open()` it, then call the commands, then `close()`."""

    def __init__(self, mailbox: MailboxSettings, *, timeout: float = COMMAND_TIMEOUT_SECONDS) -> None:
        self._mailbox = mailbox
        self._timeout = timeout
        self._lost: asyncio.Future[Exception | None] | None = None
        self._client: aioimaplib.IMAP4 | None = None

    @property
    def _imap(self) -> aioimaplib.IMAP4:
        if self._client is None:
            raise ConnectionLost("not connected")
        return self._client

    @property
    def connected(self) -> bool:
        return self._client is not None and self._lost is not None and not self._lost.done()

    def has_capability(self, name: str) -> bool:
        return self._imap.has_capability(name)

    # --- connecting and logging in ----------------------------------------------------------------

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        lost: asyncio.Future[Exception | None] = loop.create_future()
        self._lost = lost

        def on_lost(error: Exception | None) -> None:
            if not lost.done():
                lost.set_result(error)

        security = self._mailbox.security
        self._client = aioimaplib.IMAP4(
            host=self._mailbox.host,
            port=self._mailbox.port,
            timeout=self._timeout,
            conn_lost_cb=on_lost,
            ssl_context=tls_context(self._mailbox) if security == "tls" else None,
        )
        try:
            await self._call(self._imap.wait_hello_from_server())
            if security == "starttls":
                await self._starttls()
        except BaseException:
            await self.close()  # e.g. a server that accepts but never greets
            raise

    async def _starttls(self) -> None:
        protocol = self._imap.protocol
        if "STARTTLS" not in protocol.capabilities:
            raise ImapError("server does not offer STARTTLS")
        command = aioimaplib.Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)
        _expect_ok(await self._call(protocol.execute(command)), "STARTTLS")
        transport = await self._call(
            protocol.loop.start_tls(
                protocol.transport, protocol, tls_context(self._mailbox), server_hostname=self._mailbox.host
            )
        )
        protocol.transport = transport
        # Capabilities seen before TLS must be forgotten (RFC 3501 §6.2.1).
        await self._call(protocol.capability())

    async def login(self, password: str) -> None:
        response = await self._call(self._imap.login(aioimaplib.quoted(self._mailbox.user), password))
        _expect_ok(response, "LOGIN", AuthenticationFailed)
        # The LOGIN reply's [CAPABILITY ...] is parsed sloppily by aioimaplib; ask again.
        await self._call(self._imap.protocol.capability())

    async def authenticate_bearer(self, mechanism: str, token: str) -> None:
        """AUTHENTICATE XOAUTH2 / OAUTHBEARER with an OAuth2 access token."""
        protocol = self._imap.protocol
        if f"AUTH={mechanism}" not in protocol.capabilities:
            raise AuthenticationFailed(f"server does not offer AUTH={mechanism}")
        initial = sasl_initial_response(
            mechanism, user=self._mailbox.user, token=token, host=self._mailbox.host, port=self._mailbox.port
        )

        def send(data: bytes) -> None:
            if protocol.transport is not None:
                protocol.transport.write(data)

        command = _SaslCommand(protocol.new_tag(), mechanism, initial, loop=protocol.loop, send=send)
        response = await self._call(protocol.execute(command, scrub=initial))
        _expect_ok(response, f"AUTHENTICATE {mechanism}", AuthenticationFailed)
        protocol.state = aioimaplib.AUTH
        await self._call(protocol.capability())

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
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

    # --- folders and messages ---------------------------------------------------------------------

    async def select(self, folder: str) -> int:
        """SELECT `folder`; returns its UIDVALIDITY."""
        response = await self._call(self._imap.select(aioimaplib.quoted(encode_folder(folder))))
        _expect_ok(response, "SELECT")
        for line in response.lines:
            match = _UIDVALIDITY_RE.search(bytes(line))
            if match:
                return int(match.group(1))
        raise ImapError("SELECT did not report UIDVALIDITY")

    async def create(self, folder: str) -> bool:
        """CREATE `folder`; False if it exists already (not an error: that is what we wanted)."""
        response = await self._call(self._imap.create(aioimaplib.quoted(encode_folder(folder))))
        if response.result != "OK" and b"[ALREADYEXISTS]" in _status_line(response):
            return False
        _expect_ok(response, f"CREATE {folder}")
        return True

    async def uids_above(self, last_uid: int) -> list[int]:
        response = await self._call(self._imap.uid_search("UID", f"{last_uid + 1}:*", charset=None))
        _expect_ok(response, "UID SEARCH")
        uids: set[int] = set()
        for line in response.lines[:-1]:  # the last line is the tagged status text
            text = bytes(line).removeprefix(b"SEARCH").strip()
            if re.fullmatch(rb"[\d ]*", text):
                uids.update(int(part) for part in text.split())
        # "n:*" always matches the highest UID, even when it is below n.
        return sorted(uid for uid in uids if uid > last_uid)

    async def fetch(self, uid: int) -> bytes:
        # BODY.PEEK so that fetching alone never sets \Seen; the action decides what happens.
        # No overall timeout: aioimaplib's FETCH timeout is per chunk, so large mail is fine.
        response = await self._call(self._imap.uid("fetch", str(uid), "(UID BODY.PEEK[])"), bounded=False)
        _expect_ok(response, f"UID FETCH {uid}")
        raw = _literal_for(response.lines, uid)
        if raw is None:
            raise ImapError("no such message (expunged meanwhile?)")
        return raw

    async def add_flag(self, uid: int, flag: str) -> None:
        response = await self._call(self._imap.uid("store", str(uid), "+FLAGS.SILENT", f"({flag})"))
        _expect_ok(response, "UID STORE")

    async def expunge(self, uid: int) -> None:
        if self.has_capability("UIDPLUS"):
            response = await self._call(self._imap.uid("expunge", str(uid)))
        else:
            # Without UIDPLUS this also removes other \Deleted mail in the folder; the operator
            # chose "delete" or "move", so deleted mail there is ours to remove.
            response = await self._call(self._imap.expunge())
        _expect_ok(response, "EXPUNGE")

    async def delete(self, uid: int) -> None:
        await self.add_flag(uid, "\\Deleted")
        await self.expunge(uid)

    async def move(self, uid: int, folder: str) -> None:
        """MOVE (or COPY + delete); raises MissingFolder on `NO [TRYCREATE]`."""
        target = aioimaplib.quoted(encode_folder(folder))
        if self.has_capability("MOVE"):
            _expect_ok(await self._call(self._imap.uid("move", str(uid), target)), "UID MOVE")
            return
        _expect_ok(await self._call(self._imap.uid("copy", str(uid), target)), "UID COPY")
        await self.delete(uid)

    # --- waiting ----------------------------------------------------------------------------------

    async def wait(self, seconds: float) -> None:
        """Sleep, but return early (raising ConnectionLost) if the server hangs up meanwhile."""
        await self._call(asyncio.sleep(seconds), bounded=False)

    async def idle(self, seconds: float) -> None:
        """Wait in IDLE until the server reports new mail or `seconds` are over."""
        client = self._imap
        seconds = min(seconds, MAX_IDLE_SECONDS)
        queue = client.protocol.idle_queue
        while not queue.empty():  # pushes from an earlier IDLE, already covered by the sync since
            queue.get_nowait()
        idle = await self._call(client.idle_start(timeout=seconds))
        try:
            await self._wait_for_push(seconds)
        finally:
            if self._lost is not None and not self._lost.done():
                client.idle_done()
        _expect_ok(await self._call(idle), "IDLE")

    async def _wait_for_push(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (remaining := deadline - loop.time()) > 0:
            try:
                lines = await self._call(self._imap.wait_server_push(timeout=remaining), bounded=False)
            except TimeoutError:
                return
            if lines == aioimaplib.STOP_WAIT_SERVER_PUSH:  # idle_start's own timer
                return
            if any(_PUSH_RE.match(bytes(line)) for line in lines):
                return
            # anything else ("OK Still here", flag changes by other clients): keep waiting


def encode_folder(name: str) -> str:
    """A folder name in IMAP's modified UTF-7 (RFC 3501 §5.1.3): "Zgłoszenia" is "Zg&AUI-oszenia"."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            data = base64.b64encode("".join(pending).encode("utf-16-be")).decode("ascii")
            out.append("&" + data.rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for char in name:
        if 0x20 <= ord(char) <= 0x7E:
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    return "".join(out)


def _status_line(response: aioimaplib.Response) -> bytes:
    return b" ".join(bytes(line) for line in response.lines[-1:])


def _expect_ok(response: aioimaplib.Response, what: str, error: type[ImapError] = ImapError) -> None:
    if response.result == "OK":
        return
    status = _status_line(response)
    if b"[TRYCREATE]" in status:
        error = MissingFolder
    detail = status.decode(errors="replace")
    raise error(f"{what}: {response.result} {detail}".strip())


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
