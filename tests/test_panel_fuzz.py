"""Fuzz the panel API from its own OpenAPI description (schemathesis): no answer is ever a 500.

The gateway runs for real (uvicorn, pipeline, outbox) in a thread of its own, because the fuzzer
calls it synchronously over HTTP. Every operation gets a small, bounded number of generated
requests, with a valid token of the right role, so the fuzzing reaches past authentication.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.app import Gateway
from gateway.http import api_description
from gateway.settings import Settings
from tests.test_panel_api import ACCOUNT_A, ACCOUNT_B, bearer, token

MAX_EXAMPLES = 12  # per operation: nine operations stay well under a minute
pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")


class ThreadedGateway:
    """`gateway serve` on its own event loop in a background thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.gateway = Gateway(settings)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzzed-gateway", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.http_port}"

    def __enter__(self) -> ThreadedGateway:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.gateway.start(), self.loop).result(60)
        return self

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self.gateway.stop(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def live(settings: Settings) -> Iterator[ThreadedGateway]:
    with ThreadedGateway(settings) as running:
        system = bearer(token(settings, account="panel", role="system"))
        for account, body in (("A", ACCOUNT_A), ("B", ACCOUNT_B)):
            httpx.put(f"{running.base_url}/api/accounts/{account}", json=body, headers=system).raise_for_status()
        # something to find: a case with an attachment
        httpx.post(
            f"{running.base_url}/api/panel/messages",
            headers=bearer(token(settings)),
            data={"category": "general", "service": "a-www", "subject": "Na start", "body": "Treść"},
            files={"files": ("a.txt", b"zalacznik", "text/plain")},
            timeout=30,
        ).raise_for_status()
        yield running


def _openapi() -> dict:  # type: ignore[type-arg]
    """The description the running gateway serves at /openapi.json, built without starting one.

    (schemathesis's lazy `from_fixture` loader does not work with pytest 9, so the schema is
    known at collection time and only the calls go to the live gateway.)
    """
    return api_description()


schema = schemathesis.openapi.from_dict(_openapi())


def _headers_for(path: str, settings: Settings) -> dict[str, str]:
    if path.startswith("/api/accounts/"):
        return bearer(token(settings, account="panel", role="system"))
    return bearer(token(settings))


@schema.parametrize()
@hypothesis_settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_operation_answers_with_a_server_error(case, live, settings):  # type: ignore[no-untyped-def]
    case.call_and_validate(
        base_url=live.base_url,
        headers=_headers_for(case.path, settings),
        timeout=30,
        checks=[not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance],
    )
