"""SMTP throughput: how fast the gateway durably acknowledges mail, as a fraction of a no-op sink.

The same messages (2 000 by default, 300 with --quick), of about 2 KB and about 75 KB (a text body
plus a base64 attachment), are delivered at concurrency 1, 8 and 32 to
  (a) bench.sink, an aiosmtpd server whose handle_DATA answers "250 OK" at once, and
  (b) the real gateway (`python -m gateway serve`, a fresh database and data directory per run),
in the same run, alternating target per configuration. Each of `concurrency` connections does EHLO
once and then MAIL/RCPT/DATA repeatedly over the one session, as an MTA does, until the shared
messages are done. Latency is timed from MAIL FROM to the 250 after DATA.

The load generator is this process; the servers are child processes, pinned (when there are at
least two CPUs) to CPUs other than the generator's, so the server has a core of its own.

The gateway's database is a fresh SQLite file; `--backend postgresql` gives each gateway run a fresh
PostgreSQL database instead (and writes bench/out/smtp_throughput_postgresql.json).

Figures are printed as a table and written to bench/out/smtp_throughput.json. The target from
issue 3: the gateway at c=32, 2 KB reaches at least 40% of the sink's msg/s (PASS/MISS is reported,
never turned into an exit status).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import functools
import math
import os
import platform
import random
import secrets
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import aiosmtplib
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench.common import (
    OUT_DIR,
    CpuPlan,
    ServerFailed,
    free_port,
    load_average,
    percentile,
    pin_this_process,
    plan_cpus,
    scratch_dir,
    server_process,
    wait_for_http_ok,
    wait_for_port,
    write_json,
)
from bench.pg import throwaway_database

NAME = "smtp_throughput"
HOST = "127.0.0.1"
RECIPIENT = "bok@example.test"
FULL_MESSAGES = 2000
QUICK_MESSAGES = 300
CONCURRENCIES = (1, 8, 32)
SIZES = {"2KB": 2 * 1024, "75KB": 75 * 1024}
TARGET_CONCURRENCY = 32
TARGET_SIZE = "2KB"
TARGET_RATIO = 0.40
SMTP_TIMEOUT_S = 30.0
BACKENDS = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
MAX_RECONNECTS = 3

# --------------------------------------------------------------------------------------------
# The messages


CUSTOMERS = (
    ("Anna Kowalska", "anna.kowalska@example.pl"),
    ("Jerzy Wiśniewski", "jerzy.wisniewski@example.com"),
    ("Małgorzata Zając", "m.zajac@poczta.example.pl"),
    ("Zbigniew Łuczak", "zbyszek@firma-luczak.example"),
    ("Grażyna Szczęsna", "grazyna.szczesna@example.net"),
    ("Paweł Żółkiewski", "pawel.zolkiewski@example.org"),
)

SUBJECTS = (
    "Brak dostępu do internetu od wczoraj wieczorem",
    "Reklamacja faktury za marzec – naliczono podwójną opłatę",
    "Prośba o zmianę adresu korespondencyjnego",
    "Pytanie o przeniesienie usługi do nowego mieszkania",
    "Zgłoszenie awarii: router gubi połączenie co kilka minut",
    "Wypowiedzenie umowy – proszę o potwierdzenie",
    "Nie dotarła płatność za lipiec? Załączam potwierdzenie przelewu",
    "Źle działająca telewizja, część kanałów bez sygnału",
)

SENTENCES = (
    "Od wczoraj około godziny 19:00 nie mam dostępu do internetu, dioda na routerze świeci na czerwono.",
    "Zrestartowałem urządzenie dwukrotnie, odłączyłem też zasilanie na kilka minut, niestety bez zmian.",
    "Na fakturze za marzec widzę dwukrotnie naliczoną opłatę abonamentową, proszę o wyjaśnienie.",
    "Przelew wykonałam 14 dnia miesiąca, w załączniku przesyłam potwierdzenie z banku.",
    "Pracuję zdalnie, więc każda godzina przerwy oznacza dla mnie realne straty.",
    "Proszę o kontakt telefoniczny w godzinach 8–16 albo odpowiedź na tego maila.",
    "Czy jest możliwość przeniesienia usługi pod nowy adres bez zmiany warunków umowy?",
    "Sąsiedzi z klatki obok też zgłaszają podobne problemy, więc to chyba awaria w okolicy.",
    "Numer klienta podaję w stopce, umowa jest zawarta na moje nazwisko.",
    "Będę wdzięczna za szybką odpowiedź i informację, kiedy usterka zostanie usunięta.",
    "Zależy mi na tym, żeby technik przyjechał po południu, rano jestem w pracy.",
    "Gdyby potrzebne były dodatkowe dokumenty, chętnie je doślę.",
)

ATTACHMENT_NAMES = (
    "potwierdzenie_przelewu.pdf",
    "faktura-marzec-2026.pdf",
    "zdjęcie_routera.pdf",
    "umowa – skan.pdf",
)


@dataclass(frozen=True)
class Payload:
    """One message to deliver: envelope sender and the bytes without their Message-ID line.

    The Message-ID line is prepended per run (see message_bytes), so the same message can go to
    several servers, or twice to one long-running server, without being taken for a duplicate.
    """

    sender: str
    body: bytes


TEXT_MARK = "@@TEXT@@"
BLOB_MARK = b"@@BLOB@@"
STARTED = dt.datetime(2026, 3, 2, 8, 0, tzinfo=dt.UTC)
MESSAGE_ID_BYTES = 56  # the Message-ID line message_bytes() prepends, roughly


@functools.cache
def skeleton(customer: int, subject: int, attachment: int | None) -> bytes:
    """A message rendered by the email package with markers where the text and attachment go.

    Rendering (header folding above all) costs about a millisecond a message, so it is done once
    per combination and the per-message parts are spliced in; the headers do not depend on them.
    """
    name, address = CUSTOMERS[customer]
    message = EmailMessage(policy=SMTP_POLICY)
    message["From"] = Address(name, addr_spec=address)
    message["To"] = Address("Biuro Obsługi Klienta", addr_spec=RECIPIENT)
    message["Subject"] = SUBJECTS[subject]
    message["MIME-Version"] = "1.0"
    message["User-Agent"] = "Mozilla Thunderbird"
    message.set_content(TEXT_MARK, charset="utf-8", cte="8bit")
    if attachment is not None:
        message.add_attachment(BLOB_MARK, maintype="application", subtype="pdf", filename=ATTACHMENT_NAMES[attachment])
    return message.as_bytes()


def polish_text(rng: random.Random, name: str, budget: int) -> bytes:
    """A customer's plain text of at most about `budget` bytes (UTF-8, CRLF, lines under 73 chars)."""
    closing = f"Pozdrawiam serdecznie\n{name}\n"
    sentences: list[str] = []
    used = len("Dzień dobry,\n\n".encode()) + len(closing.encode()) + 4
    while True:
        sentence = rng.choice(SENTENCES)
        if sentences and used + len(sentence.encode()) + 1 > budget:
            break
        sentences.append(sentence)
        used += len(sentence.encode()) + 1
    paragraphs = [textwrap.fill(" ".join(sentences[at : at + 3]), width=72) for at in range(0, len(sentences), 3)]
    text = "Dzień dobry,\n\n" + "\n\n".join(paragraphs) + "\n\n" + closing
    return text.replace("\n", "\r\n").encode()


