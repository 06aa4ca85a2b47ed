"""The HTTP side of `gateway serve`: /healthz, and the panel API and page when present.

uvicorn runs inside the gateway's own event loop, so the API and the SMTP listener share one
process, one intake and one pipeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
from typing import TYPE_CHECKING, Any

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse

if TYPE_CHECKING:
    from gateway.app import Gateway


def create_app(gateway: Gateway) -> FastAPI:
    app = FastAPI(title="Support mail gateway", version="0.1.0")

    @app.get("/healthz", tags=["health"])
    async def healthz() -> JSONResponse:
        ready, body = await asyncio.to_thread(gateway.health)
        return JSONResponse(body, status_code=200 if ready else 503)

    if importlib.util.find_spec("gateway.panel.routes") is not None:
        from gateway.panel.routes import install_panel

        install_panel(app, gateway)
    return app


class HttpServer:
    def __init__(self, server: uvicorn.Server, serve_task: asyncio.Task[Any]) -> None:
        self.server = server
        self.serve_task = serve_task

    async def stop(self) -> None:
        self.server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self.serve_task), 10)


async def build_http_server(gateway: Gateway) -> HttpServer:
    settings = gateway.settings
    config = uvicorn.Config(
        create_app(gateway),
        host=settings.http_host,
        port=settings.http_port,
        log_level="warning",
        lifespan="off",
        access_log=False,
        log_config=None,  # uvicorn's lines go through gateway.logs' handler (text or JSON), not its own
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(), name="http")
    while not server.started:
        if task.done():
            task.result()  # raises the bind error, for instance
        await asyncio.sleep(0.02)
    return HttpServer(server, task)
