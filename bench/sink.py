"""A no-op SMTP sink: the baseline every SMTP benchmark divides the gateway's figures by.

It speaks the same protocol through the same library as the gateway (aiosmtpd) but does no work
with a message: `handle_DATA` answers "250 OK" at once. Run it in a process of its own, so that it
competes with the load generator exactly as the gateway does:

    python -m bench.sink --port 2600
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Sequence

from aiosmtpd.smtp import SMTP, Envelope, Session

#: The sink accepts messages up to this size, like the gateway's default SIZE (64 MiB).
DATA_SIZE_LIMIT = 64 * 1024 * 1024


class NoopHandler:
    """Accepts every recipient and every message, and keeps nothing."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 OK"


def make_protocol() -> SMTP:
    # A fixed hostname: aiosmtpd would otherwise ask the resolver for the FQDN on every connection.
    return SMTP(
        NoopHandler(),
        hostname="sink.bench.invalid",
        data_size_limit=DATA_SIZE_LIMIT,
        enable_SMTPUTF8=True,
        decode_data=False,
    )


async def serve(host: str, port: int) -> None:
    """Listen on host:port until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = await loop.create_server(make_protocol, host=host, port=port)
    async with server:
        print(f"sink listening on {host}:{port}", flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sink", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
