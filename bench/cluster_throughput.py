"""SMTP throughput on PostgreSQL with one and with two `gateway serve` instances, against the sink.

The machinery of bench.smtp_throughput (the same ~2 KB Polish messages, the same client: one EHLO
per connection, then MAIL/RCPT/DATA repeatedly, latency from MAIL FROM to the 250 after DATA) at
concurrency 32, 2 000 messages (300 with --quick), delivered to
  - bench.sink, the no-op SMTP server (the baseline);
  - one gateway on a fresh PostgreSQL database;
  - two gateways on one fresh PostgreSQL database (SPEC §10: they share nothing but the database),
    the 32 connections split evenly between their two SMTP ports.
Each gateway keeps attachment contents in the database and delivers its outgoing mail into a
maildir of its own. After the last acknowledgement, the time until the cluster has processed every
journaled message is measured too (the pipeline runs behind the acknowledgements), so the table
shows what the instances acknowledge and what they get through.

Reported: msg/s, p50, p99 and each one's ratio to the sink's. There is no target in issue 7 for
this one; it shows what a second instance buys. Note that with the default CPU pinning on a
two-CPU machine both instances share the one CPU the load generator leaves them (PostgreSQL runs
unpinned). Figures go to bench/out/cluster_throughput.json.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table
from sqlalchemy import Engine, create_engine, text

from bench.common import (
    CpuPlan,
    RunClock,
    add_run_options,
    free_port,
    make_console,
    pin_this_process,
    plan_cpus,
    ratio_or_nan,
    rounded,
    scratch_dir,
    server_process,
    wait_for_http_ok,
    wait_for_port,
    write_report,
)
from bench.pg import NoPostgres, throwaway_database
from bench.smtp_throughput import HOST, SIZES, Payload, RunResult, build_payloads, gateway_env, measure

NAME = "cluster_throughput"
MESSAGES = 2000
QUICK_MESSAGES = 300
CONCURRENCY = 32
SIZE = "2KB"
STARTUP_TIMEOUT_S = 90.0


@dataclass
class ClusterRun:
    instances: int
    result: RunResult
    drain_s: float | None = None  # after the last 250, until nothing journaled is pending
    processed: int = 0
    startup_s: float = 0.0


def pending_and_processed(engine: Engine) -> tuple[int, int]:
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT status, count(*) FROM journal_entry GROUP BY status")).all()
    counts = {status: count for status, count in rows}
    return counts.get("pending", 0), counts.get("done", 0) + counts.get("duplicate", 0)


async def wait_drained(database_url: str, timeout_s: float) -> tuple[float | None, int]:
    """Seconds until no journal entry is pending (None: not within timeout_s), and how many were processed."""
    engine = create_engine(database_url)
    started = time.perf_counter()
    try:
        while True:
            pending, processed = pending_and_processed(engine)
            if pending == 0:
                return time.perf_counter() - started, processed
            if time.perf_counter() - started > timeout_s:
                return None, processed
            await asyncio.sleep(0.2)
    finally:
        engine.dispose()


async def start_sink(stack: AsyncExitStack, tmp: Path, cpus: frozenset[int] | None) -> int:
    port = free_port(HOST)
    argv = [sys.executable, "-m", "bench.sink", "--host", HOST, "--port", str(port)]
    sink = stack.enter_context(server_process("sink", argv, log_path=tmp / "sink.log", cpus=cpus))
    await wait_for_port(sink, HOST, port, timeout_s=15)
    return port


async def measure_cluster(instances: int, payloads: Sequence[Payload], options: Options, tmp: Path) -> ClusterRun:
    """`instances` fresh gateways on one fresh database; started one after the other (the first migrates)."""
    with throwaway_database("bench_cluster") as url, ExitStack() as processes:
        ports, started = [], time.perf_counter()
        for number in range(instances):
            workdir = tmp / f"cluster{instances}-gw{number}"
            smtp_port, http_port = free_port(HOST), free_port(HOST)
            env = gateway_env(workdir, smtp_port, http_port, url, GATEWAY_INSTANCE_NAME=f"bench-gw{number}")
            gateway = processes.enter_context(
                server_process(
                    "gateway",
                    [sys.executable, "-m", "gateway", "serve"],
                    log_path=workdir / "gateway.log",
                    env=env,
                    cpus=options.cpu_plan.servers,
                )
            )
            await wait_for_http_ok(gateway, HOST, http_port, "/healthz", STARTUP_TIMEOUT_S)
            ports.append(smtp_port)
        startup_s = time.perf_counter() - started
        result = await measure(
            target=f"gateway x{instances}",
            port=ports,
            payloads=payloads,
            size=SIZE,
            concurrency=CONCURRENCY,
            deadline_s=options.deadline_s,
            advance=lambda: None,
        )
        drain_s, processed = await wait_drained(url, options.drain_timeout_s)
        return ClusterRun(instances, result, drain_s=drain_s, processed=processed, startup_s=startup_s)


async def run_all(options: Options, tmp: Path, console: Any) -> tuple[RunResult, list[ClusterRun]]:
    payloads = build_payloads(options.messages, SIZES[SIZE])
    async with AsyncExitStack() as stack:
        sink_port = await start_sink(stack, tmp, options.cpu_plan.servers)
        sink = await measure(
            target="sink",
            port=sink_port,
            payloads=payloads,
            size=SIZE,
            concurrency=CONCURRENCY,
            deadline_s=options.deadline_s,
            advance=lambda: None,
        )
        console.log(f"sink: {sink.msg_per_s:.0f} msg/s")
    runs = []
    for instances in (1, 2):
        runs.append(await measure_cluster(instances, payloads, options, tmp))
        console.log(f"{instances} instance(s): {runs[-1].result.msg_per_s:.0f} msg/s, drained in {runs[-1].drain_s} s")
    return sink, runs


# --------------------------------------------------------------------------------------------
# Report


def row_figures(result: RunResult, sink: RunResult) -> dict[str, Any]:
    mine, base = result.summary(), sink.summary()
    return {
        **{
            key: mine[key]
            for key in (
                "target",
                "ok",
                "planned",
                "errors",
                "elapsed_s",
                "msg_per_s",
                "p50_ms",
                "p99_ms",
                "timed_out",
                "first_error",
            )
        },
        "msg_per_s_vs_sink": rounded(ratio_or_nan(result.msg_per_s, sink.msg_per_s), 3),
        "p50_vs_sink": rounded(ratio_or_nan(_f(mine["p50_ms"]), _f(base["p50_ms"])), 2),
        "p99_vs_sink": rounded(ratio_or_nan(_f(mine["p99_ms"]), _f(base["p99_ms"])), 2),
    }


def _f(value: float | None) -> float:
    return float("nan") if value is None else value


def cluster_figures(run: ClusterRun, sink: RunResult) -> dict[str, Any]:
    figures = row_figures(run.result, sink)
    through = None
    if run.drain_s is not None and run.result.ok:
        through = round(run.result.ok / (run.result.elapsed_s + run.drain_s), 1)
    return {
        "instances": run.instances,
        **figures,
        "startup_s": round(run.startup_s, 2),
        "drain_s": None if run.drain_s is None else round(run.drain_s, 2),
        "journal_entries_processed": run.processed,
        "processed_msg_per_s": through,
    }


def render(sink: dict[str, Any], clusters: Sequence[dict[str, Any]], messages: int) -> Table:
    table = Table(title=f"SMTP on PostgreSQL, c={CONCURRENCY}, {SIZE}, {messages} messages", title_justify="left")
    for name in (
        "target",
        "acked",
        "msg/s",
        "p50 ms",
        "p99 ms",
        "msg/s vs sink",
        "p50 vs sink",
        "p99 vs sink",
        "drained after s",
        "processed msg/s",
    ):
        table.add_column(name, justify="left" if name == "target" else "right")
    for row in (sink, *clusters):
        is_sink = row["target"] == "sink"
        table.add_row(
            row["target"],
            f"{row['ok']}/{row['planned']}",
            f"{row['msg_per_s']:,.0f}",
            _ms(row["p50_ms"]),
            _ms(row["p99_ms"]),
            "" if is_sink else _ratio(row["msg_per_s_vs_sink"], percent=True),
            "" if is_sink else _ratio(row["p50_vs_sink"]),
            "" if is_sink else _ratio(row["p99_vs_sink"]),
            "" if is_sink else ("not within limit" if row["drain_s"] is None else f"{row['drain_s']:.1f}"),
            "" if is_sink or row["processed_msg_per_s"] is None else f"{row['processed_msg_per_s']:,.0f}",
        )
    return table


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def _ratio(value: float | None, percent: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:.0%}" if percent else f"{value:.2f}×"


# --------------------------------------------------------------------------------------------
# Command line


@dataclass(frozen=True)
class Options:
    messages: int
    deadline_s: float
    drain_timeout_s: float
    cpu_plan: CpuPlan
    out: Path
    keep_tmp: bool


def parse_options(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench cluster_throughput", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_MESSAGES} messages instead of {MESSAGES}")
    parser.add_argument("--messages", type=int, help="messages per run (overrides --quick)")
    parser.add_argument("--deadline", type=float, default=40.0, help="seconds one run may take (%(default)s)")
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=90.0,
        help="seconds to wait for the pipeline after the last 250 (%(default)s)",
    )
    add_run_options(
        parser,
        NAME,
        no_pin_help="do not pin load generator and servers to separate CPUs",
        keep_tmp_help="keep the gateways' working directories and logs",
    )
    args = parser.parse_args(argv)
    return Options(
        messages=args.messages or (QUICK_MESSAGES if args.quick else MESSAGES),
        deadline_s=args.deadline,
        drain_timeout_s=args.drain_timeout,
        cpu_plan=plan_cpus(pin=not args.no_pin),
        out=args.out,
        keep_tmp=args.keep_tmp,
    )


def main(argv: Sequence[str] = ()) -> int:
    options = parse_options(argv)
    console = make_console()
    pin_this_process(options.cpu_plan.client)
    clock = RunClock.start()
    with scratch_dir("bench-cluster-", keep=options.keep_tmp, console=console) as tmp:
        try:
            sink, runs = asyncio.run(run_all(options, tmp, console))
        except NoPostgres as error:
            console.print(f"[yellow]skipped:[/yellow] {error}")
            return 0
    sink_row = row_figures(sink, sink)
    clusters = [cluster_figures(run, sink) for run in runs]
    console.print(render(sink_row, clusters, options.messages))
    for row in (sink_row, *clusters):
        if row["first_error"]:
            console.print(f"[yellow]{row['target']}:[/yellow] {row['errors']} error(s), first: {row['first_error']}")
    if len(clusters) == 2 and clusters[0]["msg_per_s"]:
        gain = clusters[1]["msg_per_s"] / clusters[0]["msg_per_s"]
        console.print(f"two instances acknowledge {gain:.2f}× what one does")
    clock.print_footer(console, options.cpu_plan.describe())
    settings = {
        "messages": options.messages,
        "concurrency": CONCURRENCY,
        "size": SIZE,
        "deadline_per_run_s": options.deadline_s,
        "pinning": options.cpu_plan.describe(),
    }
    write_report(console, options.out, NAME, settings, clock, sink=sink_row, clusters=clusters)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