def build_payload(index: int, size: int, rng: random.Random) -> Payload:
    """A realistic Polish customer message of about `size` bytes; over 16 KB it carries a PDF."""
    customer = index % len(CUSTOMERS)
    attachment = index % len(ATTACHMENT_NAMES) if size > 16 * 1024 else None
    frame = skeleton(customer, index % len(SUBJECTS), attachment)
    date = f"Date: {format_datetime(STARTED + dt.timedelta(minutes=index))}\r\n".encode()
    room = size - len(frame) - len(date) - MESSAGE_ID_BYTES
    text = polish_text(rng, CUSTOMERS[customer][0], 1400 if attachment is not None else room)
    body = date + frame.replace(TEXT_MARK.encode() + b"\r\n", text, 1)
    if attachment is not None:
        room -= len(text)
        raw_len = int(room * 3 / 4 * 76 / 78)  # base64 grows by 4/3 and adds CRLF every 76 chars
        content = b"%PDF-1.4\n" + rng.randbytes(max(0, raw_len - 9))
        encoded = base64.encodebytes(content).replace(b"\n", b"\r\n")
        body = body.replace(base64.b64encode(BLOB_MARK) + b"\r\n", encoded, 1)
    return Payload(sender=CUSTOMERS[customer][1], body=body)


