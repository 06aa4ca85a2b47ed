"""A real SMTP relay for the outbox tests: aiosmtpd on a free loopback port, with injectable failures.

It records every DATA it receives (accepted or not, with the time it arrived) and can be told to
answer the next N messages with a reply such as "451 4.3.0 try later" or "550 5.1.1 no such user",
or to drop the connection after the message was transmitted and before answering it (the most
ambiguous moment for a sender). It runs its own event loop in a thread, so the same sink serves
async tests (gateway in the test's loop) and sync tests (gateway in a subprocess).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email import message_from_bytes, policy

from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.servers.threaded import ThreadedServer

DROP = "drop"  # the reply that means "close the connection instead of answering"


@dataclass(frozen=True)
class Delivery:
    """One DATA the sink received, and what it answered."""

    at: float  # time.monotonic() when the message had been received
    mail_from: str
    recipients: tuple[str, ...]
    raw: bytes = field(repr=False)
    reply: str = "250"  # "250 ...", "451 ...", "550 ..." or DROP

    @property
    def accepted(self) -> bool:
        return self.reply.startswith("250")

    @property
    def message_id(self) -> str:
        value = message_from_bytes(self.raw, policy=policy.default)["Message-ID"]
        return str(value or "").strip().strip("<>")

    @property
    def header_bytes(self) -> bytes:
        """The header block, which is what must stay the same between attempts."""
        return self.raw.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]


@dataclass
class _Rule:
    reply: str
    remaining: int
    recipient: str | None  # only messages to this recipient; None: any message
    stage: str  # "data": answer the message; "rcpt": refuse the recipient before any DATA
    hold: threading.Event | None = None  # keep the sender waiting for the reply until this is set


@dataclass
class _State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    rules: list[_Rule] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    refused_recipients: list[tuple[float, str, str]] = field(default_factory=list)  # (at, address, reply)
    holding: int = 0  # DATA received whose reply is being held back right now
    held_sessions: set[int] = field(default_factory=set)  # id() of the sessions a reply was held on
    held_sessions_closed: int = 0  # how many of those the sender has closed since


class _Handler:
    def __init__(self, state: _State) -> None:
        self._state = state

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        reply, _ = self._reply_for((address.lower(),), stage="rcpt")
        if reply.startswith("250"):
            envelope.rcpt_tos.append(address)
            return "250 2.1.5 OK"
        with self._state.lock:
            self._state.refused_recipients.append((time.monotonic(), address.lower(), reply))
        return reply

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        recipients = tuple(str(r).lower() for r in envelope.rcpt_tos)
        raw = bytes(envelope.original_content or envelope.content or b"")
        reply, hold = self._reply_for(recipients, stage="data")
        if hold is not None:
            with self._state.lock:
                self._state.holding += 1
                self._state.held_sessions.add(id(server))
            while not hold.is_set():  # the sender sits waiting for its reply, as behind a stuck relay
                await asyncio.sleep(0.02)
            with self._state.lock:
                self._state.holding -= 1
        with self._state.lock:
            self._state.deliveries.append(Delivery(time.monotonic(), str(envelope.mail_from), recipients, raw, reply))
        if reply == DROP:
            # The whole message is in; the sender now waits for a reply that never comes.
            assert server.transport is not None
            server.transport.abort()
            return "421 4.4.2 connection dropped"  # written to a closed transport: never seen
        return reply

    def _reply_for(self, recipients: tuple[str, ...], *, stage: str) -> tuple[str, threading.Event | None]:
        with self._state.lock:
            for rule in self._state.rules:
                if rule.stage != stage or rule.remaining <= 0:
                    continue
                if rule.recipient is None or rule.recipient in recipients:
                    rule.remaining -= 1
                    return rule.reply, rule.hold
        return "250 2.0.0 OK: queued", None


class _SinkSMTP(SMTP):
    """aiosmtpd's SMTP, noting when a session whose reply was held is closed by the sender."""

    def __init__(self, handler: _Handler, state: _State) -> None:
        super().__init__(handler, hostname="relay-sink.test", decode_data=False)
        self._sink_state = state

    def connection_lost(self, error: Exception | None) -> None:
        with self._sink_state.lock:
            if id(self) in self._sink_state.held_sessions:
                self._sink_state.held_sessions_closed += 1
        super().connection_lost(error)


class RelaySink(ThreadedServer):
    """`with RelaySink() as sink:` ... `sink.url` is what GATEWAY_RELAY_URL should be."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__(host=host, thread_name="relay-sink")
        self._state = _State()

    # --- lifecycle ---------------------------------------------------------------------------

    async def _listen(self) -> asyncio.AbstractServer:
        def protocol() -> SMTP:
            # A fixed hostname keeps aiosmtpd from asking the resolver on every connection.
            return _SinkSMTP(_Handler(self._state), self._state)

        return await self._loop.create_server(protocol, host=self.host, port=0)

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    # --- behaviour ---------------------------------------------------------------------------

    def fail(self, reply: str, *, count: int = 1_000_000, recipient: str | None = None, stage: str = "data") -> None:
        """Answer the next `count` messages (to `recipient`, if given) with `reply` or DROP.

        stage="rcpt" refuses the recipient at RCPT TO instead, so no DATA is ever sent.
        """
        assert stage in ("data", "rcpt") and not (stage == "rcpt" and reply == DROP)
        with self._state.lock:
            self._state.rules.append(_Rule(reply, count, recipient.lower() if recipient else None, stage))

    def hold(self, then: str, *, recipient: str | None = None, count: int = 1) -> threading.Event:
        """Keep the next `count` senders (to `recipient`) waiting for their reply to DATA until the
        returned event is set; then answer `then`. `holding` says how many are waiting now."""
        release = threading.Event()
        with self._state.lock:
            self._state.rules.append(_Rule(then, count, recipient.lower() if recipient else None, "data", release))
        return release

    @property
    def holding(self) -> int:
        with self._state.lock:
            return self._state.holding

    @property
    def held_sessions_closed(self) -> int:
        """How many sessions that had a reply held have since been closed by their sender."""
        with self._state.lock:
            return self._state.held_sessions_closed

    def drop(self, *, count: int = 1, recipient: str | None = None) -> None:
        self.fail(DROP, count=count, recipient=recipient)

    def accept_all(self) -> None:
        """Forget every injected failure: from now on every message gets 250."""
        with self._state.lock:
            self._state.rules.clear()

    # --- what arrived ------------------------------------------------------------------------

    @property
    def deliveries(self) -> list[Delivery]:
        """Every DATA received so far, failed attempts included, oldest first."""
        with self._state.lock:
            return list(self._state.deliveries)

    @property
    def refused_recipients(self) -> list[tuple[float, str, str]]:
        """(time, address, reply) of every RCPT TO refused by a stage="rcpt" rule."""
        with self._state.lock:
            return list(self._state.refused_recipients)

    @property
    def accepted(self) -> list[Delivery]:
        return [delivery for delivery in self.deliveries if delivery.accepted]

    def attempts_of(self, message_id: str) -> list[Delivery]:
        return [delivery for delivery in self.deliveries if delivery.message_id == message_id]

    def accepted_to(self, recipient: str) -> list[Delivery]:
        return [d for d in self.accepted if recipient.lower() in d.recipients]

    async def wait_for(self, predicate: Callable[[RelaySink], bool], *, timeout: float = 30.0) -> None:
        """Poll (without blocking the caller's loop) until `predicate(self)` is true."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                raise AssertionError(f"relay sink: condition not met in {timeout}s; got {self.deliveries!r}")
            await asyncio.sleep(0.05)
