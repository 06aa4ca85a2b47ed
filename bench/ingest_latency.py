"""Ingest latency at scale: does processing a message get slower with a million existing cases?

For each backend (SQLite, PostgreSQL) two databases are prepared: one with 1 000 existing cases
and one with 1 000 000 (100 000 with --quick, and 150 messages instead of 300), bulk-loaded by bench.dataset (case, participant,
inbound message, acknowledgement message and outbox row, processed_entry; accounts and contacts).
Then the same workload of new messages is journaled into each through the real Intake.accept and
processed one by one through the real `Components.pipeline.process(journal_id)`, timed per call:

- 25% new cases from unknown senders, 25% new cases from known contacts (account lookup),
- 30% follow-ups by In-Reply-To/References (our acknowledgement's and the customer's Message-ID),
- 15% follow-ups by a `[#NUMBER]` subject tag only,
- 5% MTA retries of an existing message (same Message-ID and sender: found as a duplicate),

follow-ups from the case's requester, to a uniformly random existing case half of the time and to
one of the newest 5% otherwise (picked by position in time, so both sizes get the same mix of open
and closed targets). The two databases are processed alternately, message by message,
so that whatever else the machine does hits both alike; the first messages are a warm-up.

Reported per backend: p50/p99 with few and with many cases, and p99(many)/p99(few) — the target
(issue 7) is at most 1.5 (PASS/MISS). Figures go to bench/out/ingest_latency.json.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import text

from bench import dataset as ds
from bench.common import (
    Latencies,
    RunClock,
    add_run_options,
    make_console,
    pin_this_process,
    ratio_or_nan,
    rounded,
    scratch_dir,
    verdict,
    verdict_markup,
    write_report,
)
from bench.pg import NoPostgres, create_database, drop_database
from bench.smtp_throughput import CUSTOMERS, SUBJECTS, polish_text
from gateway.app import Components
from gateway.intake import Intake
from gateway.settings import Settings, load_settings

NAME = "ingest_latency"
SMALL = 1_000
LARGE = 1_000_000
QUICK_LARGE = 100_000
MESSAGES = 300
QUICK_MESSAGES = 150
WARM_UP = 20
CASES_PER_ACCOUNT = 40
TARGET_RATIO = 1.5
RECENT_SHARE = 0.05  # half the follow-ups go to the newest 5% of the cases
SEED = 7
KINDS = {"new_stranger": 25, "new_contact": 25, "reply": 30, "subject_tag": 15, "retry": 5}
EXPECTED = {"retry": "duplicate"}  # every other kind: "done"


# --------------------------------------------------------------------------------------------
# The workload


@dataclass(frozen=True)
class Mail:
    kind: str
    raw: bytes
    sender: str


def workload(data: ds.Dataset, count: int, seed: int = SEED) -> list[Mail]:
    """`count` messages; kinds and texts depend only on the seed, and the targets' positions in time
    too (every draw is one random() call, so the streams stay in step whatever the data's size)."""
    kinds_rng, text_rng, target_rng = random.Random(seed), random.Random(seed + 1), random.Random(seed + 2)
    kinds = kinds_rng.choices(list(KINDS), weights=list(KINDS.values()), k=count)
    return [_mail(kind, number, data, text_rng, target_rng) for number, kind in enumerate(kinds)]


def _target(data: ds.Dataset, rng: random.Random) -> ds.ExistingCase:
    """A random existing case, picked by its position in time so that both sizes see the same ages
    (and so the same statuses: open, closed within the reopen window, or closed long ago)."""
    spot = rng.random()
    position = spot if rng.random() < 0.5 else 1 - RECENT_SHARE * spot
    return data.existing(min(data.shape.cases - 1, int(position * data.shape.cases)))


def _mail(kind: str, number: int, data: ds.Dataset, text_rng: random.Random, target_rng: random.Random) -> Mail:
    name, _ = CUSTOMERS[number % len(CUSTOMERS)]
    headers: dict[str, str] = {"Message-ID": f"<ingest.{number:05d}.{kind}@klient.example.pl>"}
    subject = SUBJECTS[number % len(SUBJECTS)]
    if kind == "new_stranger":
        sender = f"nowy.klient.{number}@poczta.example.com"
    elif kind == "new_contact":
        account = int(target_rng.random() * data.shape.accounts)
        sender = data.contact_email(account, int(target_rng.random() * 2))
    else:
        case = _target(data, target_rng)
        sender = case.requester
        subject = f"Re: {case.subject}"
        if kind == "reply":
            headers["In-Reply-To"] = f"<{case.ack_message_id}>"
            headers["References"] = f"<{case.inbound_message_id}> <{case.ack_message_id}>"
        elif kind == "subject_tag":
            subject = f"Re: [#{case.number}] {case.subject}"
        else:  # retry: the customer's original message once more
            headers["Message-ID"] = f"<{case.inbound_message_id}>"
            subject = case.subject
    body = polish_text(text_rng, name, 1500).decode()
    return Mail(kind=kind, raw=_render(name, sender, subject, headers, body, number), sender=sender)


def _render(name: str, sender: str, subject: str, headers: dict[str, str], body: str, number: int) -> bytes:
    message = EmailMessage(policy=SMTP_POLICY)
    message["From"] = f"{name} <{sender}>"
    message["To"] = ds.SUPPORT
    message["Subject"] = subject
    message["Date"] = format_datetime(datetime(2026, 3, 2, 8, number % 60, tzinfo=UTC))
    for header, value in headers.items():
        message[header] = value
    message.set_content(body, charset="utf-8", cte="8bit")
    return message.as_bytes()


# --------------------------------------------------------------------------------------------
# One database: prepared, loaded, then fed the workload


@dataclass
class Target:
    """One database of one backend with its loaded cases and the gateway components on it."""

    backend: str
    data: ds.Dataset
    database_url: str
    workdir: Path
    load_s: float = 0.0
    components: Components | None = None
    journal_ids: list[int] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    by_kind_ms: dict[str, list[float]] = field(default_factory=dict)
    outcomes: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    threaded_into_existing: int | None = None
    following_existing: int | None = None

    @property
    def cases(self) -> int:
        return self.data.shape.cases

    @property
    def journal_path(self) -> Path:
        return self.workdir / "data" / "journal.db"

    def settings(self) -> Settings:
        return load_settings(
            database_url=self.database_url,
            data_dir=self.workdir / "data",
            blob_store="database" if self.backend == "postgresql" else "disk",
            relay_url=f"maildir:{self.workdir / 'sent'}",
            support_address=ds.SUPPORT,
            staff_addresses=[],
            panel_secret="bench-panel-secret",
            signing_secret="bench-signing-secret",
            instance_name=f"bench-{self.backend}-{self.cases}",
        )


def load(target: Target, console: Console) -> None:
    started = time.perf_counter()
    if target.backend == "sqlite":
        ds.prepare_schema(target.database_url, target.journal_path)
        report = ds.load_sqlite(target.data, target.database_url, target.journal_path)
    else:
        ds.prepare_schema(target.database_url)
        report = ds.load_postgresql(target.data, target.database_url)
    target.load_s = time.perf_counter() - started
    console.log(f"{target.backend}: {target.cases:,} cases loaded ({report.rows:,} rows) in {target.load_s:.1f} s")


async def _journal(intake: Intake, mails: Sequence[Mail]) -> list[int]:
    ids = []
    for mail in mails:  # one at a time, so ids follow the workload's order
        receipt = await intake.accept(
            mail.raw, source="smtp", meta={"mail_from": mail.sender, "rcpt_tos": [ds.SUPPORT]}
        )
        ids.append(receipt.journal_id)
    return ids


def start(target: Target, mails: Sequence[Mail]) -> None:
    """Gateway components on the loaded database, and the whole workload journaled (not timed)."""
    components = Components.build(target.settings())
    target.components = components
    intake = Intake(components.journal_engine, instance_name=components.settings.instance_name)
    target.journal_ids = asyncio.run(_journal(intake, mails))


def process_one(target: Target, position: int, mail: Mail, timed: bool) -> None:
    assert target.components is not None
    started = time.perf_counter()
    outcome = target.components.pipeline.process(target.journal_ids[position])
    elapsed_ms = (time.perf_counter() - started) * 1000
    target.outcomes[outcome] += 1
    if outcome != EXPECTED.get(mail.kind, "done"):
        target.unexpected.append(f"#{position} {mail.kind}: {outcome}")
    if timed:
        target.latencies_ms.append(elapsed_ms)
        target.by_kind_ms.setdefault(mail.kind, []).append(elapsed_ms)


def count_found(target: Target) -> None:
    """How many measured messages landed in a loaded case, and how many new cases refer to a loaded
    (long closed) one: proof that the lookups found what they were pointed at."""
    assert target.components is not None
    loaded = {"first": target.journal_ids[0], "loaded": target.cases}
    with target.components.engine.connect() as connection:
        target.threaded_into_existing = connection.execute(
            text("SELECT count(*) FROM processed_entry WHERE journal_id >= :first AND case_id <= :loaded"), loaded
        ).scalar_one()
        target.following_existing = connection.execute(
            text("SELECT count(*) FROM support_case WHERE id > :loaded AND follows_case_id <= :loaded"), loaded
        ).scalar_one()


def measure_pair(small: Target, large: Target, warm_up: int, messages: int, console: Console) -> None:
    """The same workload through both databases, alternating which goes first."""
    mails_small, mails_large = workload(small.data, warm_up + messages), workload(large.data, warm_up + messages)
    start(small, mails_small)
    start(large, mails_large)
    for position in range(warm_up + messages):
        pair = [(small, mails_small[position]), (large, mails_large[position])]
        for target, mail in pair if position % 2 == 0 else reversed(pair):
            process_one(target, position, mail, timed=position >= warm_up)
    for target in (small, large):
        count_found(target)
        console.log(
            f"{target.backend} {target.cases:>9,} cases: p50 {Latencies.of(target.latencies_ms).p50_ms:.1f} ms, "
            f"p99 {Latencies.of(target.latencies_ms).p99_ms:.1f} ms, outcomes {dict(target.outcomes)}"
        )


# --------------------------------------------------------------------------------------------
# Databases


@contextmanager
def database(backend: str, workdir: Path, label: str) -> Iterator[str]:
    """A fresh, empty database URL for `backend`; gone afterwards (the SQLite files with workdir)."""
    if backend == "sqlite":
        yield f"sqlite:///{workdir / 'gateway.db'}"
        return
    url = create_database(f"bench_ingest_{label}")
    try:
        yield url
    finally:
        drop_database(url)


def run_backend(backend: str, options: Options, console: Console, tmp: Path) -> dict[str, Any]:
    now = datetime.now(UTC)
    sizes = {"few": SMALL, "many": options.large}
    with ExitStack() as stack:
        if not options.keep_tmp:  # the large SQLite database is gigabytes: gone as soon as it is done with
            stack.callback(shutil.rmtree, tmp / backend, ignore_errors=True)
        targets: dict[str, Target] = {}
        for label, cases in sizes.items():
            workdir = tmp / backend / label
            workdir.mkdir(parents=True)
            url = stack.enter_context(database(backend, workdir, label))
            shape = ds.Shape(cases=cases, accounts=max(2, cases // CASES_PER_ACCOUNT))
            targets[label] = Target(backend=backend, data=ds.Dataset(shape, now), database_url=url, workdir=workdir)
            load(targets[label], console)
        try:
            measure_pair(targets["few"], targets["many"], options.warm_up, options.messages, console)
        finally:
            for target in targets.values():
                if target.components is not None:
                    target.components.dispose()
    return summarize(backend, targets["few"], targets["many"])


# --------------------------------------------------------------------------------------------
# Report


def summarize(backend: str, few: Target, many: Target) -> dict[str, Any]:
    lat_few, lat_many = Latencies.of(few.latencies_ms), Latencies.of(many.latencies_ms)
    p99_ratio = ratio_or_nan(lat_many.p99_ms, lat_few.p99_ms)
    p50_ratio = ratio_or_nan(lat_many.p50_ms, lat_few.p50_ms)
    measured = not (few.unexpected or many.unexpected) and lat_few.count > 0 and not math.isnan(p99_ratio)
    return {
        "backend": backend,
        "sizes": [_target_summary(few, lat_few), _target_summary(many, lat_many)],
        "p50_ratio": rounded(p50_ratio, 3),
        "p99_ratio": rounded(p99_ratio, 3),
        "target_p99_ratio": TARGET_RATIO,
        "verdict": verdict(p99_ratio <= TARGET_RATIO if measured else None),
    }


def _target_summary(target: Target, latencies: Latencies) -> dict[str, Any]:
    return {
        "cases": target.cases,
        "load_s": round(target.load_s, 1),
        **latencies.as_dict(),
        "p50_by_kind_ms": {
            kind: rounded(Latencies.of(values).p50_ms) for kind, values in sorted(target.by_kind_ms.items())
        },
        "p99_by_kind_ms": {
            kind: rounded(Latencies.of(values).p99_ms) for kind, values in sorted(target.by_kind_ms.items())
        },
        "outcomes": dict(target.outcomes),
        "threaded_into_loaded_cases": target.threaded_into_existing,
        "new_cases_following_loaded_ones": target.following_existing,
        "unexpected_outcomes": target.unexpected[:20],
    }


def render(results: Sequence[dict[str, Any]], options: Options) -> Table:
    table = Table(title=f"Ingest latency, {options.messages} messages through pipeline.process()", title_justify="left")
    columns = (
        "backend",
        "existing cases",
        "load s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "into loaded cases",
        "following loaded",
        "p99 ratio",
        "target",
    )
    for name in columns:
        table.add_column(name, justify="left" if name == "backend" else "right")
    for result in results:
        for number, size in enumerate(result["sizes"]):
            last = number == len(result["sizes"]) - 1
            table.add_row(
                result["backend"],
                f"{size['cases']:,}",
                f"{size['load_s']:.0f}",
                _ms(size["p50_ms"]),
                _ms(size["p99_ms"]),
                _ms(size["max_ms"]),
                str(size["threaded_into_loaded_cases"]),
                str(size["new_cases_following_loaded_ones"]),
                f"{result['p99_ratio']:.2f}" if last and result["p99_ratio"] is not None else "",
                verdict_markup(result["verdict"]) if last else "",
                end_section=last,
            )
    return table


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


# --------------------------------------------------------------------------------------------
# Command line


@dataclass(frozen=True)
class Options:
    large: int
    messages: int
    warm_up: int
    backends: tuple[str, ...]
    out: Path
    keep_tmp: bool


def parse_options(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench ingest_latency", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_LARGE:,} existing cases instead of {LARGE:,}, {QUICK_MESSAGES} messages instead of {MESSAGES}",
    )
    parser.add_argument("--cases", type=int, help="existing cases of the large database (overrides --quick)")
    parser.add_argument("--messages", type=int, help="timed messages per database (overrides --quick)")
    parser.add_argument("--warm-up", type=int, default=WARM_UP, help="untimed messages first (%(default)s)")
    parser.add_argument("--backends", default="sqlite,postgresql", help="comma-separated (%(default)s)")
    add_run_options(parser, NAME, no_pin_help=None, keep_tmp_help="keep the SQLite files and logs")
    args = parser.parse_args(argv)
    backends = tuple(name.strip() for name in args.backends.split(","))
    if not set(backends) <= {"sqlite", "postgresql"}:
        parser.error("backends are sqlite and postgresql")
    return Options(
        large=args.cases or (QUICK_LARGE if args.quick else LARGE),
        messages=args.messages or (QUICK_MESSAGES if args.quick else MESSAGES),
        warm_up=args.warm_up,
        backends=backends,
        out=args.out,
        keep_tmp=args.keep_tmp,
    )


def main(argv: Sequence[str] = ()) -> int:
    options = parse_options(argv)
    console = make_console()
    pin_this_process(None)  # the pipeline runs in this process; PostgreSQL wherever the kernel likes
    os.environ["GATEWAY_CONFIG"] = "/nonexistent"  # the components get every setting explicitly
    clock = RunClock.start()
    results: list[dict[str, Any]] = []
    notes: list[str] = []
    if options.large != LARGE:
        notes.append(f"the large database holds {options.large:,} cases, not {LARGE:,} (--quick or --cases)")
    with scratch_dir("bench-ingest-", keep=options.keep_tmp, console=console) as tmp:
        for backend in options.backends:
            try:
                results.append(run_backend(backend, options, console, tmp))
            except NoPostgres as error:
                notes.append(f"{backend} skipped: {error}")
    console.print(render(results, options))
    for result in results:
        console.print(
            f"{verdict_markup(result['verdict'])}: {result['backend']} p99 with {options.large:,} cases is "
            f"{result['p99_ratio']}× p99 with {SMALL:,} (target: at most {TARGET_RATIO}×)"
        )
        for size in result["sizes"]:
            for line in size["unexpected_outcomes"]:
                console.print(f"[yellow]unexpected outcome ({result['backend']}, {size['cases']:,}):[/yellow] {line}")
    for note in notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    clock.print_footer(console, None)
    settings = {
        "small_cases": SMALL,
        "large_cases": options.large,
        "messages": options.messages,
        "warm_up": options.warm_up,
        "kinds_percent": KINDS,
        "cases_per_account": CASES_PER_ACCOUNT,
    }
    write_report(console, options.out, NAME, settings, clock, results=results, notes=notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
