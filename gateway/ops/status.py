"""`GET /status`: where the deployment stands, for an operator's browser (Jinja2, no build step).

Who may look: the panel's system JWT (role `system`, as for PUT /api/accounts) or the configured
`status_token`, given as `Authorization: Bearer ...`, or once as `?token=...`: that answer sets a
cookie (HttpOnly, SameSite=Strict, path /status) and redirects to the bare URL, so the token
leaves the address bar and the history. The page refreshes itself every minute (a meta tag).
"""

from __future__ import annotations

import asyncio
import hmac
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from gateway.ops.chart import draw, series_of
from gateway.ops.figures import MailboxView, OpsDeps, hourly_traffic, snapshot
from gateway.panel.auth import InvalidToken, read_token
from store import operations
from store.db import reading

TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "templates" / "status"
COOKIE = "gateway_status"
REFRESH_SECONDS = 60
PAGE_HEADERS = {
    # Everything is in the page: inline styles and SVG, no script, nothing fetched.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def may_see_status(deps: OpsDeps, token: str | None) -> bool:
    """The configured status token, or a valid panel JWT of role `system`."""
    if not token:
        return False
    configured = deps.settings.status_token
    if configured and hmac.compare_digest(token.encode(), configured.encode()):
        return True
    try:
        return read_token(token, secret=deps.panel_secret).role == "system"
    except InvalidToken:
        return False


def _bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


@dataclass(frozen=True)
class FailedMail:
    id: int
    kind: str
    recipient: str
    attempts: int
    last_error: str
    created_at: datetime


@dataclass(frozen=True)
class QuarantinedEntry:
    id: int
    source: str
    reason: str
    received_at: datetime


def _page_data(deps: OpsDeps) -> dict[str, Any]:
    """Everything the template shows (blocking: reads the database)."""
    figures = snapshot(deps)
    traffic = hourly_traffic(deps)
    with reading(deps.engine) as session:
        failures = [
            FailedMail(
                id=row.id or 0,
                kind=row.kind,
                recipient=row.recipient,
                attempts=row.attempts,
                last_error=(row.last_error or "")[:300],
                created_at=row.created_at,
            )
            for row in operations.recent_failures(session=session)
        ]
    with reading(deps.journal_engine) as session:
        quarantine = [
            QuarantinedEntry(
                id=row.id or 0, source=row.source, reason=(row.reason or "")[:300], received_at=row.received_at
            )
            for row in operations.recent_quarantine(session=session)
        ]
    mailboxes: list[MailboxView] = list(deps.mailboxes())
    return {
        "instance": deps.settings.instance_name,
        "support_name": deps.settings.support_name,
        "figures": figures,
        "backlog_age": figures.age_seconds(figures.journal.oldest_pending_at),
        "outbox_due_age": figures.age_seconds(figures.outbox.oldest_due_at),
        "chart": draw(traffic),
        "series": [(s, sum(s.values)) for s in series_of(traffic)],
        "failures": failures,
        "quarantine": quarantine,
        "mailboxes": mailboxes,
        "refresh_seconds": REFRESH_SECONDS,
    }


def _duration(seconds: float) -> str:
    """A short human duration: 45 s, 12 min, 3 h 5 min, 2 d 4 h."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min"
    if whole < 86400:
        return f"{whole // 3600} h {whole % 3600 // 60} min"
    return f"{whole // 86400} d {whole % 86400 // 3600} h"


def _environment() -> Environment:
    environment = Environment(
        loader=FileSystemLoader(TEMPLATE_DIR), autoescape=select_autoescape(default=True, default_for_string=True)
    )
    environment.filters["duration"] = _duration
    environment.filters["utc"] = lambda moment: f"{moment:%Y-%m-%d %H:%M} UTC" if moment else "–"
    return environment


def add_status_page(app: FastAPI, deps: OpsDeps) -> None:
    environment = _environment()
    page = environment.get_template("index.html.j2")
    refused = environment.get_template("refused.html.j2")

    def refuse() -> HTMLResponse:
        headers = {**PAGE_HEADERS, "WWW-Authenticate": "Bearer"}
        return HTMLResponse(refused.render(), status_code=401, headers=headers)

    async def status(request: Request) -> Response:
        given = request.query_params.get("token")
        if given is not None:
            if not may_see_status(deps, given):
                return refuse()
            redirect = RedirectResponse("/status", status_code=303, headers=PAGE_HEADERS)
            redirect.set_cookie(
                COOKIE,
                given,
                path="/status",
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
            )
            return redirect
        if not (may_see_status(deps, _bearer(request)) or may_see_status(deps, request.cookies.get(COOKIE))):
            return refuse()
        data = await asyncio.to_thread(_page_data, deps)
        return HTMLResponse(page.render(**data), headers=PAGE_HEADERS)

    app.add_api_route("/status", status, methods=["GET"], include_in_schema=False)
