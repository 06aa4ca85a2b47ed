"""DNS for our own checks: one resolver (GATEWAY_DNS_RESOLVER or the system's), a cache, a per-message budget.

An unreachable resolver must not stall the pipeline: every lookup of a message shares one deadline
(`Budget`), and after a timeout the resolver is considered down for a short while, so the next
messages get `temperror` at once instead of each waiting out the budget again. A lookup that
cannot be made raises `LookupFailed`; the checks turn that into `temperror`, never into a pass.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
from dns.rdata import Rdata
from dns.rdtypes.txtbase import TXTBase

# How long the resolver is skipped after it timed out or refused: long enough that a burst of
# mail does not wait on it message by message, short enough that it is back within a minute.
RESOLVER_DOWN_SECONDS = 30.0
CACHE_ENTRIES = 10_000
# After a timeout: how long the resolver gets to answer for the root (any recursive resolver has it cached).
HEALTH_PROBE_SECONDS = 0.5


class LookupFailed(Exception):
    """The answer could not be had (timeout, SERVFAIL, no resolver, budget spent): temperror."""


@dataclass
class Budget:
    """The time one message's checks may spend on DNS, all lookups together."""

    deadline: float  # time.monotonic()

    @classmethod
    def of(cls, seconds: float) -> Budget:
        return cls(deadline=time.monotonic() + seconds)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()


def parse_resolver_address(address: str) -> tuple[str, int]:
    """ "host:port", "host" (port 53) or "[v6]:port"."""
    address = address.strip()
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        return host, int(rest.lstrip(":") or 53)
    if address.count(":") == 1:
        host, _, port = address.partition(":")
        return host, int(port)
    return address, 53


class Resolver:
    def __init__(self, address: str = "") -> None:
        self._address = address
        self._resolver: dns.resolver.Resolver | None = None
        self._cache = dns.resolver.LRUCache(CACHE_ENTRIES)
        self._down_until = 0.0
        self._lock = threading.Lock()

    def _get(self) -> dns.resolver.Resolver:
        with self._lock:
            if self._resolver is None:
                if self._address:
                    resolver = dns.resolver.Resolver(configure=False)
                    host, port = parse_resolver_address(self._address)
                    resolver.nameservers = [host]
                    resolver.port = port
                else:
                    try:
                        resolver = dns.resolver.Resolver()  # /etc/resolv.conf
                    except dns.resolver.NoResolverConfiguration as error:
                        raise LookupFailed(f"no system resolver: {error}") from error
                resolver.cache = self._cache
                resolver.retry_servfail = False
                self._resolver = resolver
            return self._resolver

    def lookup(self, name: str, rdtype: str, budget: Budget) -> list[Rdata]:
        """The records of `name` (empty when it does not exist or has none of that type)."""
        if time.monotonic() < self._down_until:
            raise LookupFailed("resolver unreachable a moment ago")
        remaining = budget.remaining()
        if remaining <= 0:
            raise LookupFailed("time budget for this message spent")
        resolver = self._get()
        try:
            answer = resolver.resolve(
                dns.name.from_text(name), dns.rdatatype.from_text(rdtype), lifetime=remaining, search=False
            )
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.resolver.LifetimeTimeout as error:
            # A slow name (a sender's dead name servers) is that name's problem; only a resolver that
            # does not answer even for the root is taken out of use for a while.
            if not self._answers(resolver):
                self._down_until = time.monotonic() + RESOLVER_DOWN_SECONDS
            raise LookupFailed(f"{name} {rdtype}: timeout") from error
        except dns.resolver.NoNameservers as error:  # SERVFAIL, REFUSED
            raise LookupFailed(f"{name} {rdtype}: {error}") from error
        except (dns.exception.DNSException, OSError, ValueError) as error:
            raise LookupFailed(f"{name} {rdtype}: {type(error).__name__}: {error}") from error
        return list(answer)

    @staticmethod
    def _answers(resolver: dns.resolver.Resolver) -> bool:
        try:
            resolver.resolve(dns.name.root, dns.rdatatype.NS, lifetime=HEALTH_PROBE_SECONDS, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.NoNameservers):
            return True  # an answer, even a refusal, is an answer
        except (dns.exception.DNSException, OSError):
            return False
        return True

    def txt(self, name: str, budget: Budget) -> list[bytes]:
        """Each TXT record of `name`, its strings joined."""
        records = self.lookup(name, "TXT", budget)
        return [b"".join(record.strings) for record in records if isinstance(record, TXTBase)]
