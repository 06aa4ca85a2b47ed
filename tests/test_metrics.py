"""`GET /metrics` (SPEC §14, issue 15 item 1) scraped over real HTTP after real SMTP and panel traffic.

Counters are per process, and several gateways may have run in this test process before, so the
in-process tests compare a scrape before with a scrape after. The two-instance test runs two real
`gateway serve` processes on one PostgreSQL database: each counts only what it acknowledged itself,
and both report the same shared backlog and queue.
"""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import Gateway
from gateway.intake import Intake
from gateway.settings import Settings
from tests.helpers import make_mail, send, sent_mail, settle, throwaway_pg_database
from tests.servers.serve import Served, serve_env, start_serve, wait_until
from tests.test_panel_api import bearer, new_message, put_directory, token

pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, keyed by (sample name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when the labelled series does not exist yet (a counter never bumped)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(settings: Settings) -> tuple[Samples, httpx.Response]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.http_port}", timeout=30) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200, response.text
    return parse(response.text), response


async def test_scrape_counts_what_was_sent_over_smtp_and_the_panel(gateway: Gateway, settings: Settings) -> None:
    instance = settings.instance_name
    before, _ = await scrape(settings)
    relayed_before = len(sent_mail(settings))
    for number in range(3):
        assert (await send(settings, make_mail(subject=f"Metryki {number}")))[0] == 250
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.http_port}", timeout=60) as client:
        await put_directory(client, settings)
        for number in range(2):
            response = await new_message(client, bearer(token(settings)), subject=f"Z panelu {number}")
            assert response.status_code == 201, response.text
    await settle(gateway, outbox=True)
    after, response = await scrape(settings)

    assert response.headers["content-type"].startswith("text/plain; version=")
    accepted = "gateway_messages_accepted_total"
    assert (
        value(after, accepted, source="smtp", instance=instance)
        - value(before, accepted, source="smtp", instance=instance)
        == 3
    )
    assert (
        value(after, accepted, source="panel", instance=instance)
        - value(before, accepted, source="panel", instance=instance)
        == 2
    )
    latency = "gateway_ack_latency_seconds_count"
    assert (
        value(after, latency, source="smtp", instance=instance)
        - value(before, latency, source="smtp", instance=instance)
        == 3
    )

    def delta(name: str, **labels: str) -> float:
        return value(after, name, instance=instance, **labels) - value(before, name, instance=instance, **labels)

    # The steps' own counters: five entries stored, every relayed file counted once.
    assert delta("gateway_messages_processed_total", outcome="done") == 5
    assert delta("gateway_processing_seconds_count") == 5
    assert delta("gateway_outbox_attempts_total", result="sent") == len(sent_mail(settings)) - relayed_before > 0
    # Every sample says which instance it comes from.
    assert all(dict(labels).get("instance") == instance for _, labels in after)
    # Settled: nothing waits, in the journal or in the outbox.
    assert value(after, "gateway_journal_backlog", instance=instance) == 0
    assert value(after, "gateway_journal_oldest_pending_age_seconds", instance=instance) == 0
    assert value(after, "gateway_outbox_queue_depth", instance=instance) == 0


async def test_the_gauges_read_the_backlog_and_the_outbox_queue_from_the_database(
    settings_factory, tmp_path: Path
) -> None:
    # A relay nobody listens on: every outgoing message waits for a retry; no replay of the journal
    # during the test, so entries written by a second producer stay pending.
    settings = settings_factory(relay_url="smtp://127.0.0.1:9", journal_replay_seconds=3600)
    gateway = Gateway(settings)
    await gateway.start()
    try:
        assert gateway.components is not None
        assert (await send(settings, make_mail(subject="Czeka na relay")))[0] == 250
        await settle(gateway)
        # Another producer (as `gateway ingest` is) journals two entries nobody processes yet.
        other = Intake(gateway.components.journal_engine, instance_name="elsewhere")
        for number in range(2):
            await other.accept(make_mail(subject=f"W kolejce {number}").as_bytes(), source="file")

        async def gauges() -> Samples:
            return (await scrape(settings))[0]

        deadline = asyncio.get_running_loop().time() + 30
        while True:  # the first attempt at the relay fails, and the row is due again later
            samples = await gauges()
            if value(samples, "gateway_outbox_queue_depth", instance=settings.instance_name) >= 2:
                break
            assert asyncio.get_running_loop().time() < deadline, "outbox rows never showed up"
            await asyncio.sleep(0.1)
        instance = settings.instance_name
        assert value(samples, "gateway_journal_backlog", instance=instance) == 2
        assert value(samples, "gateway_journal_oldest_pending_age_seconds", instance=instance) > 0
        # The acknowledgement and the staff notification of the one processed message.
        assert value(samples, "gateway_outbox_queue_depth", instance=instance) == 2
        assert value(samples, "gateway_outbox_failed", instance=instance) == 0
    finally:
        await gateway.stop()


# --- two real instances on one PostgreSQL database ---------------------------------------------------


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh database on the test PostgreSQL server; no server is an error, never a skip."""
    with throwaway_pg_database("gw_metrics") as url:
        yield url


@pytest.fixture
def two_instances(tmp_path: Path, pg_database: str) -> Iterator[tuple[Served, Served]]:
    relay = f"maildir:{tmp_path / 'sent'}"
    started: list[Served] = []
    try:
        for name in ("gw-one", "gw-two"):
            env = serve_env(
                tmp_path / name,
                pg_database,
                relay,
                GATEWAY_INSTANCE_NAME=name,
                GATEWAY_BLOB_STORE="database",
                GATEWAY_PANEL_SECRET="test-panel-secret",
                GATEWAY_SIGNING_SECRET="test-signing-secret",
            )
            started.append(start_serve(env, tmp_path / f"{name}.log"))
        yield started[0], started[1]
    finally:
        for served in started:
            served.stop()


def _scrape_process(served: Served) -> Samples:
    response = httpx.get(f"http://127.0.0.1:{served.http_port}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    return parse(response.text)


def _deliver(served: Served, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", served.smtp_port, timeout=30) as client:
        client.send_message(make_mail(subject=subject))


def test_two_instances_each_report_their_own_counters(two_instances: tuple[Served, Served]) -> None:
    one, two = two_instances
    for number in range(3):
        _deliver(one, f"Do pierwszej {number}")
    for number in range(5):
        _deliver(two, f"Do drugiej {number}")

    def settled() -> bool:
        samples = _scrape_process(one)
        return (
            value(samples, "gateway_journal_backlog", instance="gw-one") == 0
            and value(samples, "gateway_outbox_queue_depth", instance="gw-one") == 0
        )

    wait_until(settled, 60, "both instances to process and send everything")
    first, second = _scrape_process(one), _scrape_process(two)
    accepted = "gateway_messages_accepted_total"
    assert value(first, accepted, source="smtp", instance="gw-one") == 3
    assert value(second, accepted, source="smtp", instance="gw-two") == 5
    # Neither reports the other's label: counters are per instance.
    assert all(dict(labels).get("instance") == "gw-one" for _, labels in first)
    assert all(dict(labels).get("instance") == "gw-two" for _, labels in second)
    # The shared state is the same seen from either.
    assert value(second, "gateway_journal_backlog", instance="gw-two") == 0
