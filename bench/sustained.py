"""Sustained processing: how soon the last case exists when mail keeps arriving, against a no-op sink.

Issue 13. The same ~2 KB Polish messages as smtp_throughput (2 000, 300 with --quick) over 32
connections (one EHLO each, then MAIL/RCPT/DATA repeatedly, as an MTA does) are delivered, in one
run, to
  - bench.sink, the aiosmtpd server that answers 250 and does nothing (the baseline), and
  - a fresh `gateway serve` on SQLite (empty database and data directory, maildir relay, a local
    DNS server that knows nothing, so the sender checks never leave 127.0.0.1).
For the gateway, the clock starts before the first connection is opened. While the load runs, the
journal is sampled read-only every --sample-interval seconds: entries pending, and the lag (the age
of the oldest pending entry). After the last acknowledgement the benchmark waits (at most
--drain-timeout seconds) until nothing is pending, then reads when the pipeline finished its last
entry (journal_entry.processed_at) and how many cases exist.

Reported, each as a share of the sink's msg/s measured in the same run:
  - acknowledged msg/s (issue 13 target: at least 40%);
  - processed msg/s: journal entries finished (warm-up messages included) over the time from the
    first connection to the last entry finished (target: at least 10%);
and the lag: the largest sampled, and the one sampled when the last acknowledgement came.

The gateway is not pinned to a CPU by default (issue 13 asks the pipeline to use both cores; the
load generator stops competing once the messages are acknowledged); --pin pins as smtp_throughput
does. Figures go to bench/out/sustained.json.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.backlog import JournalTotals, JournalWatch, count_rows, sqlite_read_only_url
from bench.common import (
    CpuPlan,
    RunClock,
    ServerFailed,
    add_run_options,
    free_port,
    make_console,
    pin_this_process,
    plan_cpus,
    ratio_or_nan,
    rounded,
    scratch_dir,
    server_process,
    verdict,
    verdict_markup,
    wait_for_http_ok,
    wait_for_port,
    write_report,
)
from bench.smtp_throughput import HOST, SIZES, Payload, RunResult, build_payloads, gateway_env, measure

NAME = "sustained"
MESSAGES = 2000
QUICK_MESSAGES = 300
CONCURRENCY = 32
SIZE = "2KB"
STARTUP_TIMEOUT_S = 90.0
ACK_TARGET = 0.40
PROCESSED_TARGET = 0.10
#: The load generator is one MTA on 127.0.0.1 with 32 connections; the gateway's per-IP cap (20 by
#: default, against one host hogging the listener) would turn 12 of them away with 421.
LOAD_GENERATOR_ALLOWANCE = {"GATEWAY_SMTP_MAX_CONNECTIONS_PER_IP": str(2 * CONCURRENCY)}


@contextmanager
def local_dns() -> Iterator[str]:
    """host:port of a DNS server on 127.0.0.1 that answers NXDOMAIN to everything.

    The gateway checks SPF and DMARC itself; without this it would ask the machine's resolver about
    the customers' domains, which would make the figures depend on a network outside the benchmark.
    """
    from tests.servers.dns import dns_server  # the test suite's throwaway authoritative server

    with dns_server() as server:
        yield server.address


@dataclass
class GatewayRun:
    """The gateway's side of the run: acknowledgements, then processing."""

    result: RunResult
    origin: float  # time.time() before the first connection
    acked_at: float  # time.time() after the last acknowledgement
    drain_s: float | None
    totals: JournalTotals
    cases: int | None
    max_lag_s: float
    lag_at_last_ack_s: float
    samples: list[dict[str, float]] = field(default_factory=list)

    @property
    def processed_s(self) -> float | None:
        """From the first connection to the last journal entry finished; None if it never drained."""
        if self.drain_s is None or self.totals.last_processed_epoch is None:
            return None
        return self.totals.last_processed_epoch - self.origin

    @property
    def processed_msg_per_s(self) -> float:
        elapsed = self.processed_s
        return self.totals.finished / elapsed if elapsed else float("nan")


async def start_sink(stack: AsyncExitStack, tmp: Path, cpus: frozenset[int] | None) -> int:
    port = free_port(HOST)
    argv = [sys.executable, "-m", "bench.sink", "--host", HOST, "--port", str(port)]
    sink = stack.enter_context(server_process("sink", argv, log_path=tmp / "sink.log", cpus=cpus))
    await wait_for_port(sink, HOST, port, timeout_s=15)
    return port


async def measure_sink(payloads: Sequence[Payload], options: Options, tmp: Path) -> RunResult:
    async with AsyncExitStack() as stack:
        port = await start_sink(stack, tmp, options.cpu_plan.servers)
        return await measure(
            target="sink",
            port=port,
            payloads=payloads,
            size=SIZE,
            concurrency=CONCURRENCY,
            deadline_s=options.deadline_s,
            advance=lambda: None,
        )