def build_payloads(count: int, size: int, seed: int = 2026) -> list[Payload]:
    rng = random.Random(seed + size)
    return [build_payload(index, size, rng) for index in range(count)]


def message_bytes(payload: Payload, run_tag: str, index: int) -> bytes:
    return f"Message-ID: <{run_tag}.{index:05d}@bench.example.pl>\r\n".encode() + payload.body


# --------------------------------------------------------------------------------------------
# One measured run: N messages, c connections, one server


@dataclass
class RunResult:
    target: str
    concurrency: int
    size: str
    planned: int
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    elapsed_s: float = 0.0
    timed_out: bool = False
    first_error: str | None = None
    startup_s: float | None = None

    @property
    def ok(self) -> int:
        return len(self.latencies_ms)

    @property
    def msg_per_s(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def note_error(self, error: BaseException | str) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = error if isinstance(error, str) else f"{type(error).__name__}: {error}"

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies_ms)
        return {
            "target": self.target,
            "concurrency": self.concurrency,
            "size": self.size,
            "planned": self.planned,
            "ok": self.ok,
            "errors": self.errors,
            "not_sent": self.planned - self.ok - self.errors,
            "elapsed_s": round(self.elapsed_s, 3),
            "msg_per_s": round(self.msg_per_s, 1),
            "p50_ms": _rounded(percentile(ordered, 50)),
            "p99_ms": _rounded(percentile(ordered, 99)),
            "mean_ms": _rounded(sum(ordered) / len(ordered) if ordered else math.nan),
            "max_ms": _rounded(ordered[-1] if ordered else math.nan),
            "timed_out": self.timed_out,
            "first_error": self.first_error,
            "startup_s": None if self.startup_s is None else round(self.startup_s, 2),
        }


def _rounded(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 2)


@dataclass
class Delivery:
    """What every connection of a run shares."""

    payloads: Sequence[Payload]
    run_tag: str
    indices: Iterator[int]  # shared: each index is taken by exactly one connection
    deadline: float  # time.perf_counter() after which no connection starts another message
    result: RunResult
    advance: Callable[[], None]
    mail_options: list[str]


async def open_connection(port: int) -> aiosmtplib.SMTP:
    client = aiosmtplib.SMTP(
        hostname=HOST, port=port, timeout=SMTP_TIMEOUT_S, start_tls=False, local_hostname="loadgen.bench.invalid"
    )
    await client.connect()
    await client.ehlo()
    return client


async def close_quietly(client: aiosmtplib.SMTP) -> None:
    try:
        if client.is_connected:
            await asyncio.wait_for(client.quit(), timeout=5)
    except (TimeoutError, aiosmtplib.SMTPException, OSError):
        client.close()


