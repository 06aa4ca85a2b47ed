"""SIGTERM (systemd's stop, a container's stop) ends `gateway serve` cleanly: exit status 0, the
pipeline's parse pool and the log handlers closed, and nothing but JSON lines in a JSON log."""

from __future__ import annotations

import json
import smtplib
from pathlib import Path

from tests.helpers import make_mail
from tests.servers.serve import serve_env, start_serve, wait_until


def test_sigterm_stops_serve_cleanly(tmp_path: Path) -> None:
    env = serve_env(
        tmp_path,
        f"sqlite:///{tmp_path / 'gateway.db'}",
        f"maildir:{tmp_path / 'sent'}",
        GATEWAY_LOG_FORMAT="json",
        GATEWAY_PIPELINE_PARSE_WORKERS="1",
    )
    served = start_serve(env, tmp_path / "serve.log")
    with smtplib.SMTP("127.0.0.1", served.smtp_port, timeout=30) as client:
        client.send_message(make_mail(subject="przed zatrzymaniem"))
    wait_until(
        lambda: len(list((tmp_path / "sent" / "new").glob("*"))) >= 2, 60, "the acknowledgement and notification"
    )
    children = _children(served.process.pid)
    assert children, "the parse pool should have a child process"
    served.stop()
    assert served.process.returncode == 0  # not -15: the signal asked it to stop, it stopped itself
    wait_until(lambda: not [pid for pid in children if Path(f"/proc/{pid}").exists()], 10, "the pool's children gone")
    lines = [line for line in served.log.read_text().splitlines() if line.strip()]
    events = [json.loads(line) for line in lines]  # a traceback or warning printed raw would fail here
    assert "gateway stopped" in [event["message"] for event in events]


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (from /proc: the fields after the command name)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found
