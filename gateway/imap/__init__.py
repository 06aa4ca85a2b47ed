"""The IMAP room: polling configured mailboxes (SPEC §9) and handing each message to `intake.accept`.

It owns the wire (`client`: aioimaplib's quirks, TLS/STARTTLS, SASL, literals, TRYCREATE), OAuth2
access tokens (`oauth`: refresh, rotated refresh tokens kept in the database) and the poller
(`poller`: the cluster lease, IDLE/polling, UIDVALIDITY/UIDs, acting on the server only after the
journal holds the message). It may import `gateway.settings`, `gateway.intake`, `gateway.metrics`
and `store`; nothing else in `gateway` imports it except the wiring in `gateway.app`.
"""

from gateway.imap.poller import MailboxPoller, MailboxState

__all__ = ["MailboxPoller", "MailboxState"]