async def deliver(client: aiosmtplib.SMTP, port: int, shared: Delivery) -> aiosmtplib.SMTP:
    """Send messages over one session until none are left; returns the (possibly reopened) client."""
    reconnects = 0
    while time.perf_counter() < shared.deadline:
        index = next(shared.indices, None)
        if index is None:
            return client
        payload = shared.payloads[index]
        data = message_bytes(payload, shared.run_tag, index)
        started = time.perf_counter()
        try:
            await client.sendmail(payload.sender, [RECIPIENT], data, mail_options=shared.mail_options)
        except (aiosmtplib.SMTPException, OSError) as error:
            shared.result.note_error(error)
            if client.is_connected:
                continue
            if reconnects >= MAX_RECONNECTS:
                return client  # the others take the remaining messages, or the run ends short
            reconnects += 1
            try:
                client = await open_connection(port)
            except (aiosmtplib.SMTPException, OSError) as reconnect_error:
                shared.result.note_error(reconnect_error)
                return client
            continue
        shared.result.latencies_ms.append((time.perf_counter() - started) * 1000)
        shared.advance()
    shared.result.timed_out = True
    return client


async def measure(
    *,
    target: str,
    port: int | Sequence[int],
    payloads: Sequence[Payload],
    size: str,
    concurrency: int,
    deadline_s: float,
    advance: Callable[[], None],
) -> RunResult:
    """Deliver every payload to port over `concurrency` sessions; connecting is not timed.

    Given several ports (instances of one cluster), the sessions are spread over them in turn.
    """
    result = RunResult(target=target, concurrency=concurrency, size=size, planned=len(payloads))
    ports = [port] if isinstance(port, int) else list(port)
    session_ports = [ports[number % len(ports)] for number in range(concurrency)]
    opened = await asyncio.gather(*(open_connection(p) for p in session_ports), return_exceptions=True)
    clients = [client for client in opened if isinstance(client, aiosmtplib.SMTP)]
    failures = [failure for failure in opened if isinstance(failure, BaseException)]
    if failures:
        result.note_error(f"could not open {len(failures)} of {concurrency} connection(s): {failures[0]!r}")
        await asyncio.gather(*(close_quietly(client) for client in clients))
        return result
    mail_options = ["BODY=8BITMIME"] if clients[0].supports_extension("8bitmime") else []
    run_tag = f"{target}.c{concurrency}.{size}.{secrets.token_hex(4)}"
    await warm_up(clients, payloads[0], run_tag, mail_options)
    started = time.perf_counter()
    shared = Delivery(
        payloads, run_tag, iter(range(len(payloads))), started + deadline_s, result, advance, mail_options
    )
    tasks = [asyncio.create_task(deliver(client, p, shared)) for client, p in zip(clients, session_ports, strict=False)]
    # Connections stop by themselves at the deadline; cancelling is the fallback for a hung server.
    done, pending = await asyncio.wait(tasks, timeout=deadline_s + SMTP_TIMEOUT_S + 5)
    result.elapsed_s = time.perf_counter() - started
    for task in pending:
        task.cancel()
    result.timed_out = result.timed_out or bool(pending)
    await asyncio.gather(*pending, return_exceptions=True)
    final_clients: list[aiosmtplib.SMTP] = []
    for task in done:
        failure = task.exception()
        if failure is None:
            final_clients.append(task.result())
        else:
            result.note_error(failure)  # unexpected: the connection's remaining messages were not sent
    await asyncio.gather(*(close_quietly(client) for client in clients + final_clients))
    return result


async def warm_up(clients: Sequence[aiosmtplib.SMTP], payload: Payload, run_tag: str, mail_options: list[str]) -> None:
    """One untimed message per connection, so first-use costs on either side stay out of the figures."""

    async def one(number: int, client: aiosmtplib.SMTP) -> None:
        data = message_bytes(payload, f"{run_tag}.warmup", number)
        try:
            await client.sendmail(payload.sender, [RECIPIENT], data, mail_options=mail_options)
        except (aiosmtplib.SMTPException, OSError):
            pass  # the measured run will count and report errors

    await asyncio.gather(*(one(number, client) for number, client in enumerate(clients)))


# --------------------------------------------------------------------------------------------
# The servers


@dataclass(frozen=True)
class Options:
    messages: int
    concurrencies: tuple[int, ...]
    sizes: tuple[str, ...]
    targets: tuple[str, ...]
    target_port: int | None
    backend: str
    deadline_s: float
    budget_s: float
    startup_timeout_s: float
    cpu_plan: CpuPlan
    out: Path
    keep_tmp: bool


