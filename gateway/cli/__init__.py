"""The command line (`python -m gateway` / `gateway`): wiring and printing only."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from gateway.logs import configure_logging
from gateway.settings import Settings, load_settings

if TYPE_CHECKING:
    from rich.progress import Progress

    from gateway.app import Components
    from gateway.intake import Intake


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    settings = load_settings()
    # One line per event, text or JSON, storms summarised (gateway.logs); only `serve` logs at INFO.
    configure_logging(
        log_format=settings.log_format,
        level=settings.log_level if args.command == "serve" else "WARNING",
        storm_seconds=settings.log_storm_seconds,
    )
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.handler(settings, args) or 0)
    except BrokenPipeError:  # `gateway export | head`: the reader has all it wanted
        sys.stderr.close()
        return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="Support mail gateway")
    commands = parser.add_subparsers(dest="command")

    serve = commands.add_parser("serve", help="SMTP, IMAP pollers, HTTP API, scheduler, outbox")
    serve.set_defaults(handler=_serve)

    ingest = commands.add_parser("ingest", help="feed .eml files, mbox files or maildirs through the pipeline")
    ingest.add_argument("paths", nargs="+", type=Path)
    ingest.add_argument(
        "--notify",
        action="store_true",
        help="send acknowledgements and staff notifications as for live mail "
        "(off by default: imports of old correspondence stay quiet)",
    )
    ingest.set_defaults(handler=_ingest)

    cases = commands.add_parser("cases", help="list or show cases")
    case_commands = cases.add_subparsers(dest="cases_command", required=True)
    listing = case_commands.add_parser("list")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_cases_list)
    show = case_commands.add_parser("show")
    show.add_argument("number")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=_cases_show)

    release = case_commands.add_parser("release", help="a case held as spam becomes an open case (false positive)")
    release.add_argument("number")
    release.set_defaults(handler=_cases_release)

    export = commands.add_parser("export", help="every case as JSON Lines (the `cases show --json` shape)")
    export.set_defaults(handler=_export)

    database = commands.add_parser("db", help="database schema")
    db_commands = database.add_subparsers(dest="db_command", required=True)
    db_commands.add_parser("upgrade", help="apply schema migrations").set_defaults(handler=_db_upgrade)

    quarantine = commands.add_parser("quarantine", help="journal entries that could not be processed")
    q_commands = quarantine.add_subparsers(dest="quarantine_command", required=True)
    q_list = q_commands.add_parser("list")
    q_list.add_argument("--json", action="store_true")
    q_list.set_defaults(handler=_quarantine_list)
    q_retry = q_commands.add_parser("retry")
    q_retry.add_argument("id", nargs="?", type=int)
    q_retry.add_argument("--all", action="store_true")
    q_retry.set_defaults(handler=_quarantine_retry)

    purge = commands.add_parser("purge", help="drop journal and sent-outbox bytes past their retention")
    purge.add_argument("--dry-run", action="store_true", help="count what would go, change nothing")
    purge.set_defaults(handler=_purge)

    erase = commands.add_parser("erase", help="erase a person's or a case's data (GDPR art. 17), keep a tombstone")
    target = erase.add_mutually_exclusive_group(required=True)
    target.add_argument("--address", metavar="EMAIL")
    target.add_argument("--case", metavar="NUMBER")
    erase.add_argument("--dry-run", action="store_true", help="count what would go, change nothing")
    erase.add_argument("--actor", help="who asked for it, for the audit record (default: the OS user)")
    erase.set_defaults(handler=_erase)

    token = commands.add_parser("panel-token", help="a signed panel token, for trying the panel by hand")
    token.add_argument("--account", required=True)
    token.add_argument("--role", choices=["admin", "standard", "system"], default="admin")
    token.add_argument("--service")
    token.add_argument("--sub", default="klient@example.test", help="the login's e-mail address")
    token.add_argument("--hours", type=float, default=12.0)
    token.set_defaults(handler=_panel_token)
    return parser


# --- serve ---------------------------------------------------------------------------------------


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.app import Gateway

    async def run() -> None:
        gateway = Gateway(settings)
        await gateway.start()
        await gateway.serve_forever()

    asyncio.run(run())
    return 0


# --- ingest --------------------------------------------------------------------------------------


def _ingest(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.cli.sources import count_messages, iter_raw_messages

    missing = [str(path) for path in args.paths if not path.exists()]
    if missing:
        print(f"no such file or directory: {', '.join(missing)}", file=sys.stderr)
        return 2
    outcomes: Counter[str] = Counter()
    total = count_messages(args.paths) if sys.stdout.isatty() else None
    asyncio.run(_ingest_all(settings, iter_raw_messages(args.paths), outcomes, total, quiet=not args.notify))
    summary = ", ".join(f"{name} {count}" for name, count in sorted(outcomes.items()))
    print(f"ingested {sum(outcomes.values())} message(s): {summary or 'nothing'}")
    return 1 if outcomes.get("quarantined") or outcomes.get("deferred") else 0


async def _ingest_all(
    settings: Settings,
    messages: Iterable[tuple[str, bytes]],
    outcomes: Counter[str],
    total: int | None,
    *,
    quiet: bool,
) -> None:
    from gateway.app import Components
    from gateway.intake import Intake

    components = await asyncio.to_thread(Components.build, settings)
    intake = Intake(components.journal_engine, instance_name=f"{settings.instance_name}-ingest")
    meta = {"quiet": True} if quiet else {}
    with _progress(total) as advance:
        batch: list[tuple[str, bytes]] = []
        for item in messages:
            batch.append(item)
            if len(batch) >= 32:
                await _ingest_batch(components, intake, batch, meta, outcomes, advance)
                batch = []
        await _ingest_batch(components, intake, batch, meta, outcomes, advance)
    components.dispose()


async def _ingest_batch(
    components: Components,
    intake: Intake,
    batch: list[tuple[str, bytes]],
    meta: dict[str, Any],
    outcomes: Counter[str],
    advance: Callable[[], None],
) -> None:
    # Journaling the batch concurrently shares one commit among its messages (group commit).
    receipts = await asyncio.gather(*(intake.accept(raw, source="file", meta=meta) for _, raw in batch))
    labels = {receipt.journal_id: label for (label, _), receipt in zip(batch, receipts, strict=True)}
    # Processing them together shares a transaction (a savepoint each); entries a batch budget left
    # for later come back in the next round, in order. A round that takes nothing goes one by one.
    pending = list(labels)
    while pending:
        done = await asyncio.to_thread(components.pipeline.process_batch, pending)
        if not done:
            done = {pending[0]: await asyncio.to_thread(components.pipeline.process, pending[0])}
        for journal_id, outcome in done.items():
            outcomes[str(outcome)] += 1
            if outcome == "quarantined":
                print(f"quarantined: {labels[journal_id]} (journal entry {journal_id})", file=sys.stderr)
            advance()
        pending = [journal_id for journal_id in pending if journal_id not in done]


class _progress:
    """A rich progress bar on a terminal; nothing when the output is a pipe or a file."""

    def __init__(self, total: int | None) -> None:
        self._total = total
        self._bar: Progress | None = None

    def __enter__(self) -> Callable[[], None]:
        if self._total is None:
            return lambda: None
        from rich.progress import Progress

        bar = self._bar = Progress()
        bar.start()
        task = bar.add_task("ingesting", total=self._total)
        return lambda: bar.advance(task)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()


# --- reading cases -------------------------------------------------------------------------------


def _read_engine(settings: Settings) -> Engine:
    from store.db import make_engine, upgrade

    engine = make_engine(settings.database_url)
    if settings.auto_migrate:
        upgrade(engine)
    return engine


def _cases_list(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.cli.views import case_summary
    from store import cases
    from store.db import reading

    with reading(_read_engine(settings)) as session:
        rows = [case_summary(case) for case in cases.list_cases(session=session)]
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table("number", "status", "updated", "requester", "msgs", "subject")
    for row in rows:
        table.add_row(
            row["number"], row["status"], row["updated_at"], row["requester"], str(row["message_count"]), row["subject"]
        )
    Console().print(table)
    return 0


def _cases_show(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.cli.views import case_detail
    from store import cases
    from store.db import reading

    with reading(_read_engine(settings)) as session:
        case = cases.get_case_by_number(session=session, number=args.number)
        if case is None:
            print(f"no case {args.number}", file=sys.stderr)
            return 1
        detail = case_detail(session=session, case=case)
    if args.json:
        print(json.dumps(detail, ensure_ascii=False, indent=2))
        return 0
    print(f"[#{detail['number']}] {detail['subject']}  ({detail['status']}, {detail['requester']})")
    for message in detail["messages"]:
        print(f"\n--- {message['direction']} via {message['source']}, {message['date']}, from {message['from']}")
        print(message["text"].rstrip())
        for attachment in message["attachments"]:
            note = f" REFUSED: {attachment['reason']}" if attachment["refused"] else ""
            print(f"    [attachment] {attachment['filename']} ({attachment['size']} bytes){note}")
    return 0


def _cases_release(settings: Settings, args: argparse.Namespace) -> int:
    """Spam is never answered and never shown in the panel; releasing a false positive makes it an
    ordinary open case of its requester's account. Nothing is sent: staff answer it as they see fit."""
    from store import cases, directory
    from store.db import transaction
    from store.models import utcnow
    from store.states import CaseStatus

    with transaction(_read_engine(settings)) as session:
        case = cases.get_case_by_number(session=session, number=args.number)
        if case is None:
            print(f"no case {args.number}", file=sys.stderr)
            return 1
        if case.status != CaseStatus.SPAM:
            print(f"case {args.number} is {case.status}, not spam", file=sys.stderr)
            return 1
        account = directory.account_for_address(session=session, email=case.requester)
        case.status, case.updated_at = CaseStatus.OPEN, utcnow()
        case.account_id = account.id if account is not None else case.account_id
        session.add(case)
    print(f"released case {args.number}: open")
    return 0