async def measure_gateway(payloads: Sequence[Payload], options: Options, tmp: Path, dns: str) -> GatewayRun:
    workdir = tmp / "gateway"
    smtp_port, http_port = free_port(HOST), free_port(HOST)
    env = gateway_env(workdir, smtp_port, http_port, GATEWAY_DNS_RESOLVER=dns, **LOAD_GENERATOR_ALLOWANCE)
    argv = [sys.executable, "-m", "gateway", "serve"]
    with server_process(
        "gateway", argv, log_path=workdir / "gateway.log", env=env, cpus=options.cpu_plan.servers
    ) as gateway:
        await wait_for_http_ok(gateway, HOST, http_port, "/healthz", STARTUP_TIMEOUT_S)
        origin = time.time()
        watch = JournalWatch(sqlite_read_only_url(workdir / "data" / "journal.db"), origin=origin)
        try:
            stop = asyncio.Event()
            sampler = asyncio.create_task(watch.sample_until(stop, options.sample_interval_s))
            result = await measure(
                target="gateway",
                port=smtp_port,
                payloads=payloads,
                size=SIZE,
                concurrency=CONCURRENCY,
                deadline_s=options.deadline_s,
                advance=lambda: None,
            )
            acked_at = time.time()
            stop.set()
            await sampler
            at_last_ack = await asyncio.to_thread(watch.sample)
            watch.samples.append(at_last_ack)
            drain_s = await watch.wait_drained(options.drain_timeout_s, interval_s=options.sample_interval_s)
            totals = await asyncio.to_thread(watch.totals)
            gateway.check_alive()
        finally:
            watch.dispose()
        cases = count_rows(sqlite_read_only_url(workdir / "gw.db"), "support_case")
    return GatewayRun(
        result=result,
        origin=origin,
        acked_at=acked_at,
        drain_s=drain_s,
        totals=totals,
        cases=cases,
        max_lag_s=watch.max_lag_s(),
        lag_at_last_ack_s=at_last_ack.lag_s,
        samples=[
            {"at_s": round(s.at_s, 2), "pending": s.pending, "finished": s.finished, "lag_s": round(s.lag_s, 2)}
            for s in watch.samples
        ],
    )


async def run_all(options: Options, tmp: Path, console: Console) -> tuple[RunResult, GatewayRun]:
    payloads = build_payloads(options.messages, SIZES[SIZE])
    sink = await measure_sink(payloads, options, tmp)
    console.log(f"sink: {sink.ok} acknowledged, {sink.msg_per_s:.0f} msg/s")
    with local_dns() as dns:
        gateway = await measure_gateway(payloads, options, tmp, dns)
    console.log(
        f"gateway: {gateway.result.ok} acknowledged, {gateway.result.msg_per_s:.0f} msg/s; "
        f"{gateway.totals.finished} processed, {gateway.processed_msg_per_s:.0f} msg/s"
    )
    return sink, gateway


# --------------------------------------------------------------------------------------------
# Report


def figures(sink: RunResult, run: GatewayRun) -> dict[str, Any]:
    ack_ratio = ratio_or_nan(run.result.msg_per_s, sink.msg_per_s)
    processed_ratio = ratio_or_nan(run.processed_msg_per_s, sink.msg_per_s)
    return {
        "sink": sink.summary(),
        "gateway": {
            **run.result.summary(),
            "acknowledged_after_s": round(run.acked_at - run.origin, 2),
            "drained_after_last_ack_s": None if run.drain_s is None else round(run.drain_s, 2),
            "last_entry_processed_after_s": None if run.processed_s is None else round(run.processed_s, 2),
            "journal": {"entries": run.totals.entries, **run.totals.by_status},
            "cases": run.cases,
            "processed_msg_per_s": rounded(run.processed_msg_per_s, 1),
            "max_lag_s": round(run.max_lag_s, 2),
            "lag_at_last_ack_s": round(run.lag_at_last_ack_s, 2),
        },
        "targets": {
            "acknowledged_vs_sink": {
                "ratio": rounded(ack_ratio, 3),
                "required": ACK_TARGET,
                "verdict": verdict(None if math.isnan(ack_ratio) else ack_ratio >= ACK_TARGET),
            },
            "processed_vs_sink": {
                "ratio": rounded(processed_ratio, 3),
                "required": PROCESSED_TARGET,
                "verdict": verdict(None if math.isnan(processed_ratio) else processed_ratio >= PROCESSED_TARGET),
            },
        },
        "lag_samples": run.samples,
    }


