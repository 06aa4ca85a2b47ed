"""Operators' commands: `serve`, `quarantine list|retry`, `purge`, `erase`, `panel-token`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter

from gateway.settings import Settings


def serve(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.app import Gateway

    async def run() -> None:
        gateway = Gateway(settings)
        await gateway.start()
        await gateway.serve_forever()

    asyncio.run(run())
    return 0


def quarantine_list(settings: Settings, args: argparse.Namespace) -> int:
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


def quarantine_retry(settings: Settings, args: argparse.Namespace) -> int:
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


def purge(settings: Settings, args: argparse.Namespace) -> int:
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


def erase(settings: Settings, args: argparse.Namespace) -> int:
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


def panel_token(settings: Settings, args: argparse.Namespace) -> int:
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
