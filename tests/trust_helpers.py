"""Sender-trust test material: a DKIM test key (openssl), the DNS records of a few test domains, signing.

Domains served by the throwaway DNS server (tests/servers/dns.py):
- klient.example: SPF allows 127.0.0.1 (where the tests send from), DKIM selector `sel`, DMARC p=reject.
- bank.example: SPF allows only 192.0.2.1, DMARC p=reject; mail "from" it sent here is forged.
- staff.example.test: the staff domain; DKIM selector `sel`, DMARC p=reject, SPF -all.
- nodmarc.example: SPF allows 127.0.0.1, no DMARC record.
"""

from __future__ import annotations

import base64
import subprocess
from dataclasses import dataclass
from email.message import EmailMessage

import dkim

from gateway.app import Gateway
from store.db import reading
from store.sender_trust import security_events
from tests.helpers import engine_of
from tests.servers.dns import DnsServer

TRUSTED_AUTHSERV_ID = "mx.example.test"


@dataclass(frozen=True)
class DkimKey:
    private_pem: bytes
    public_b64: str


def make_dkim_key() -> DkimKey:
    pem = subprocess.run(["openssl", "genrsa", "1024"], capture_output=True, check=True).stdout
    der = subprocess.run(
        ["openssl", "rsa", "-pubout", "-outform", "DER"], input=pem, capture_output=True, check=True
    ).stdout
    return DkimKey(private_pem=pem, public_b64=base64.b64encode(der).decode())


def publish_test_domains(server: DnsServer, key: DkimKey) -> None:
    server.add_txt("klient.example", "v=spf1 ip4:127.0.0.1 -all")
    server.add_txt("sel._domainkey.klient.example", f"v=DKIM1; k=rsa; p={key.public_b64}")
    server.add_txt("_dmarc.klient.example", "v=DMARC1; p=reject; rua=mailto:dmarc@klient.example")
    server.add_txt("bank.example", "v=spf1 ip4:192.0.2.1 -all")
    server.add_txt("_dmarc.bank.example", "v=DMARC1; p=reject")
    server.add_txt("staff.example.test", "v=spf1 -all")
    server.add_txt("sel._domainkey.staff.example.test", f"v=DKIM1; k=rsa; p={key.public_b64}")
    server.add_txt("_dmarc.staff.example.test", "v=DMARC1; p=reject")
    server.add_txt("nodmarc.example", "v=spf1 ip4:127.0.0.1 -all")


def dkim_signed(message: EmailMessage | bytes, key: DkimKey, *, domain: str = "klient.example") -> bytes:
    """The message with a DKIM-Signature of `domain` (selector `sel`) on top."""
    raw = message if isinstance(message, bytes) else message.as_bytes()
    raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    signature = dkim.sign(
        raw,
        b"sel",
        domain.encode(),
        key.private_pem,
        include_headers=[b"from", b"to", b"subject", b"message-id", b"date", b"cc"],
    )
    return signature + raw


def with_headers(raw: bytes, *lines: str) -> bytes:
    """`raw` with header lines prepended, as a relay in front of us would add them."""
    return "".join(f"{line}\r\n" for line in lines).encode() + raw


def events(gateway: Gateway, kind: str) -> list[str]:
    """The senders of the security events of `kind` the gateway recorded, oldest first."""
    with reading(engine_of(gateway)) as session:
        return [event.sender for event in security_events(session=session, kind=kind)]
