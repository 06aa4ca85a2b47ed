"""Every command's handler under one name each, for the parser in gateway.cli."""

from gateway.cli.cases import cases_list, cases_release, cases_show, db_upgrade, export
from gateway.cli.ingest import ingest
from gateway.cli.operations import erase, panel_token, purge, quarantine_list, quarantine_retry, serve

__all__ = [
    "cases_list",
    "cases_release",
    "cases_show",
    "db_upgrade",
    "erase",
    "export",
    "ingest",
    "panel_token",
    "purge",
    "quarantine_list",
    "quarantine_retry",
    "serve",
]
