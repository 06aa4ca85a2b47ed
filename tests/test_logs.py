"""Logs: one line per event as text or JSON, context fields, storms summarised (issue 15 item 2)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import resource
from pathlib import Path

import aiosmtplib

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
    multi_line = TextFormatter().format(_record("accept failed\nsocket: fd=12")).splitlines()
    assert len(multi_line) == 2 and multi_line[1] == "    socket: fd=12"


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


async def test_running_out_of_descriptors_is_one_line_and_a_summary_and_the_gateway_recovers(tmp_path: Path):
    """EMFILE on accept(): asyncio reports it every second; the log says it once, then a summary."""
    env = serve_env(
        tmp_path,
        f"sqlite:///{tmp_path / 'gateway.db'}",
        f"maildir:{tmp_path / 'sent'}",
        GATEWAY_LOG_FORMAT="json",
        GATEWAY_LOG_STORM_SECONDS="2",
    )
    served = start_serve(env, tmp_path / "serve.log")
    flood: list[asyncio.StreamWriter] = []
    try:
        # Leave the running gateway 15 descriptors beyond what it holds now (prlimit on its pid).
        in_use = len(await asyncio.to_thread(lambda: list(Path(f"/proc/{served.process.pid}/fd").iterdir())))
        soft, hard = resource.prlimit(served.process.pid, resource.RLIMIT_NOFILE)
        resource.prlimit(served.process.pid, resource.RLIMIT_NOFILE, (in_use + 15, hard))

        def emfile_events() -> list[dict]:
            return [
                event
                for event in (json.loads(line) for line in served.log.read_text().splitlines() if line.strip())
                if "out of system resource" in event["message"]
            ]

        # 60 connections from three addresses (20 each, the per-IP cap) hold more than 15 descriptors.
        for source in ("127.0.2.1", "127.0.2.2", "127.0.2.3"):
            for _ in range(20):
                _reader, writer = await asyncio.open_connection("127.0.0.1", served.smtp_port, local_addr=(source, 0))
                flood.append(writer)
        wait_until(lambda: any("repeated" in event for event in emfile_events()), 30, "a summary of the EMFILE storm")
        for writer in flood:
            writer.close()
        flood.clear()
        resource.prlimit(served.process.pid, resource.RLIMIT_NOFILE, (soft, hard))
        # Descriptors are back: accept() resumes, mail and health answer again.
        wait_until(lambda: served.healthz().status_code == 200, 30, "/healthz after the flood")
        code, _message = await asyncio.wait_for(_send_one(served.smtp_port), 30)
        assert code == 250
    finally:
        for writer in flood:
            writer.close()
        served.stop()
    first, *rest = emfile_events()
    assert "repeated" not in first
    assert rest and all("repeated" in event for event in rest), "an EMFILE line was written twice"


async def _send_one(port: int) -> tuple[int, str]:
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=30) as client:
        response = await client.sendmail("jan@klient.example", [SUPPORT], b"Subject: back\r\n\r\nhello\r\n")
    return 250, response[1]
