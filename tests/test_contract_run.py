"""SPEC §2 through the interfaces an operator has: `make run`, the `gateway` console script, and
settings from a toml file (GATEWAY_CONFIG) overridden by GATEWAY_* environment variables."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import smtplib
import subprocess
import sys
from pathlib import Path

import httpx

from tests.helpers import REPO, make_mail, parsed
from tests.servers.serve import serve_env, start_serve, wait_until

CONSOLE_SCRIPT = Path(sys.executable).parent / "gateway"  # installed by `pip install -e .` into .venv/bin


def _maildir(path: Path) -> list[bytes]:
    new = path / "new"
    return [p.read_bytes() for p in sorted(new.iterdir())] if new.is_dir() else []


def _console(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CONSOLE_SCRIPT), *args], env=env, capture_output=True, text=True, timeout=120)


def test_make_run_starts_a_gateway_that_takes_mail_and_the_console_script_reads_it(tmp_path: Path):
    assert CONSOLE_SCRIPT.is_file(), f"the console script is not installed next to {sys.executable}"
    sent = tmp_path / "sent"
    env = {
        **os.environ,
        "GATEWAY_DATABASE_URL": f"sqlite:///{tmp_path / 'gateway.db'}",
        "GATEWAY_DATA_DIR": str(tmp_path / "data"),
        "GATEWAY_RELAY_URL": f"maildir:{sent}",
        "GATEWAY_SMTP_PORT": "0",
        "GATEWAY_HTTP_PORT": "0",
        "GATEWAY_PORTS_FILE": str(tmp_path / "ports.json"),
    }
    log = tmp_path / "make-run.log"
    with open(log, "wb") as handle:
        # A session of its own: stopping `make` must stop the gateway it started, too.
        make = subprocess.Popen(
            ["make", "--no-print-directory", "run"],
            cwd=REPO,
            env=env,
            stdout=handle,
            stderr=handle,
            start_new_session=True,
        )
    try:

        def started() -> bool:
            assert make.poll() is None, log.read_text(errors="replace")[-3000:]
            return (tmp_path / "ports.json").is_file()

        wait_until(started, 300, "make run to start the gateway (it installs first when needed)")
        ports = json.loads((tmp_path / "ports.json").read_text())
        health = httpx.get(f"http://127.0.0.1:{ports['http']}/healthz", timeout=10)
        assert health.status_code == 200, health.text

        message = make_mail(sender="jan.kowalski@klient.example", subject="Przez make run")
        with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=30) as client:
            client.send_message(message)
        wait_until(lambda: len(_maildir(sent)) >= 1, 60, "the gateway to send its first mail into the maildir")
    finally:
        with contextlib.suppress(ProcessLookupError):  # make may have exited on its own (a failed start)
            os.killpg(make.pid, signal.SIGTERM)
        make.wait(60)

    listed = _console(env, "cases", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    [case] = json.loads(listed.stdout)
    assert case["subject"] == "Przez make run"
    shown = json.loads(_console(env, "cases", "show", case["number"], "--json").stdout)
    assert shown["messages"][0]["message_id"] == str(message["Message-ID"]).strip("<>")
    assert any(f"[#{case['number']}]" in str(parsed(raw)["Subject"]) for raw in _maildir(sent))


TOML = """\
# A scratch configuration: what the toml says holds unless a GATEWAY_* variable says otherwise.
support_address = "pomoc-z-toml@example.test"
staff_queue_address = "kolejka-z-toml@example.test"
smtp_max_message_bytes = 123456
relay_url = "maildir:{sent}"
"""


def test_settings_come_from_the_toml_and_environment_variables_override_them(tmp_path: Path, database_url: str):
    sent = tmp_path / "sent"
    config = tmp_path / "gateway.toml"
    config.write_text(TOML.format(sent=sent), encoding="utf-8")
    env = serve_env(tmp_path, database_url, "unused")
    del env["GATEWAY_RELAY_URL"]  # from the toml
    env.update(GATEWAY_CONFIG=str(config), GATEWAY_SUPPORT_ADDRESS="pomoc-z-env@example.test")
    served = start_serve(env, tmp_path / "gateway.log")
    try:
        with smtplib.SMTP("127.0.0.1", served.smtp_port, timeout=30) as client:
            client.ehlo()
            assert client.esmtp_features["size"] == "123456"  # toml
            client.mail("jan.kowalski@klient.example")
            assert client.rcpt("pomoc-z-toml@example.test")[0] == 550  # overridden by the environment
            assert client.rcpt("pomoc-z-env@example.test")[0] == 250
            code, _ = client.data(make_mail(to="pomoc-z-env@example.test", subject="Ustawienia").as_bytes())
            assert code == 250

        def queue_notified() -> bool:
            return any("kolejka-z-toml@example.test" in str(parsed(raw)["To"]) for raw in _maildir(sent))

        wait_until(queue_notified, 60, "the staff notification to the toml's queue address, via the toml's relay")
    finally:
        served.stop()
