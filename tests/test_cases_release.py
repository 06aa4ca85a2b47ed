"""`gateway cases release NUMBER`: a spam case that was a false positive becomes an ordinary case.

Spam comes from the trusted relay in front of us (tests trust 127.0.0.1); the release goes through
the command line against the running gateway's database, and the panel then lists the case.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.app import Gateway
from gateway.settings import Settings
from tests.helpers import REPO, all_cases, make_mail, send, settle
from tests.test_panel_api import _list, admin, put_directory

pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")


@pytest.fixture
async def client(gateway: Gateway, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.http_port}", timeout=60) as http:
        await put_directory(http, settings)
        yield http


def _release(settings: Settings, number: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "GATEWAY_CONFIG": str(settings.data_dir / "absent.toml"),
        "GATEWAY_DATABASE_URL": settings.database_url,
        "GATEWAY_DATA_DIR": str(settings.data_dir),
    }
    return subprocess.run(
        [sys.executable, "-m", "gateway", "cases", "release", number],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_a_released_spam_case_is_open_and_listed_in_its_accounts_panel(client, settings, gateway):
    spam = make_mail(sender="faktury@firma-a.example", subject="Faktura 11/2026", headers={"X-Spam-Flag": "YES"})
    ham = make_mail(sender="tech@firma-a.example", subject="Serwer nie odpowiada")
    for mail in (spam, ham):
        code, _ = await send(settings, mail)
        assert code == 250
    await settle(gateway)
    by_subject = {case["subject"]: case for case in all_cases(gateway)}
    held, ordinary = by_subject["Faktura 11/2026"], by_subject["Serwer nie odpowiada"]
    assert held["status"] == "spam" and held["account"] is None
    assert [item["subject"] for item in (await _list(client, admin(settings)))["items"]] == ["Serwer nie odpowiada"]

    refused = _release(settings, ordinary["number"])
    assert refused.returncode == 1 and "not spam" in refused.stderr

    released = _release(settings, held["number"])
    assert released.returncode == 0, released.stderr
    after = {case["number"]: case for case in all_cases(gateway)}[held["number"]]
    assert after["status"] == "open" and after["account"] == "A"
    listed = [item["subject"] for item in (await _list(client, admin(settings)))["items"]]
    assert sorted(listed) == ["Faktura 11/2026", "Serwer nie odpowiada"]

    again = _release(settings, held["number"])
    assert again.returncode == 1 and "not spam" in again.stderr
