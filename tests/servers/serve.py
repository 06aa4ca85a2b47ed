"""Real `gateway serve` processes for the tests that kill them: environment, start, health."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.helpers import REPO, SUPPORT, free_port


def serve_env(tmp_path: Path, database_url: str, relay_url: str, **extra: str) -> tuple[dict[str, str], int, int]:
    """GATEWAY_* variables for one instance on fresh ports: (environment, smtp port, http port)."""
    smtp_port, http_port = free_port(), free_port()
    env = {
        **os.environ,
        "GATEWAY_CONFIG": str(tmp_path / "none.toml"),
        "GATEWAY_DATABASE_URL": database_url,
        "GATEWAY_DATA_DIR": str(tmp_path / "data"),
        "GATEWAY_SMTP_PORT": str(smtp_port),
        "GATEWAY_HTTP_PORT": str(http_port),
        "GATEWAY_RELAY_URL": relay_url,
        "GATEWAY_SUPPORT_ADDRESS": SUPPORT,
        **extra,
    }
    return env, smtp_port, http_port


def start_serve(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    # The child keeps its own copy of the descriptor; ours is closed as soon as it has started.
    with open(log, "ab") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve"], cwd=REPO, env=env, stdout=handle, stderr=handle
        )


def wait_healthy(port: int, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "gateway exited during start-up"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("gateway did not become healthy")
