"""What is ours: signed reply addresses, staff reply addresses, bounce (VERP) addresses, postmaster, the staff queue.

A customer's reply address is `support+<number>-<mac>@domain`, the MAC an HMAC-SHA256 over the case
number and the customer's address, so it can neither be guessed nor moved to another case or sender.
A staff reply address is `support+s-<number>-<expires>-<mac>@domain`: the MAC also covers the staff
address the notification was sent to and the day it expires (days since 1970-01-01), so a leaked one
stops working and cannot be used by somebody else. `is_ours()` is the one answer to "is this address
the gateway's own?" for the SMTP listener (what it accepts) and the pipeline (loops). This module
imports nothing from the gateway.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

_MAC_LENGTH = 16
_SECONDS_PER_DAY = 86400
_TOKEN = re.compile(r"^(?P<staff>s-)?(?P<number>\d{4}-\d{6,})(?:-(?P<expires>\d{5,6}))?-(?P<mac>[a-z2-7]{16})$")


@dataclass(frozen=True)
class ReplyToken:
    number: str
    staff: bool
    mac: str
    expires_day: int | None = None  # staff tokens: the last day (days since the epoch) they are valid


class TokenCheck(StrEnum):
    """What a recipient address of ours proved; anything but VALID and NOT_A_TOKEN is a security event."""

    NOT_A_TOKEN = "not_a_token"  # the plain support address, postmaster, someone else's address
    VALID = "valid"
    FORGED = "forged_mac"  # the MAC matches nothing we issued (guessed, altered, moved to another case)
    EXPIRED = "expired_token"  # a staff token past its lifetime


class ReplyAddresses:
    def __init__(
        self,
        *,
        support_address: str,
        secret: str,
        staff_queue_address: str = "",
        staff_token_days: int = 90,
        clock: Callable[[], float] = time.time,
    ) -> None:
        local, _, domain = support_address.lower().rpartition("@")
        self._local = local
        self._domain = domain
        self._secret = secret.encode()
        self._staff_queue = staff_queue_address.strip().lower()
        self._staff_token_days = staff_token_days
        self._clock = clock

    def _mac(self, *parts: str) -> str:
        message = "\n".join(part.lower() for part in parts).encode()
        digest = hmac.new(self._secret, message, hashlib.sha256).digest()
        return base64.b32encode(digest).decode().lower()[:_MAC_LENGTH]

    def _today(self) -> int:
        return int(self._clock() // _SECONDS_PER_DAY)

    # --- issuing -------------------------------------------------------------------------------

    def for_customer(self, *, number: str, customer: str) -> str:
        return f"{self._local}+{number}-{self._mac(number, customer)}@{self._domain}"

    def for_staff(self, *, number: str, staff_address: str | None = None) -> str:
        """The Reply-To of a staff notification sent to `staff_address` (default: the staff queue)."""
        addressee = (staff_address or self._staff_queue).lower()
        expires = self._today() + self._staff_token_days
        mac = self._mac("staff", number, addressee, str(expires))
        return f"{self._local}+s-{number}-{expires}-{mac}@{self._domain}"

    # --- recognising ---------------------------------------------------------------------------

    def is_ours(self, address: str) -> bool:
        """The support address, any plus-extension of it (reply, staff, bounce), postmaster@ its domain.

        The staff queue is ours too for loop detection (`is_own_address`), but the SMTP listener
        must not take mail for it: notifications relayed there would come straight back as cases.
        """
        local, _, domain = address.strip().lower().rpartition("@")
        if domain != self._domain:
            return False
        return local in (self._local, "postmaster") or local.startswith(self._local + "+")

    def is_own_address(self, address: str) -> bool:
        """Any address the gateway sends from or to for itself: mail from one of them is a loop."""
        address = address.strip().lower()
        return self.is_ours(address) or (bool(self._staff_queue) and address == self._staff_queue)

    def parse(self, address: str) -> ReplyToken | None:
        """The token in `address` if it is syntactically one of ours (the MAC is not checked yet)."""
        local, _, domain = address.lower().rpartition("@")
        if domain != self._domain or not local.startswith(self._local + "+"):
            return None
        match = _TOKEN.match(local[len(self._local) + 1 :])
        if match is None:
            return None
        staff = bool(match["staff"])
        expires = int(match["expires"]) if match["expires"] else None
        if staff == (expires is None):
            return None  # staff tokens always carry their expiry; customer tokens never do
        return ReplyToken(number=match["number"], staff=staff, mac=match["mac"], expires_day=expires)

    def check(self, token: ReplyToken, *, sender: str) -> TokenCheck:
        """Whether `token` was issued by us for this case and may be used by `sender`.

        A customer token must have been issued to `sender`. A staff token must have been sent to
        `sender` itself or to the staff queue (whether `sender` is staff at all is the caller's
        question), and must not have expired.
        """
        if not token.staff:
            expected = self._mac(token.number, sender)
            return TokenCheck.VALID if hmac.compare_digest(expected, token.mac) else TokenCheck.FORGED
        addressees = {sender.lower(), self._staff_queue} - {""}
        if not any(
            hmac.compare_digest(self._mac("staff", token.number, addressee, str(token.expires_day)), token.mac)
            for addressee in sorted(addressees)
        ):
            return TokenCheck.FORGED
        if token.expires_day is None or token.expires_day < self._today():
            return TokenCheck.EXPIRED
        return TokenCheck.VALID

    def verify(self, token: ReplyToken, *, sender: str) -> bool:
        return self.check(token, sender=sender) is TokenCheck.VALID

    # --- bounces (VERP) ------------------------------------------------------------------------
    # Each outgoing message leaves with its own signed envelope sender, so a delivery report can be
    # told apart from a stranger's `multipart/report`: only one that arrives at the address made
    # for a Message-ID, and names that Message-ID, is a bounce of ours (gateway.trust.gate).

    def for_bounce(self, *, message_id: str) -> str:
        """The envelope sender (MAIL FROM) of the outgoing message `message_id` (no angle brackets)."""
        return f"{self._local}+b-{self._mac('bounce', message_id.strip('<>'))}@{self._domain}"

    def check_bounce(self, address: str, *, message_id: str) -> TokenCheck:
        """Whether `address` is the bounce address made for `message_id`."""
        local, _, domain = address.strip().lower().rpartition("@")
        prefix = self._local + "+b-"
        if domain != self._domain or not local.startswith(prefix):
            return TokenCheck.NOT_A_TOKEN
        expected = self._mac("bounce", message_id.strip("<>"))
        return TokenCheck.VALID if hmac.compare_digest(expected, local[len(prefix) :]) else TokenCheck.FORGED

    def is_bounce_address(self, address: str) -> bool:
        local, _, domain = address.strip().lower().rpartition("@")
        return domain == self._domain and local.startswith(self._local + "+b-")
