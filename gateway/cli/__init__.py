"""The command line (`python -m gateway` / `gateway`): the argument parser and the handlers it calls.

This room owns the commands of SPEC §2 and §14, the JSON shapes of `cases show` (views.py) and the
file sources of `ingest` (sources.py); it wires and prints, and may import any other room, but no
other room imports it. Handlers live in ingest.py, cases.py and operations.py.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.cli import handlers as run
from gateway.logs import configure_logging
from gateway.settings import load_settings


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
    serve.set_defaults(handler=run.serve)

    ingest = commands.add_parser("ingest", help="feed .eml files, mbox files or maildirs through the pipeline")
    ingest.add_argument("paths", nargs="+", type=Path)
    ingest.add_argument(
        "--notify",
        action="store_true",
        help="send acknowledgements and staff notifications as for live mail "
        "(off by default: imports of old correspondence stay quiet)",
    )
    ingest.set_defaults(handler=run.ingest)

    cases = commands.add_parser("cases", help="list or show cases")
    case_commands = cases.add_subparsers(dest="cases_command", required=True)
    listing = case_commands.add_parser("list")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=run.cases_list)
    show = case_commands.add_parser("show")
    show.add_argument("number")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=run.cases_show)

    release = case_commands.add_parser("release", help="a case held as spam becomes an open case (false positive)")
    release.add_argument("number")
    release.set_defaults(handler=run.cases_release)

    export = commands.add_parser("export", help="every case as JSON Lines (the `cases show --json` shape)")
    export.set_defaults(handler=run.export)

    database = commands.add_parser("db", help="database schema")
    db_commands = database.add_subparsers(dest="db_command", required=True)
    db_commands.add_parser("upgrade", help="apply schema migrations").set_defaults(handler=run.db_upgrade)

    quarantine = commands.add_parser("quarantine", help="journal entries that could not be processed")
    q_commands = quarantine.add_subparsers(dest="quarantine_command", required=True)
    q_list = q_commands.add_parser("list")
    q_list.add_argument("--json", action="store_true")
    q_list.set_defaults(handler=run.quarantine_list)
    q_retry = q_commands.add_parser("retry")
    q_retry.add_argument("id", nargs="?", type=int)
    q_retry.add_argument("--all", action="store_true")
    q_retry.set_defaults(handler=run.quarantine_retry)

    purge = commands.add_parser("purge", help="drop journal and sent-outbox bytes past their retention")
    purge.add_argument("--dry-run", action="store_true", help="count what would go, change nothing")
    purge.set_defaults(handler=run.purge)

    erase = commands.add_parser("erase", help="erase a person's or a case's data (GDPR art. 17), keep a tombstone")
    target = erase.add_mutually_exclusive_group(required=True)
    target.add_argument("--address", metavar="EMAIL")
    target.add_argument("--case", metavar="NUMBER")
    erase.add_argument("--dry-run", action="store_true", help="count what would go, change nothing")
    erase.add_argument("--actor", help="who asked for it, for the audit record (default: the OS user)")
    erase.set_defaults(handler=run.erase)

    token = commands.add_parser("panel-token", help="a signed panel token, for trying the panel by hand")
    token.add_argument("--account", required=True)
    token.add_argument("--role", choices=["admin", "standard", "system"], default="admin")
    token.add_argument("--service")
    token.add_argument("--sub", default="klient@example.test", help="the login's e-mail address")
    token.add_argument("--hours", type=float, default=12.0)
    token.set_defaults(handler=run.panel_token)
    return parser