def gateway_env(
    workdir: Path, smtp_port: int, http_port: int, database_url: str | None = None, **extra: str
) -> dict[str, str]:
    """The environment of a benchmarked `gateway serve`: SQLite in workdir unless database_url is
    given; a PostgreSQL gateway keeps attachment contents in the database (SPEC §10)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("GATEWAY_")}
    env.update(
        GATEWAY_CONFIG="/nonexistent",
        GATEWAY_DATABASE_URL=database_url or f"sqlite:///{workdir / 'gw.db'}",
        GATEWAY_DATA_DIR=str(workdir / "data"),
        GATEWAY_SMTP_HOST=HOST,
        GATEWAY_SMTP_PORT=str(smtp_port),
        GATEWAY_HTTP_HOST=HOST,
        GATEWAY_HTTP_PORT=str(http_port),
        GATEWAY_RELAY_URL=f"maildir:{workdir / 'sent'}",
        GATEWAY_SUPPORT_ADDRESS=RECIPIENT,
        # The load generator is one IP standing for many MTAs: the per-IP cap (20) would refuse c=32.
        GATEWAY_SMTP_MAX_CONNECTIONS_PER_IP="128",
    )
    if "GATEWAY_DNS_RESOLVER" not in extra:
        # This machine's resolver is not reachable; the benchmarks that measure processing pass a
        # local DNS server (bench.sustained.local_dns), the others measure without sender checks.
        env["GATEWAY_SENDER_VERIFICATION"] = "off"
    if database_url is not None and not database_url.startswith("sqlite"):
        env["GATEWAY_BLOB_STORE"] = "database"
    env.update(extra)
    return env


@contextmanager
def gateway_database(backend: str) -> Iterator[str | None]:
    """None for SQLite (gateway_env puts it in the working directory), else a throwaway database."""
    if backend == "sqlite":
        yield None
        return
    with throwaway_database("bench_smtp") as url:
        yield url


class Bench:
    """Runs every configuration against every target and collects the results."""

    def __init__(self, options: Options, console: Console, progress: Progress | None) -> None:
        self.options = options
        self.console = console
        self.progress = progress
        self.results: list[RunResult] = []
        self.notes: list[str] = []
        self.message_sizes: dict[str, float] = {}
        self.gateway_broken = False
        self.started = time.monotonic()
        self.load_before = load_average()
        self.load_after = ""

    async def run(self, tmp: Path) -> None:
        payload_sets = self.build_messages()
        async with AsyncExitStack() as stack:
            sink_port = await self.start_sink(stack, tmp) if "sink" in self.options.targets else None
            for size in self.options.sizes:
                for concurrency in self.options.concurrencies:
                    for target in self.options.targets:
                        if time.monotonic() - self.started > self.options.budget_s:
                            self.notes.append(f"time budget of {self.options.budget_s:.0f} s used up; skipped the rest")
                            return
                        await self.run_one(target, size, concurrency, payload_sets[size], tmp, sink_port)

    def build_messages(self) -> dict[str, list[Payload]]:
        payload_sets: dict[str, list[Payload]] = {}
        for size in self.options.sizes:
            self.console.log(f"building {self.options.messages} messages of ~{size}")
            payloads = build_payloads(self.options.messages, SIZES[size])
            payload_sets[size] = payloads
            self.message_sizes[size] = sum(len(message_bytes(p, "x" * 30, 0)) for p in payloads) / len(payloads)
        return payload_sets

    async def start_sink(self, stack: AsyncExitStack, tmp: Path) -> int:
        port = free_port(HOST)
        argv = [sys.executable, "-m", "bench.sink", "--host", HOST, "--port", str(port)]
        sink = stack.enter_context(
            server_process("sink", argv, log_path=tmp / "sink.log", cpus=self.options.cpu_plan.servers)
        )
        await wait_for_port(sink, HOST, port, timeout_s=15)
        return port

    async def run_one(
        self, target: str, size: str, concurrency: int, payloads: list[Payload], tmp: Path, sink_port: int | None
    ) -> None:
        label = f"{target:<8} c={concurrency:<2} {size:>4}"
        if target == "gateway" and self.gateway_broken:
            return
        task = self.progress.add_task(label, total=len(payloads)) if self.progress else None
        advance = self.advancer(task)
        if target == "gateway":
            result = await self.measure_gateway(size, concurrency, payloads, tmp, advance)
        else:
            port = sink_port if target == "sink" else self.options.target_port
            assert port is not None
            result = await self.measure_at(target, port, size, concurrency, payloads, advance)
        self.results.append(result)
        if self.progress is None:
            self.console.log(f"{label}: {result.ok}/{result.planned} ok, {result.msg_per_s:.0f} msg/s")

    def advancer(self, task: TaskID | None) -> Callable[[], None]:
        progress = self.progress
        if progress is None or task is None:
            return lambda: None
        return lambda: progress.advance(task)

    async def measure_at(
        self, target: str, port: int, size: str, concurrency: int, payloads: list[Payload], advance: Callable[[], None]
    ) -> RunResult:
        return await measure(
            target=target,
            port=port,
            payloads=payloads,
            size=size,
            concurrency=concurrency,
            deadline_s=self.options.deadline_s,
            advance=advance,
        )

    async def measure_gateway(
        self, size: str, concurrency: int, payloads: list[Payload], tmp: Path, advance: Callable[[], None]
    ) -> RunResult:
        """A fresh gateway (empty database and data directory) for this one configuration."""
        workdir = tmp / f"gateway-{size}-c{concurrency}"
        workdir.mkdir()
        smtp_port, http_port = free_port(HOST), free_port(HOST)
        argv = [sys.executable, "-m", "gateway", "serve"]
        with (
            gateway_database(self.options.backend) as database_url,
            server_process(
                "gateway",
                argv,
                log_path=workdir / "gateway.log",
                env=gateway_env(workdir, smtp_port, http_port, database_url),
                cpus=self.options.cpu_plan.servers,
            ) as gateway,
        ):
            try:
                startup_s = await wait_for_http_ok(gateway, HOST, http_port, "/healthz", self.options.startup_timeout_s)
            except ServerFailed as error:
                self.gateway_broken = True
                self.notes.append("the gateway did not start, so the remaining gateway runs were skipped")
                self.console.print(f"[red]gateway did not start:[/red] {error}", markup=True, highlight=False)
                result = RunResult(target="gateway", concurrency=concurrency, size=size, planned=len(payloads))
                result.first_error = f"did not start: {str(error).splitlines()[0]}"
                return result
            result = await self.measure_at("gateway", smtp_port, size, concurrency, payloads, advance)
            result.startup_s = startup_s
            if gateway.popen.poll() is not None:
                self.notes.append(f"gateway exited during c={concurrency} {size}: status {gateway.popen.returncode}")
        return result


# --------------------------------------------------------------------------------------------
# Report


def result_for(results: Sequence[RunResult], target: str, size: str, concurrency: int) -> RunResult | None:
    for result in results:
        if (result.target, result.size, result.concurrency) == (target, size, concurrency):
            return result
    return None


def ratio(results: Sequence[RunResult], size: str, concurrency: int) -> float | None:
    sink = result_for(results, "sink", size, concurrency)
    gateway = result_for(results, "gateway", size, concurrency)
    if sink is None or gateway is None or sink.msg_per_s == 0 or gateway.ok == 0:
        return None
    return gateway.msg_per_s / sink.msg_per_s


def verdict(results: Sequence[RunResult]) -> dict[str, Any]:
    measured = ratio(results, TARGET_SIZE, TARGET_CONCURRENCY)
    outcome = "n/a" if measured is None else ("PASS" if measured >= TARGET_RATIO else "MISS")
    return {
        "concurrency": TARGET_CONCURRENCY,
        "size": TARGET_SIZE,
        "required_ratio": TARGET_RATIO,
        "ratio": None if measured is None else round(measured, 3),
        "verdict": outcome,
    }


def _row(result: RunResult, vs_sink: float | None) -> list[str]:
    ordered = sorted(result.latencies_ms)
    acked = f"{result.ok}/{result.planned}"
    if result.ok < result.planned:
        acked = f"[{'yellow' if result.timed_out and not result.errors else 'red'}]{acked}[/]"
    rate = f"{result.msg_per_s:,.0f}" if result.ok else "[red]failed[/red]"
    p50, p99 = (f"{percentile(ordered, pct):.2f}" if ordered else "–" for pct in (50, 99))
    return [result.target, acked, rate, p50, p99, "" if vs_sink is None else f"{vs_sink:.0%}"]


def render_table(options: Options, results: Sequence[RunResult]) -> Table:
    """One row per target, grouped by (size, concurrency); the gateway's row carries its ratio to the sink."""
    title = f"SMTP throughput, {options.messages} messages per run"
    if options.backend != "sqlite":
        title += f", gateway on {BACKENDS[options.backend]}"
    table = Table(title=title, title_justify="left")
    for name in ("size", "conc", "target", "acked", "msg/s", "p50 ms", "p99 ms", "vs sink"):
        table.add_column(name, justify="left" if name in ("size", "target") else "right")
    for size in options.sizes:
        for concurrency in options.concurrencies:
            rows = [result_for(results, target, size, concurrency) for target in options.targets]
            measured = [result for result in rows if result is not None]
            for number, result in enumerate(measured):
                vs_sink = ratio(results, size, concurrency) if result.target == "gateway" else None
                table.add_row(size, str(concurrency), *_row(result, vs_sink), end_section=number == len(measured) - 1)
    return table


