"""The reference panel page `/panel`: one Jinja2 template and plain static JS/CSS, no build step.

The page holds no data of its own; its script talks to the panel API with the login's token. A
strict Content-Security-Policy (inherited by the sandboxed frames that show mail HTML) keeps
scripts to our own file and images to our own origin, whatever a message contains.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape

from gateway.panel.deps import Deps

PANEL_DIR = Path(__file__).resolve().parents[2] / "templates" / "panel"
STATIC_DIR = PANEL_DIR / "static"
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        # mail HTML keeps its inline styles (the sanitiser already dropped any that could fetch)
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "frame-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    # the token may arrive in the query string (?token=...): never pass the URL on
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def _asset_version() -> str:
    """A short hash of the static files, so a browser never runs a stale script after an upgrade."""
    digest = hashlib.sha256()
    for path in sorted(STATIC_DIR.iterdir()):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def install_page(app: FastAPI) -> None:
    environment = Environment(
        loader=FileSystemLoader(PANEL_DIR), autoescape=select_autoescape(default=True, default_for_string=True)
    )
    template = environment.get_template("index.html.j2")
    version = _asset_version()

    async def panel_page(deps: Deps) -> HTMLResponse:
        html = template.render(
            max_attachment_bytes=deps.settings.max_attachment_bytes,
            support_address=deps.settings.support_address,
            support_name=deps.settings.support_name,
            version=version,
        )
        return HTMLResponse(html, headers=PAGE_HEADERS)

    async def panel_slash(request: Request) -> RedirectResponse:
        query = request.url.query
        return RedirectResponse("/panel" + (f"?{query}" if query else ""), status_code=308)

    app.add_api_route("/panel", panel_page, methods=["GET"], include_in_schema=False)
    app.add_api_route("/panel/", panel_slash, methods=["GET"], include_in_schema=False)
    app.mount("/panel/static", StaticFiles(directory=STATIC_DIR), name="panel-static")