def _export(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.cli.views import case_detail
    from store import cases
    from store.db import reading

    with reading(_read_engine(settings)) as session:
        for case in reversed(cases.list_cases(session=session)):
            print(json.dumps(case_detail(session=session, case=case), ensure_ascii=False))
    return 0


def _db_upgrade(settings: Settings, args: argparse.Namespace) -> int:
    from store.db import make_engine, upgrade

    upgrade(make_engine(settings.database_url))
    print("schema is up to date")
    return 0


# --- quarantine ----------------------------------------------------------------------------------


def _quarantine_list(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.app import Components
    from store import journal
    from store.db import reading

    components = Components.build(settings)
    with reading(components.journal_engine) as session:
        rows = [
            {
                "id": entry.id,
                "source": entry.source,
                "raw_sha256": entry.raw_sha256,
                "reason": entry.reason,
                "received_at": entry.received_at.isoformat(timespec="seconds").replace("+00:00", "Z"),
            }
            for entry in journal.list_quarantined(session=session)
        ]
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
    else:
        for row in rows:
            print(f"{row['id']:>8}  {row['received_at']}  {row['source']:<6} {row['reason']}")
        print(f"{len(rows)} quarantined")
    return 0


def _quarantine_retry(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.app import Components
    from store import journal
    from store.db import transaction

    if (args.id is None) == (not args.all):
        print("give either an ID or --all", file=sys.stderr)
        return 2
    components = Components.build(settings)
    with transaction(components.journal_engine) as session:
        ids = journal.requeue_quarantined(session=session, journal_id=None if args.all else args.id)
    outcomes = Counter(str(components.pipeline.process(journal_id)) for journal_id in ids)
    print(f"retried {len(ids)}: " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    return 1 if outcomes.get("quarantined") else 0


# --- retention and erasure ---------------------------------------------------------------------


def _purge(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.app import Components
    from gateway.retention import purge

    components = Components.build(settings)
    report = purge(
        engine=components.engine,
        journal_engine=components.journal_engine,
        journal_days=settings.journal_retention_days,
        outbox_days=settings.outbox_retention_days,
        dry_run=args.dry_run,
    )
    verb = "would drop" if report.dry_run else "dropped"
    print(f"{verb} the bytes of {report.journal_entries} journal entries and {report.outbox_rows} sent outbox rows")
    return 0


def _erase(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.app import Components
    from gateway.retention import erase_address, erase_case

    components = Components.build(settings)
    common = {
        "engine": components.engine,
        "journal_engine": components.journal_engine,
        "blobs": components.blobs,
        "actor": args.actor,
        "dry_run": args.dry_run,
    }
    report = erase_address(address=args.address, **common) if args.address else erase_case(number=args.case, **common)
    if report is None:
        print(f"no case {args.case}", file=sys.stderr)
        return 1
    counts = ", ".join(f"{name} {count}" for name, count in sorted(report.counts.items()))
    print(("would erase: " if report.dry_run else "erased: ") + counts)
    return 0


# --- panel ---------------------------------------------------------------------------------------


def _panel_token(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.app import Components
    from gateway.panel.auth import issue_token

    components = Components.build(settings)
    print(
        issue_token(
            secret=components.panel_secret,
            sub=args.sub,
            account=args.account,
            role=args.role,
            service=args.service,
            hours=args.hours,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
