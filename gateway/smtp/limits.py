"""SMTP connection limits, as Postfix has them: connection caps, timeouts, the open-file limit.

- `ConnectionGate` counts live sessions, globally and per client IP (Postfix's
  `smtpd_client_connection_count_limit`); a connection past either cap gets `421 4.7.0` and is
  closed by `RefusingProtocol` before an SMTP session object is even built.
- `SessionTimeouts`: the client has `greeting_seconds` after our banner for its first command and
  `command_seconds` for every later command or piece of DATA (Postfix's `smtpd_timeout`); under
  stress (the house at least `STRESS_SHARE` full) every wait shrinks to `stress_seconds`, as
  Postfix's `smtpd_timeout = ${stress?10}${stress:300}` does, so idle connections make room.
- `raise_open_file_limit` lifts RLIMIT_NOFILE's soft limit to the hard one at start-up, and
  `sessions_that_fit` keeps the global cap below what that limit leaves for sessions.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import resource
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

# Builds the SMTP session for an admitted client IP (the gate's count is released when it ends).
SessionBuilder = Callable[[str], asyncio.Protocol]

TOO_MANY_CONNECTIONS = "421 4.7.0 {hostname} Too many connections, try again later"
TOO_MANY_FROM_YOU = "421 4.7.0 {hostname} Too many connections from your address, try again later"
# The share of the global cap from which the gateway is "under stress" and idle time is cut short.
STRESS_SHARE = 0.8
# Descriptors kept free beyond the SMTP sessions: database, journal files, HTTP, IMAP, logs.
FD_RESERVE = 256
# When the house is full, a newcomer takes the place of the session that has waited longest for a
# command, if it has waited at least this long: idle connections cannot lock senders out.
EVICT_IDLE_SECONDS = 2.0


class Evictable(Protocol):
    """What the gate needs of a session to make room: since when it waits for a command, and a way out."""

    peer_ip: str

    def idle_since(self) -> float | None: ...

    def evict(self) -> None: ...


@dataclass(frozen=True)
class SessionTimeouts:
    greeting_seconds: float
    command_seconds: float
    stress_seconds: float

    def current(self, stressed: bool) -> float:
        return min(self.command_seconds, self.stress_seconds) if stressed else self.command_seconds

    def first_command(self, stressed: bool) -> float:
        return min(self.greeting_seconds, self.stress_seconds) if stressed else self.greeting_seconds


class ConnectionGate:
    """Live SMTP sessions, in total and per client IP; admits or refuses a new one."""

    def __init__(self, *, max_total: int, max_per_ip: int, exempt_networks: Iterable[str] = ()) -> None:
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        # The MTAs in front (trusted relays) bring everyone's mail from one address: like Postfix's
        # smtpd_client_event_limit_exceptions = $mynetworks, they are not held to the per-IP cap.
        self._exempt = [ipaddress.ip_network(network, strict=False) for network in exempt_networks]
        self.total = 0
        self._per_ip: Counter[str] = Counter()
        self.refused = 0
        self.timed_out = 0
        self.evicted = 0
        self._sessions: set[Evictable] = set()

    @property
    def stressed(self) -> bool:
        return self.max_total > 0 and self.total >= self.max_total * STRESS_SHARE

    def admit(self, ip: str) -> str | None:
        """Count the session in and return None, or return why it is refused (a 421 template)."""
        # The per-IP cap first: nobody is evicted to make room for a client that would be refused anyway.
        if self.max_per_ip > 0 and self._per_ip[ip] >= self.max_per_ip and not self._exempted(ip):
            reason = TOO_MANY_FROM_YOU
        elif self.max_total > 0 and self.total >= self.max_total and not self._evict_idlest():
            reason = TOO_MANY_CONNECTIONS
        else:
            self.total += 1
            self._per_ip[ip] += 1
            return None
        self.refused += 1
        # One template per cause, so a flood of refusals is one line plus a summary (gateway.logs).
        log.warning("SMTP connection refused: %s", reason.split(" ", 3)[3], extra={"peer": ip})
        return reason

    def _exempted(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in network for network in self._exempt)

    def track(self, session: Evictable) -> None:
        self._sessions.add(session)

    def _evict_idlest(self) -> bool:
        now = asyncio.get_running_loop().time()
        waiting = [(since, session) for session in self._sessions if (since := session.idle_since()) is not None]
        if not waiting:
            return False
        since, idlest = min(waiting, key=lambda pair: pair[0])
        if now - since < EVICT_IDLE_SECONDS:
            return False
        self.evicted += 1
        log.warning("SMTP house full: idle session closed to make room", extra={"peer": idlest.peer_ip})
        self.forget(idlest)
        idlest.evict()
        return True

    def forget(self, session: Evictable) -> None:
        """The session is over (or evicted): its place is free from now on. Safe to call twice."""
        if session in self._sessions:
            self._sessions.discard(session)
            self.release(session.peer_ip)

    def release(self, ip: str) -> None:
        self.total -= 1
        self._per_ip[ip] -= 1
        if self._per_ip[ip] <= 0:
            del self._per_ip[ip]

    def note_timeout(self, ip: str) -> None:
        self.timed_out += 1
        log.debug("SMTP session timed out", extra={"peer": ip})


class RefusingProtocol(asyncio.Protocol):
    """Says 421 and hangs up: the whole life of a connection past a cap."""

    def __init__(self, reply: str) -> None:
        self._reply = reply.encode("ascii") + b"\r\n"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(self._reply)
        transport.close()  # after the write buffer is flushed; nothing the client sends is read

    def data_received(self, data: bytes) -> None:
        pass


def raise_open_file_limit() -> int:
    """Lift the soft RLIMIT_NOFILE to the hard limit (as far as the system allows); returns the soft limit.

    The default soft limit of 1 024 is below what a connection flood, the database and HTTP can
    need together; the hard limit is what the administrator allows us (LimitNOFILE=).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as error:
            log.warning("could not raise the open-file limit from %s to %s: %s", soft, target, error)
    return soft


def sessions_that_fit(configured: int, open_file_limit: int) -> int:
    """The global session cap, lowered so that sessions cannot take the descriptors everything else needs.

    Running out of descriptors breaks more than SMTP (HTTP accepts, database files); a 421 for
    the excess connections is the better failure.
    """
    if open_file_limit == resource.RLIM_INFINITY:
        return configured
    fitting = max(open_file_limit - FD_RESERVE, open_file_limit // 4)
    if configured <= 0 or configured > fitting:
        log.warning(
            "smtp_max_connections %s lowered to %s: the open-file limit is %s (raise LimitNOFILE / ulimit -Hn)",
            configured or "unlimited",
            fitting,
            open_file_limit,
        )
        return fitting
    return configured


class GatedSessions(asyncio.Protocol):
    """The listener's protocol factory product: admits the connection, then hands it to a real session.

    The per-IP cap needs the peer address, which only `connection_made` knows; refusing there costs
    one small object and one write, and the expensive SMTP session is built only once admitted.
    """

    def __init__(self, gate: ConnectionGate, hostname: str, build_session: SessionBuilder) -> None:
        self._gate = gate
        self._hostname = hostname
        self._build_session = build_session

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        ip = str(peer[0]) if peer else ""
        refusal = self._gate.admit(ip)
        if refusal is not None:
            refuser = RefusingProtocol(refusal.format(hostname=self._hostname))
            transport.set_protocol(refuser)
            refuser.connection_made(transport)
            return
        try:
            session = self._build_session(ip)
        except Exception:
            self._gate.release(ip)
            transport.close()
            raise
        transport.set_protocol(session)
        session.connection_made(transport)
