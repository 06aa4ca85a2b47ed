"""Real `gateway serve` processes for the tests that kill them: environment, start, ports, health.

Each process binds port 0 (any free port) for SMTP and HTTP and writes the ports it got to the
file named by GATEWAY_PORTS_FILE once it is ready; `start_serve` reads them from there, so no port
is ever picked by the test and bound later by someone else.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.helpers import REPO, SUPPORT


def serve_env(tmp_path: Path, database_url: str, relay_url: str, **extra: str) -> dict[str, str]:
    """GATEWAY_* variables for one instance that binds any free ports and reports them."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "GATEWAY_CONFIG": str(tmp_path / "none.toml"),
        "GATEWAY_DATABASE_URL": database_url,
        "GATEWAY_DATA_DIR": str(tmp_path / "data"),
        "GATEWAY_SMTP_PORT": "0",
        "GATEWAY_HTTP_PORT": "0",
        "GATEWAY_PORTS_FILE": str(tmp_path / "ports.json"),
        "GATEWAY_RELAY_URL": relay_url,
        "GATEWAY_SUPPORT_ADDRESS": SUPPORT,
        **extra,
    }


@dataclass
class Served:
    """A running `gateway serve` and the ports it bound."""

    process: subprocess.Popen[bytes]
    smtp_port: int
    http_port: int
    log: Path

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a power cut."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def healthz(self) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.http_port}/healthz", timeout=5)


def start_serve(env: dict[str, str], log: Path, *, timeout: float = 90) -> Served:
    """Start `gateway serve`, wait until it reports its ports and /healthz answers 200."""
    ports_file = Path(env["GATEWAY_PORTS_FILE"])
    ports_file.unlink(missing_ok=True)  # a restart must not read the previous run's ports
    # The child keeps its own copy of the descriptor; ours is closed as soon as it has started.
    with open(log, "ab") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve"], cwd=REPO, env=env, stdout=handle, stderr=handle
        )
    deadline = time.monotonic() + timeout
    try:
        while not ports_file.is_file():
            _still_starting(process, log, deadline)
            time.sleep(0.05)
        ports = json.loads(ports_file.read_text())
        served = Served(process, int(ports["smtp"]), int(ports["http"]), log)
        while True:
            _still_starting(process, log, deadline)
            try:
                if served.healthz().status_code == 200:
                    return served
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
    except BaseException:
        if process.poll() is None:
            process.kill()
            process.wait(30)
        raise


def _still_starting(process: subprocess.Popen[bytes], log: Path, deadline: float) -> None:
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:]) if log.is_file() else ""
    assert process.poll() is None, f"gateway exited during start-up:\n{tail}"
    assert time.monotonic() < deadline, f"gateway did not become healthy in time:\n{tail}"


def wait_until(condition: Callable[[], object], timeout: float, what: str, *, interval: float = 0.1) -> None:
    """Poll `condition()` until it is true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
