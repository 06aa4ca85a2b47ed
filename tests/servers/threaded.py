"""An asyncio server on an event loop of its own, in a thread: what the relay test servers share.

Tests drive the gateway from their own loop (or from none); a server they talk to must keep
answering while a test blocks, so it runs its loop in a daemon thread. Subclasses say what to
listen with (`_listen`) and what to record.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Self


class ThreadedServer:
    def __init__(self, *, host: str = "127.0.0.1", thread_name: str) -> None:
        self.host = host
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=thread_name, daemon=True)
        self._server: asyncio.AbstractServer | None = None

    async def _listen(self) -> asyncio.AbstractServer:
        raise NotImplementedError

    def start(self) -> Self:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
