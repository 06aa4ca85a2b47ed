"""Logging for `gateway serve` and the CLI: one line per event, as text or JSON, storms summarised.

The convention for every module (say so in a line's `extra`, or bind it once with `bind`):
- `journal_id` (int), `case_number` (str), `outbox_id` (int): on every line that concerns one;
- `peer` (the client IP) on lines about an SMTP or HTTP client, `mailbox` on lines about an IMAP one;
- INFO is for events an operator wants to count on one hand per hour (start, stop, a mailbox
  connecting); per-message lines are DEBUG; WARNING and ERROR are for what needs a look.

    log.warning("relay refused the message", extra={"outbox_id": item.id, "case_number": number})
    entry_log = bind(log, journal_id=entry.id); entry_log.debug("parsed"); entry_log.error("failed")

A storm of the same line (same logger, level and message template, digits ignored) is written
once; the repeats are counted and written as one "... (N more in the last S s)" line per window,
so 100 000 "Too many open files" become a handful of lines. The SMTP connection gate's refusals
and asyncio's accept() errors go through the same mechanism.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

# Fields a line may carry about what it concerns, in the order the text format shows them.
CONTEXT_FIELDS = ("journal_id", "case_number", "outbox_id", "peer", "mailbox", "instance")
_DIGITS = re.compile(r"\d+")
# Libraries that log one line per job run or per SMTP command: noise in an operator's log.
_QUIET_LOGGERS = ("apscheduler", "mail.log", "uvicorn.access", "alembic.runtime.plugins")


class ContextAdapter(logging.LoggerAdapter[logging.Logger]):
    """A logger that adds bound fields to every line, merged with the line's own `extra`."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **(kwargs.get("extra") or {})}
        return msg, kwargs


def bind(logger: logging.Logger, **fields: Any) -> ContextAdapter:
    """`bind(log, journal_id=12, case_number="2026-000001")`: those fields on every line it logs."""
    return ContextAdapter(logger, fields)


def _context(record: logging.LogRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in CONTEXT_FIELDS if getattr(record, name, None) is not None}


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TextFormatter(logging.Formatter):
    """`2026-11-30T23:55:01.123Z INFO gateway.pipeline: message [journal_id=12 case_number=2026-000001]`."""

    def format(self, record: logging.LogRecord) -> str:
        # A message with line breaks (asyncio's error reports) stays one event: continuation lines indented.
        message = record.getMessage().replace("\n", "\n    ")
        line = f"{_timestamp(record)} {record.levelname} {record.name}: {message}"
        context = _context(record)
        if context:
            line += " [" + " ".join(f"{name}={value}" for name, value in context.items()) + "]"
        if record.exc_info:
            # A traceback stays one event: its lines are indented under the message.
            line += "\n    " + self.formatException(record.exc_info).replace("\n", "\n    ")
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the context fields, and exc when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_context(record),
        }
        for name in ("repeated", "window_seconds"):
            if hasattr(record, name):
                event[name] = getattr(record, name)
        if record.exc_info:
            event["exc"] = self.formatException(record.exc_info)
        return json.dumps(event, ensure_ascii=False, default=str)


@dataclass
class _Storm:
    started: float
    suppressed: int = 0
    sample: logging.LogRecord | None = field(default=None, repr=False)


class StormFilter(logging.Filter):
    """Lets the first of a run of identical lines through, counts the rest, summarises them per window.

    Attached to a handler; the summary is emitted through `emit` (the handler's own `handle`) when
    the next line of any kind arrives after the window, or when `flush` is called (at exit).
    """

    def __init__(
        self,
        window_seconds: float,
        emit: Callable[[logging.LogRecord], Any],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.window_seconds = window_seconds
        self._emit = emit
        self._clock = clock
        self._storms: dict[tuple[str, int, str], _Storm] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(record: logging.LogRecord) -> tuple[str, int, str]:
        template = record.msg if isinstance(record.msg, str) else repr(record.msg)
        return record.name, record.levelno, _DIGITS.sub("#", template[:200])

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "repeated", None) is not None:
            return True  # our own summary line
        now = self._clock()
        self._summarise_expired(now)
        key = self.key(record)
        with self._lock:
            storm = self._storms.get(key)
            if storm is None:
                self._storms[key] = _Storm(started=now)
                return True
            storm.suppressed += 1
            storm.sample = record
            return False

    def _summarise_expired(self, now: float, *, everything: bool = False) -> None:
        with self._lock:
            expired = [
                (key, storm)
                for key, storm in self._storms.items()
                if everything or now - storm.started >= self.window_seconds
            ]
            for key, storm in expired:
                if storm.suppressed:
                    # The storm goes on: a new window starts with this summary as its first line.
                    self._storms[key] = _Storm(started=now)
                else:
                    del self._storms[key]
        for _key, storm in expired:
            if storm.suppressed and storm.sample is not None:
                self._emit(self._summary(storm, now))

    def _summary(self, storm: _Storm, now: float) -> logging.LogRecord:
        sample = storm.sample
        assert sample is not None
        seconds = max(1, round(now - storm.started))
        summary = logging.makeLogRecord(sample.__dict__)
        summary.msg = f"{sample.getMessage()} ({storm.suppressed} more in the last {seconds} s)"
        summary.args = None
        summary.exc_info = None
        summary.exc_text = None
        summary.repeated = storm.suppressed
        summary.window_seconds = seconds
        return summary

    def flush(self) -> None:
        """Write the pending summaries now, whatever the window (at exit)."""
        self._summarise_expired(self._clock(), everything=True)

    def start_ticking(self) -> None:
        """Summarise a storm that has stopped even when no other line comes after it (a daemon thread)."""

        def tick() -> None:
            while True:
                time.sleep(max(self.window_seconds / 2, 0.1))
                self._summarise_expired(self._clock())

        threading.Thread(target=tick, name="log-storms", daemon=True).start()


class _StormHandler(logging.StreamHandler[TextIO]):
    """A stream handler that writes pending storm summaries when logging shuts down."""

    storm_filter: StormFilter | None = None

    def close(self) -> None:
        if self.storm_filter is not None:
            self.storm_filter.flush()
        super().close()


def configure_logging(
    *, log_format: str = "text", level: str | int = "INFO", storm_seconds: float = 60.0, stream: TextIO | None = None
) -> logging.Handler:
    """Replace the root logger's handlers with one line-per-event handler on stderr; returns it."""
    handler = _StormHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    storms = StormFilter(storm_seconds, handler.handle)
    handler.storm_filter = storms
    handler.addFilter(storms)
    storms.start_ticking()
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        if isinstance(old, _StormHandler):  # ours from an earlier call; others are their owners' to close
            old.close()
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    return handler