def report(console: Console, options: Options, bench: Bench, message_sizes: dict[str, float]) -> dict[str, Any]:
    console.print(render_table(options, bench.results))
    sizes = ", ".join(f"{size} ≈ {average:,.0f} B" for size, average in message_sizes.items())
    console.print(f"average message size: {sizes}; {options.cpu_plan.describe()}")
    console.print(f"load average before/after: {bench.load_before} / {bench.load_after}")
    if any(result.timed_out for result in bench.results):
        console.print(
            f"acked < {options.messages}: the run reached its {options.deadline_s:g} s deadline; "
            "msg/s counts what was acknowledged by then"
        )
    for result in bench.results:
        if result.first_error:
            console.print(
                f"[yellow]{result.target} c={result.concurrency} {result.size}:[/yellow] {result.first_error}"
            )
    for note in bench.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    outcome = verdict(bench.results)
    if {"sink", "gateway"} <= set(options.targets):
        colour = {"PASS": "green", "MISS": "red"}.get(outcome["verdict"], "yellow")
        measured = ratio(bench.results, TARGET_SIZE, TARGET_CONCURRENCY)
        shown = "was not measured" if measured is None else f"reached {measured:.0%} of the sink's msg/s"
        console.print(
            f"[bold {colour}]{outcome['verdict']}[/bold {colour}]: the gateway at c={TARGET_CONCURRENCY}, "
            f"{TARGET_SIZE} {shown} (target: at least {TARGET_RATIO:.0%})"
        )
    return outcome


