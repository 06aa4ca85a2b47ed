"""Storage growth: how many bytes the gateway keeps per byte of mail it stores (issue 12).

A fresh in-process gateway (SQLite, outgoing mail into a maildir) receives messages with one
large attachment each over real SMTP, processes them and sends what they cause (the
acknowledgement and the staff notification, which carries the attachment). Then the storage is
measured: the database files (gateway.db and journal.db with their WAL, checkpointed) and the
attachment blobs. Reported per byte of mail received (the SMTP DATA): the database alone, and
database + blobs. With `blob_store = "database"` (`--blob-store database`, the shared-nothing
deployment) the blobs are inside the database, so the database figure is the whole story.

Every message is kept raw in the journal (1×) and its attachment decoded as a blob (~0.74×: base64
costs a third); anything above ~1.8× is a copy nobody needs. Before issue 12 the notification's
outbox row held the attachment once more, base64 (another 1×). Figures go to
bench/out/storage_growth.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import time
from collections.abc import Sequence
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
from rich.table import Table
from sqlalchemy import func
from sqlmodel import col, select

from bench.common import RunClock, add_run_options, make_console, scratch_dir, write_report
from gateway.app import Gateway
from gateway.settings import load_settings
from store.db import reading
from store.models import JournalEntry, OutboxItem

NAME = "storage_growth"
MIB = 1024 * 1024
TIMEOUT_S = 300.0


def _mail(number: int, attachment_bytes: int) -> bytes:
    message = EmailMessage()
    message["From"] = f"klient{number}@klient.example"
    message["To"] = "bok@example.test"
    message["Subject"] = f"Zrzuty ekranu {number}"
    message.set_content("Dzień dobry, w załączniku zrzuty ekranu.\n" * 20)
    message.add_attachment(
        os.urandom(attachment_bytes), maintype="application", subtype="octet-stream", filename="a.bin"
    )
    return message.as_bytes()


def _bytes_under(path: Path, suffixes: tuple[str, ...] | None = None) -> int:
    total = 0
    for item in path.rglob("*"):
        if item.is_file() and (suffixes is None or item.name.endswith(suffixes)):
            total += item.stat().st_size
    return total


def _checkpoint(database: Path) -> None:
    if database.exists():
        with sqlite3.connect(database) as connection:
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")


async def _wait_done(gateway: Gateway, expected_rows: int) -> None:
    assert gateway.components is not None
    engine, journal_engine = gateway.components.engine, gateway.components.journal_engine
    deadline = time.monotonic() + TIMEOUT_S

    def done() -> bool:
        with reading(journal_engine) as session:
            pending = session.exec(select(func.count()).where(JournalEntry.status == "pending")).one()
        with reading(engine) as session:
            rows = session.exec(select(OutboxItem.status)).all()
            unsent = session.exec(select(func.count()).where(col(OutboxItem.status).in_(("queued", "sending")))).one()
        return not pending and len(rows) >= expected_rows and not unsent

    while not await asyncio.to_thread(done):
        if time.monotonic() > deadline:
            raise TimeoutError("the gateway did not finish in time")
        await asyncio.sleep(0.1)


async def measure(workdir: Path, *, messages: int, attachment_bytes: int, blob_store: str) -> dict[str, Any]:
    settings = load_settings(
        database_url=f"sqlite:///{workdir / 'gateway.db'}",
        data_dir=workdir / "data",
        smtp_port=0,
        http_port=0,
        relay_url=f"maildir:{workdir / 'sent'}",
        support_address="bok@example.test",
        staff_queue_address="staff@example.test",
        panel_secret="bench",
        signing_secret="bench",
        blob_store=blob_store,
        outbox_poll_seconds=0.2,
    )
    gateway = Gateway(settings)
    await gateway.start()
    databases = [workdir / "gateway.db", workdir / "data" / "journal.db"]
    received = 0
    try:
        await _wait_done(gateway, 0)
        for database in databases:
            _checkpoint(database)
        before_db = sum(_bytes_under(d.parent, (d.name, d.name + "-wal")) for d in databases)
        for number in range(messages):
            raw = _mail(number, attachment_bytes)
            received += len(raw)
            async with aiosmtplib.SMTP(hostname="127.0.0.1", port=settings.smtp_port, start_tls=False) as client:
                await client.sendmail(f"klient{number}@klient.example", ["bok@example.test"], raw)
        await _wait_done(gateway, 2 * messages)
        assert gateway.components is not None
        with reading(gateway.components.engine) as session:
            row_bytes = {
                kind: int(size or 0)
                for kind, size in session.exec(
                    select(OutboxItem.kind, func.sum(func.length(OutboxItem.raw))).group_by(OutboxItem.kind)
                ).all()
            }
    finally:
        await gateway.stop()
    for database in databases:
        _checkpoint(database)
    database_bytes = sum(_bytes_under(d.parent, (d.name, d.name + "-wal")) for d in databases) - before_db
    blob_bytes = _bytes_under(workdir / "data" / "blobs") if (workdir / "data" / "blobs").exists() else 0
    return {
        "blob_store": blob_store,
        "messages": messages,
        "mail_bytes": received,
        "database_growth_bytes": database_bytes,
        "blob_bytes": blob_bytes,
        "outbox_bytes_by_kind": row_bytes,
        "database_per_mail_byte": round(database_bytes / received, 2),
        "stored_per_mail_byte": round((database_bytes + blob_bytes) / received, 2),
    }


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m bench {NAME}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 messages of 1 MiB instead of 8 of 4 MiB")
    parser.add_argument("--blob-store", choices=("disk", "database", "both"), default="both")
    add_run_options(parser, NAME, keep_tmp_help="keep the gateway's files", no_pin_help=None)
    args = parser.parse_args(list(argv))
    console = make_console()
    clock = RunClock.start()
    messages, attachment = (4, 1 * MIB) if args.quick else (8, 4 * MIB)
    stores = ("disk", "database") if args.blob_store == "both" else (args.blob_store,)
    results = []
    for store in stores:
        with scratch_dir(f"bench-{NAME}-", keep=args.keep_tmp, console=console) as workdir:
            results.append(
                asyncio.run(measure(workdir, messages=messages, attachment_bytes=attachment, blob_store=store))
            )
    table = Table(title=f"storage per byte of mail ({messages} messages, one {attachment // MIB} MiB attachment each)")
    for column in (
        "blob store",
        "mail MiB",
        "database MiB",
        "blobs MiB",
        "database / mail",
        "all / mail",
        "outbox rows MiB",
    ):
        table.add_column(column, justify="right")
    for result in results:
        outbox = sum(result["outbox_bytes_by_kind"].values())
        table.add_row(
            result["blob_store"],
            f"{result['mail_bytes'] / MIB:.1f}",
            f"{result['database_growth_bytes'] / MIB:.1f}",
            f"{result['blob_bytes'] / MIB:.1f}",
            f"{result['database_per_mail_byte']:.2f}×",
            f"{result['stored_per_mail_byte']:.2f}×",
            f"{outbox / MIB:.2f}",
        )
    console.print(table)
    clock.print_footer(console, None)
    settings = {"messages": messages, "attachment_bytes": attachment}
    write_report(console, args.out, NAME, settings, clock, results=results)
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
