"""`gateway cases list|show|release`, `gateway export`, `gateway db upgrade`: reading and fixing stored cases."""

from __future__ import annotations

import argparse
import json
import sys

from sqlalchemy import Engine

from gateway.settings import Settings


def _read_engine(settings: Settings) -> Engine:
    from store.db import make_engine, upgrade

    engine = make_engine(settings.database_url)
    if settings.auto_migrate:
        upgrade(engine)
    return engine


def cases_list(settings: Settings, args: argparse.Namespace) -> int:
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


def cases_show(settings: Settings, args: argparse.Namespace) -> int:
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


def cases_release(settings: Settings, args: argparse.Namespace) -> int:
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


def export(settings: Settings, args: argparse.Namespace) -> int:
    from gateway.cli.views import case_detail
    from store import cases
    from store.db import reading

    with reading(_read_engine(settings)) as session:
        for case in reversed(cases.list_cases(session=session)):
            print(json.dumps(case_detail(session=session, case=case), ensure_ascii=False))
    return 0


def db_upgrade(settings: Settings, args: argparse.Namespace) -> int:
    from store.db import make_engine, upgrade

    upgrade(make_engine(settings.database_url))
    print("schema is up to date")
    return 0
