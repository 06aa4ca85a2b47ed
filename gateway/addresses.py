"""Signed reply addresses: `support+<number>-<mac>@domain` for a customer, `support+s-…` for staff.

The MAC is an HMAC-SHA256 over the case number and the addressee (the customer's address, or the
word "staff"), so a token can neither be guessed nor moved to another case or another sender.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass

_MAC_LENGTH = 16
_TOKEN = re.compile(r"^(?P<staff>s-)?(?P<number>\d{4}-\d{6,})-(?P<mac>[a-z2-7]{16})$")


@dataclass(frozen=True)
class ReplyToken:
    number: str
    staff: bool
    mac: str


class ReplyAddresses:
    def __init__(self, *, support_address: str, secret: str) -> None:
        local, _, domain = support_address.lower().rpartition("@")
        self._local = local
        self._domain = domain
        self._secret = secret.encode()

    def _mac(self, number: str, addressee: str) -> str:
        digest = hmac.new(self._secret, f"{number}\n{addressee.lower()}".encode(), hashlib.sha256).digest()
        return base64.b32encode(digest).decode().lower()[:_MAC_LENGTH]

    def for_customer(self, *, number: str, customer: str) -> str:
        return f"{self._local}+{number}-{self._mac(number, customer)}@{self._domain}"

    def for_staff(self, *, number: str) -> str:
        return f"{self._local}+s-{number}-{self._mac(number, 'staff')}@{self._domain}"

    def is_ours(self, address: str) -> bool:
        """The support address itself or any plus-extension of it."""
        local, _, domain = address.lower().rpartition("@")
        return domain == self._domain and (local == self._local or local.startswith(self._local + "+"))

    def parse(self, address: str) -> ReplyToken | None:
        """The token in `address` if it is syntactically one of ours (the MAC is not checked yet)."""
        local, _, domain = address.lower().rpartition("@")
        if domain != self._domain or not local.startswith(self._local + "+"):
            return None
        match = _TOKEN.match(local[len(self._local) + 1 :])
        if match is None:
            return None
        return ReplyToken(number=match["number"], staff=bool(match["staff"]), mac=match["mac"])

    def verify(self, token: ReplyToken, *, sender: str) -> bool:
        """A customer token must have been issued to `sender`; a staff token to staff (checked by the caller)."""
        expected = self._mac(token.number, "staff" if token.staff else sender)
        return hmac.compare_digest(expected, token.mac)