def render(data: dict[str, Any], messages: int) -> Table:
    sink, gateway = data["sink"], data["gateway"]
    table = Table(
        title=f"Sustained processing, SQLite, c={CONCURRENCY}, {SIZE}, {messages} messages", title_justify="left"
    )
    for name in (
        "target",
        "acked",
        "ack msg/s",
        "p50 ms",
        "p99 ms",
        "processed",
        "processed msg/s",
        "max lag s",
        "lag at last ack s",
    ):
        table.add_column(name, justify="left" if name == "target" else "right")
    table.add_row(
        sink["target"],
        f"{sink['ok']}/{sink['planned']}",
        f"{sink['msg_per_s']:,.0f}",
        _num(sink["p50_ms"]),
        _num(sink["p99_ms"]),
        "",
        "",
        "",
        "",
    )
    table.add_row(
        "gateway",
        f"{gateway['ok']}/{gateway['planned']}",
        f"{gateway['msg_per_s']:,.0f}",
        _num(gateway["p50_ms"]),
        _num(gateway["p99_ms"]),
        f"{gateway['journal'].get('done', 0)} done / {gateway['journal']['entries']}",
        _num(gateway["processed_msg_per_s"], 1),
        _num(gateway["max_lag_s"]),
        _num(gateway["lag_at_last_ack_s"]),
    )
    return table


def _num(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def print_verdicts(console: Console, data: dict[str, Any]) -> None:
    labels = {
        "acknowledged_vs_sink": "acknowledged msg/s",
        "processed_vs_sink": "processed msg/s (first connection to last entry finished)",
    }
    for key, label in labels.items():
        target = data["targets"][key]
        shown = "not measured" if target["ratio"] is None else f"{target['ratio']:.1%} of the sink's msg/s"
        console.print(
            f"{verdict_markup(target['verdict'])}: {label}: {shown} (target: at least {target['required']:.0%})"
        )


# --------------------------------------------------------------------------------------------
# Command line


@dataclass(frozen=True)
class Options:
    messages: int
    deadline_s: float
    drain_timeout_s: float
    sample_interval_s: float
    cpu_plan: CpuPlan
    out: Path
    keep_tmp: bool


def parse_options(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench sustained", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_MESSAGES} messages instead of {MESSAGES}")
    parser.add_argument("--messages", type=int, help="messages per run (overrides --quick)")
    parser.add_argument("--deadline", type=float, default=60.0, help="seconds the sending may take (%(default)s)")
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=240.0,
        help="seconds to wait for the pipeline after the last 250 (%(default)s)",
    )
    parser.add_argument(
        "--sample-interval", type=float, default=0.5, help="seconds between journal samples (%(default)s)"
    )
    parser.add_argument("--pin", action="store_true", help="pin the load generator and the servers to separate CPUs")
    add_run_options(parser, NAME, keep_tmp_help="keep the gateway's working directory and log", no_pin_help=None)
    args = parser.parse_args(argv)
    return Options(
        messages=args.messages or (QUICK_MESSAGES if args.quick else MESSAGES),
        deadline_s=args.deadline,
        drain_timeout_s=args.drain_timeout,
        sample_interval_s=args.sample_interval,
        cpu_plan=plan_cpus(pin=args.pin),
        out=args.out,
        keep_tmp=args.keep_tmp,
    )


def main(argv: Sequence[str] = ()) -> int:
    options = parse_options(argv)
    console = make_console()
    pin_this_process(options.cpu_plan.client)
    clock = RunClock.start()
    with scratch_dir("bench-sustained-", keep=options.keep_tmp, console=console) as tmp:
        try:
            sink, gateway = asyncio.run(run_all(options, tmp, console))
        except ServerFailed as error:
            console.print(f"[red]could not run:[/red] {error}", markup=True, highlight=False)
            return 1
    data = figures(sink, gateway)
    console.print(render(data, options.messages))
    for row in (data["sink"], data["gateway"]):
        if row["first_error"]:
            console.print(f"[yellow]{row['target']}:[/yellow] {row['errors']} error(s), first: {row['first_error']}")
    if gateway.drain_s is None:
        console.print(
            f"[yellow]the pipeline still had entries pending {options.drain_timeout_s:g} s after the last 250[/yellow]"
        )
    print_verdicts(console, data)
    clock.print_footer(console, options.cpu_plan.describe())
    settings = {
        "messages": options.messages,
        "concurrency": CONCURRENCY,
        "size": SIZE,
        "deadline_s": options.deadline_s,
        "drain_timeout_s": options.drain_timeout_s,
        "sample_interval_s": options.sample_interval_s,
        "pinning": options.cpu_plan.describe(),
    }
    write_report(console, options.out, NAME, settings, clock, **data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