def figures(options: Options, bench: Bench, message_sizes: dict[str, float], outcome: dict[str, Any]) -> dict[str, Any]:
    ratios = [
        {"size": size, "concurrency": concurrency, "gateway_over_sink": None if r is None else round(r, 3)}
        for size in options.sizes
        for concurrency in options.concurrencies
        for r in [ratio(bench.results, size, concurrency)]
    ]
    return {
        "benchmark": NAME,
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "settings": {
            "backend": options.backend,
            "messages": options.messages,
            "concurrencies": list(options.concurrencies),
            "sizes": list(options.sizes),
            "average_message_bytes": {size: round(average) for size, average in message_sizes.items()},
            "targets": list(options.targets),
            "pinning": options.cpu_plan.describe(),
            "deadline_per_run_s": options.deadline_s,
        },
        "load_average_1min": {"before": bench.load_before, "after": bench.load_after},
        "results": [result.summary() for result in bench.results],
        "ratios": ratios,
        "target": outcome,
        "notes": bench.notes,
    }


# --------------------------------------------------------------------------------------------
# Command line


def parse_options(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench smtp_throughput", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_MESSAGES} messages per run instead of {FULL_MESSAGES}"
    )
    parser.add_argument("--messages", type=int, help="messages per run (overrides --quick)")
    parser.add_argument(
        "--concurrency", default=",".join(map(str, CONCURRENCIES)), help="comma-separated, default %(default)s"
    )
    parser.add_argument("--sizes", default=",".join(SIZES), help=f"comma-separated from {', '.join(SIZES)}")
    parser.add_argument("--targets", default="sink,gateway", help="comma-separated from sink, gateway")
    parser.add_argument("--target-port", type=int, help="measure only an SMTP server already listening on this port")
    parser.add_argument(
        "--backend",
        choices=list(BACKENDS),
        default="sqlite",
        help="the gateway's database: a fresh SQLite file (default) or a fresh PostgreSQL database (BENCH_PG_URL)",
    )
    parser.add_argument("--deadline", type=float, default=40.0, help="seconds one run may take (default %(default)s)")
    parser.add_argument("--budget", type=float, default=300.0, help="seconds after which no new run starts")
    parser.add_argument("--startup-timeout", type=float, default=60.0, help="seconds to wait for /healthz")
    parser.add_argument("--no-pin", action="store_true", help="do not pin load generator and servers to separate CPUs")
    parser.add_argument(
        "--out", type=Path, help=f"default bench/out/{NAME}.json ({NAME}_postgresql.json with PostgreSQL)"
    )
    parser.add_argument("--keep-tmp", action="store_true", help="keep the servers' working directories and logs")
    args = parser.parse_args(argv)
    sizes = tuple(size.strip() for size in args.sizes.split(","))
    unknown = [size for size in sizes if size not in SIZES]
    if unknown:
        parser.error(f"unknown size(s) {unknown}; choose from {list(SIZES)}")
    targets = ("port",) if args.target_port else tuple(target.strip() for target in args.targets.split(","))
    if not set(targets) <= {"sink", "gateway", "port"}:
        parser.error("targets are sink and gateway")
    return Options(
        messages=args.messages or (QUICK_MESSAGES if args.quick else FULL_MESSAGES),
        concurrencies=tuple(int(value) for value in args.concurrency.split(",")),
        sizes=sizes,
        targets=targets,
        target_port=args.target_port,
        backend=args.backend,
        deadline_s=args.deadline,
        budget_s=args.budget,
        startup_timeout_s=args.startup_timeout,
        cpu_plan=plan_cpus(pin=not args.no_pin and args.target_port is None),
        out=args.out or OUT_DIR / (NAME + ("" if args.backend == "sqlite" else f"_{args.backend}") + ".json"),
        keep_tmp=args.keep_tmp,
    )


async def run_bench(options: Options, console: Console, progress: Progress | None, tmp: Path) -> Bench:
    bench = Bench(options, console, progress)
    try:
        await bench.run(tmp)
    finally:
        bench.load_after = load_average()
    return bench


def main(argv: Sequence[str] = ()) -> int:
    options = parse_options(argv)
    console = Console()
    pin_this_process(options.cpu_plan.client)
    progress = (
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            refresh_per_second=4,
        )
        if console.is_terminal
        else None
    )
    with scratch_dir("bench-smtp-", keep=options.keep_tmp, console=console, kept="servers' working directories") as tmp:
        if progress is not None:
            with progress:
                bench = asyncio.run(run_bench(options, console, progress, tmp))
        else:
            bench = asyncio.run(run_bench(options, console, progress, tmp))
    outcome = report(console, options, bench, bench.message_sizes)
    path = write_json(options.out, figures(options, bench, bench.message_sizes, outcome))
    console.print(f"figures written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
