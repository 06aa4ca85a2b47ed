"""Where outgoing mail goes: `smtp://host:port` (aiosmtplib) or `maildir:PATH` (a local Maildir).

A relay either returns (accepted), raises TemporaryFailure (try again later) or raises
PermanentFailure (give up); the outbox worker decides what that means for the row.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

import aiosmtplib

# aiosmtplib's timeout bounds each step of a send (connect, EHLO, MAIL, RCPT, DATA, QUIT); a whole
# attempt is bounded as well, so that it always ends before the outbox lease guarding it runs out.
STEPS_PER_ATTEMPT = 6


def attempt_deadline(timeout: float) -> float:
    """The longest one delivery attempt may take with a per-step `timeout`."""
    return timeout * STEPS_PER_ATTEMPT


class TemporaryFailure(Exception):
    pass


class PermanentFailure(Exception):
    pass


class Relay(Protocol):
    async def send(self, *, raw: bytes, mail_from: str, recipient: str, key: str) -> None: ...


class MaildirRelay:
    """Delivers into PATH/new, through PATH/tmp with an fsync, as the Maildir convention wants."""

    def __init__(self, root: Path) -> None:
        self._root = root

    async def send(self, *, raw: bytes, mail_from: str, recipient: str, key: str) -> None:
        await asyncio.to_thread(self._deliver, raw, key)

    def _deliver(self, raw: bytes, key: str) -> None:
        for folder in ("tmp", "new", "cur"):
            (self._root / folder).mkdir(parents=True, exist_ok=True)
        # One file per outbox row: delivering the same row again overwrites, never duplicates.
        name = f"{key}.{socket.gethostname().replace('/', '_')}"
        if (self._root / "new" / name).exists() or (self._root / "cur" / f"{name}:2,").exists():
            return
        temporary = self._root / "tmp" / f"{name}.{os.getpid()}.{time.monotonic_ns()}"
        with open(temporary, "wb") as handle:
            handle.write(raw.replace(b"\r\n", b"\n"))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self._root / "new" / name)


class SmtpRelay:
    def __init__(self, host: str, port: int, *, timeout: float) -> None:
        self._host = host
        self._port = port
        self._timeout = timeout

    async def send(self, *, raw: bytes, mail_from: str, recipient: str, key: str) -> None:
        try:
            await asyncio.wait_for(
                aiosmtplib.send(
                    raw,
                    sender=mail_from,
                    recipients=[recipient],
                    hostname=self._host,
                    port=self._port,
                    timeout=self._timeout,
                    start_tls=False,
                    use_tls=False,
                ),
                timeout=attempt_deadline(self._timeout),
            )
        except aiosmtplib.SMTPRecipientsRefused as error:
            codes = [refusal.code for refusal in error.recipients]
            raise _by_code(min(codes) if codes else 451, str(error)) from error
        except aiosmtplib.SMTPResponseException as error:
            raise _by_code(error.code, f"{error.code} {error.message}") from error
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as error:
            raise TemporaryFailure(f"{type(error).__name__}: {error}") from error


def _by_code(code: int, text: str) -> Exception:
    return PermanentFailure(text) if 500 <= code < 600 else TemporaryFailure(text)


def make_relay(url: str, *, timeout: float) -> Relay:
    if url.startswith("maildir:"):
        return MaildirRelay(Path(url.removeprefix("maildir:")))
    parsed = urlparse(url)
    if parsed.scheme == "smtp" and parsed.hostname:
        return SmtpRelay(parsed.hostname, parsed.port or 25, timeout=timeout)
    raise ValueError(f"GATEWAY_RELAY_URL must be smtp://host:port or maildir:PATH, not {url!r}")
