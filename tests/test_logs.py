"""Logs: one line per event as text or JSON, context fields, storms summarised (issue 15 item 2)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from pathlib import Path

from gateway.logs import StormFilter, TextFormatter, bind, configure_logging
from tests.helpers import SUPPORT
from tests.servers.serve import serve_env, start_serve, wait_until

# --- the pieces, in this process ----------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _record(message: str, *args: object, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord("gateway.test", level, __file__, 1, message, args, None)


def test_a_storm_is_one_line_then_one_summary_per_window():
    clock = Clock()
    summaries: list[logging.LogRecord] = []
    storms = StormFilter(60.0, summaries.append, clock=clock)
    passed = [storms.filter(_record("accept failed: errno %d", 24)) for _ in range(1000)]
    assert passed.count(True) == 1 and not summaries
    # Another kind of line is not part of the storm.
    assert storms.filter(_record("relay refused %s", "x", level=logging.WARNING))
    clock.now += 61
    assert storms.filter(_record("something else entirely"))
    [summary] = summaries
    assert summary.getMessage() == "accept failed: errno 24 (999 more in the last 61 s)"
    assert summary.repeated == 999  # type: ignore[attr-defined]
    assert storms.filter(summary), "a summary line must not be swallowed as part of its storm"
    # The storm goes on: the next window counts anew, and a quiet storm is summarised by flush().
    storms.filter(_record("accept failed: errno %d", 24))
    storms.flush()
    assert summaries[-1].getMessage().startswith("accept failed: errno 24 (1 more")


def test_context_fields_reach_the_text_line_and_bound_fields_merge_with_extra():
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    handler = configure_logging(log_format="text", level="DEBUG", stream=stream)
    try:
        entry_log = bind(logging.getLogger("gateway.pipeline"), journal_id=12)
        entry_log.info("stored", extra={"case_number": "2026-000007"})
    finally:
        root.removeHandler(handler)
        root.handlers[:], root.level = saved
    line = stream.getvalue().strip()
    assert line.endswith("INFO gateway.pipeline: stored [journal_id=12 case_number=2026-000007]"), line
    assert "\n" not in line
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, __import__("sys").exc_info())
    formatted = TextFormatter().format(record).splitlines()
    assert all(line.startswith("    ") for line in formatted[1:]), "traceback lines must be indented under the event"


# --- a real serve process writing JSON ------------------------------------------------------------


async def test_serve_writes_json_lines_with_context_and_summarises_a_refusal_storm(tmp_path: Path):
    env = serve_env(
        tmp_path,
        f"sqlite:///{tmp_path / 'gateway.db'}",
        f"maildir:{tmp_path / 'sent'}",
        GATEWAY_LOG_FORMAT="json",
        GATEWAY_LOG_LEVEL="DEBUG",
        GATEWAY_LOG_STORM_SECONDS="1",
        GATEWAY_SMTP_MAX_CONNECTIONS_PER_IP="1",
    )
    served = start_serve(env, tmp_path / "serve.log")
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.smtp_port)
        await reader.readline()
        writer.write(
            b"EHLO c.example\r\nMAIL FROM:<jan@klient.example>\r\nRCPT TO:<" + SUPPORT.encode() + b">\r\nDATA\r\n"
        )
        while not (await reader.readline()).startswith(b"354"):
            pass
        writer.write(b"Subject: logged\r\nMessage-ID: <logged@klient.example>\r\n\r\nhi\r\n.\r\n")
        reply = await asyncio.wait_for(reader.readline(), 30)
        assert reply.startswith(b"250 2.0.0")
        journal_id = int(reply.split()[-1])
        # With that one session open, every other connection from 127.0.0.1 is refused: a storm.
        for _ in range(30):
            refused_reader, refused_writer = await asyncio.open_connection("127.0.0.1", served.smtp_port)
            assert (await asyncio.wait_for(refused_reader.readline(), 30)).startswith(b"421 4.7.0")
            refused_writer.close()
        writer.close()

        def events() -> list[dict]:
            return [json.loads(line) for line in served.log.read_text().splitlines() if line.strip()]

        def refusals() -> list[dict]:
            return [event for event in events() if event["message"].startswith("SMTP connection refused")]

        wait_until(lambda: any("repeated" in event for event in refusals()), 15, "the storm's summary line")
    finally:
        served.stop()

    every = events()  # each line parsed as JSON, or this fails
    assert all({"ts", "level", "logger", "message"} <= set(event) for event in every)
    [journaled] = [event for event in every if event["message"] == "message journaled"]
    assert journaled["journal_id"] == journal_id and journaled["peer"] == "127.0.0.1"
    first, *summaries = refusals()
    assert "repeated" not in first and first["peer"] == "127.0.0.1"
    assert sum(summary["repeated"] for summary in summaries) == 29
    assert any(event["message"].startswith("gateway ready") for event in every)
