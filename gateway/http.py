"""The HTTP side of `gateway serve`: /healthz, /metrics, /status and the customer panel (API and page).

uvicorn runs inside the gateway's own event loop, so the API and the SMTP listener share one
process, one intake and one pipeline. The wiring (gateway.app) hands over everything the routes
work with as one `HttpDeps` once it is all built; nothing here reaches back into the wiring.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.ops.exposition import render
from gateway.ops.figures import OpsDeps
from gateway.ops.status import add_status_page
from gateway.panel.deps import PanelDeps
from gateway.panel.routes import add_panel_routes, install_panel

TITLE = "Support mail gateway"
VERSION = "0.1.0"


@dataclass(frozen=True)
class HttpDeps:
    panel: PanelDeps
    ops: OpsDeps  # /metrics and /status
    # (ready, body) of /healthz; called off the event loop, it may touch the database.
    health: Callable[[], tuple[bool, dict[str, Any]]]


def _add_health(app: FastAPI, health: Callable[[], tuple[bool, dict[str, Any]]]) -> None:
    @app.get("/healthz", tags=["health"])
    async def healthz() -> JSONResponse:
        try:
            ready, body = await asyncio.to_thread(health)
        except Exception as error:  # a health check answers "not ready", never a 500
            return JSONResponse({"status": "unavailable", "error": f"{type(error).__name__}: {error}"}, 503)
        return JSONResponse(body, status_code=200 if ready else 503)


def _add_metrics(app: FastAPI, ops: OpsDeps) -> None:
    # No token: Prometheus scrapes it; keep the HTTP port off the public network (or filter it).
    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(await asyncio.to_thread(render, ops), media_type=CONTENT_TYPE_LATEST)


def create_app(deps: HttpDeps) -> FastAPI:
    app = FastAPI(title=TITLE, version=VERSION)
    _add_health(app, deps.health)
    _add_metrics(app, deps.ops)
    add_status_page(app, deps.ops)
    install_panel(app, deps.panel)
    return app


def api_description() -> dict[str, Any]:
    """The OpenAPI description the gateway serves, built without a running gateway (for fuzzing)."""
    app = FastAPI(title=TITLE, version=VERSION)
    _add_health(app, lambda: (False, {}))
    add_panel_routes(app)
    return app.openapi()


class HttpServer:
    def __init__(self, server: uvicorn.Server, serve_task: asyncio.Task[Any]) -> None:
        self.server = server
        self.serve_task = serve_task

    @property
    def port(self) -> int:
        """The bound port (the setting may be 0: any free port)."""
        return int(self.server.servers[0].sockets[0].getsockname()[1])

    async def stop(self) -> None:
        self.server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self.serve_task), 10)


class _PartServer(uvicorn.Server):
    """uvicorn (0.54) re-raises SIGTERM/SIGINT once it has stopped serving, which suits a process
    that is only uvicorn. In `gateway serve` the HTTP server is one part: on SIGTERM the gateway
    must still close its SMTP listener, pipeline, parse pool, outbox and log handlers (Gateway.stop),
    so here a signal only asks this server to exit and `serve` returns normally afterwards."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()


async def start_http_server(deps: HttpDeps, *, host: str, port: int) -> HttpServer:
    config = uvicorn.Config(
        create_app(deps),
        host=host,
        port=port,
        log_level="warning",
        lifespan="off",
        access_log=False,
        log_config=None,  # uvicorn's lines go through gateway.logs' handler (text or JSON), not its own
        # CPython's accept loop retries once per backlog slot on EMFILE; 2048 (uvicorn's default)
        # turns a descriptor shortage into thousands of log lines per second. The SMTP side uses 100 too.
        backlog=100,
    )
    server = _PartServer(config)
    task = asyncio.create_task(server.serve(), name="http")
    while not server.started:
        if task.done():
            task.result()  # raises the bind error, for instance
        await asyncio.sleep(0.02)
    return HttpServer(server, task)
