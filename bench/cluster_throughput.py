"""Scale-out on PostgreSQL: one, two and three `gateway serve` instances on one database, against the sink.

The machinery of bench.smtp_throughput (the same ~2 KB Polish messages, the same client: one EHLO
per connection, then MAIL/RCPT/DATA repeatedly, latency from MAIL FROM to the 250 after DATA) at
concurrency 32, 2 000 messages (300 with --quick), delivered to
  - bench.sink, the no-op SMTP server (the baseline);
  - N gateways (--instances, default 1,2,3) on one fresh PostgreSQL database each time (SPEC §10:
    they share nothing but the database), the 32 connections split evenly between their SMTP ports.
Each gateway keeps attachment contents in the database, delivers its outgoing mail into a maildir
of its own and asks a DNS server on 127.0.0.1 that knows nothing (so sender checks stay local).

Acknowledging is not processing (the pipeline runs behind the acknowledgements), so besides what
the instances acknowledge, the journal is watched read-only (bench/backlog.py): after the last
acknowledgement the benchmark waits (at most --drain-timeout) until no entry is pending and reads
when the last one was finished. "processed msg/s" is entries finished (warm-up messages included)
over the time from the first connection to that moment; the lag (age of the oldest pending entry)
is sampled throughout, and so is how busy the machine's CPUs were from the first connection to
the drain (/proc/stat): the instances, the database server and the load generator share them, so
once one instance keeps them busy a second has nothing left to add. Issue 13's target: two
instances process at least 1.5x what one does (three are reported as well), same run.

By default nothing is pinned: on a two-CPU machine the default pinning of the other benchmarks
would put every instance on the one CPU the load generator leaves, and a second instance could
not add any CPU (--pin does that anyway). Every instance is one process by default
(--parse-workers 0): with its parse pool, one instance already keeps both CPUs of this machine
busy, and N instances would be N pools competing for the same two CPUs, not N instances adding
up; --parse-workers 1 measures them with their pools. Figures go to
bench/out/cluster_throughput.json.
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

from bench.backlog import JournalTotals, JournalWatch, count_rows
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
from bench.pg import NoPostgres, throwaway_database
from bench.smtp_throughput import HOST, SIZES, Payload, RunResult, build_payloads, gateway_env, measure
from bench.sustained import LOAD_GENERATOR_ALLOWANCE, local_dns

NAME = "cluster_throughput"
MESSAGES = 2000
QUICK_MESSAGES = 300
CONCURRENCY = 32
SIZE = "2KB"
STARTUP_TIMEOUT_S = 90.0
INSTANCES = (1, 2, 3)
SCALE_TARGET = 1.5  # issue 13: two instances process at least 1.5x what one does


@dataclass
class ClusterRun:
    instances: int
    result: RunResult
    origin: float  # time.time() before the first connection
    drain_s: float | None  # after the last 250, until nothing journaled is pending
    totals: JournalTotals
    cases: int | None
    max_lag_s: float
    lag_at_last_ack_s: float
    startup_s: float
    machine_busy: float | None  # share of all CPUs busy from the first connection to drained

    @property
    def processed_s(self) -> float | None:
        """From the first connection to the last journal entry finished; None if it never drained."""
        if self.drain_s is None or self.totals.last_processed_epoch is None:
            return None
        return self.totals.last_processed_epoch - self.origin

    @property
    def processed_msg_per_s(self) -> float | None:
        elapsed = self.processed_s
        return self.totals.finished / elapsed if elapsed else None


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot (Linux /proc/stat), None elsewhere."""
    try:
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _busy_between(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


async def start_sink(stack: AsyncExitStack, tmp: Path, cpus: frozenset[int] | None) -> int:
    port = free_port(HOST)
    argv = [sys.executable, "-m", "bench.sink", "--host", HOST, "--port", str(port)]
    sink = stack.enter_context(server_process("sink", argv, log_path=tmp / "sink.log", cpus=cpus))
    await wait_for_port(sink, HOST, port, timeout_s=15)
    return port


async def measure_cluster(
    instances: int, payloads: Sequence[Payload], options: Options, tmp: Path, dns: str
) -> ClusterRun:
    """`instances` fresh gateways on one fresh database; started one after the other (the first migrates)."""
    with throwaway_database("bench_cluster") as url, ExitStack() as processes:
        ports, started = [], time.perf_counter()
        for number in range(instances):
            workdir = tmp / f"cluster{instances}-gw{number}"
            smtp_port, http_port = free_port(HOST), free_port(HOST)
            env = gateway_env(
                workdir,
                smtp_port,
                http_port,
                url,
                GATEWAY_INSTANCE_NAME=f"bench-gw{number}",
                GATEWAY_DNS_RESOLVER=dns,
                GATEWAY_PIPELINE_PARSE_WORKERS=str(options.parse_workers),
                **LOAD_GENERATOR_ALLOWANCE,
            )
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
        origin = time.time()
        # How busy the machine's CPUs were tells whether one more instance had any room to add.
        cpu_before = _cpu_times()
        watch = JournalWatch(url, origin=origin)
        try:
            stop = asyncio.Event()
            sampler = asyncio.create_task(watch.sample_until(stop, options.sample_interval_s))
            result = await measure(
                target=f"gateway x{instances}",
                port=ports,
                payloads=payloads,
                size=SIZE,
                concurrency=CONCURRENCY,
                deadline_s=options.deadline_s,
                advance=lambda: None,
            )
            stop.set()
            await sampler
            at_last_ack = await asyncio.to_thread(watch.sample)
            watch.samples.append(at_last_ack)
            drain_s = await watch.wait_drained(options.drain_timeout_s, interval_s=options.sample_interval_s)
            machine_busy = _busy_between(cpu_before, _cpu_times())
            totals = await asyncio.to_thread(watch.totals)
        finally:
            watch.dispose()
        return ClusterRun(
            instances,
            result,
            origin=origin,
            drain_s=drain_s,
            totals=totals,
            cases=count_rows(url, "support_case"),
            max_lag_s=watch.max_lag_s(),
            lag_at_last_ack_s=at_last_ack.lag_s,
            startup_s=startup_s,
            machine_busy=machine_busy,
        )


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
    with local_dns() as dns:
        for instances in options.instances:
            run = await measure_cluster(instances, payloads, options, tmp, dns)
            runs.append(run)
            processed = run.processed_msg_per_s
            console.log(
                f"{instances} instance(s): {run.result.msg_per_s:.0f} msg/s acknowledged, "
                f"{'not drained' if processed is None else f'{processed:.1f} msg/s processed'}"
            )
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
    processed = run.processed_msg_per_s
    return {
        "instances": run.instances,
        **figures,
        "startup_s": round(run.startup_s, 2),
        "drain_s": None if run.drain_s is None else round(run.drain_s, 2),
        "last_entry_processed_after_s": None if run.processed_s is None else round(run.processed_s, 2),
        "journal": {"entries": run.totals.entries, **run.totals.by_status},
        "journal_entries_processed": run.totals.finished,
        "cases": run.cases,
        "processed_msg_per_s": None if processed is None else round(processed, 1),
        "processed_vs_sink": None if processed is None else rounded(ratio_or_nan(processed, sink.msg_per_s), 4),
        "max_lag_s": round(run.max_lag_s, 2),
        "lag_at_last_ack_s": round(run.lag_at_last_ack_s, 2),
        "machine_cpu_busy": None if run.machine_busy is None else round(run.machine_busy, 3),
    }


def scale_figures(clusters: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Processed and acknowledged msg/s of N instances over one instance's, from the same run."""
    by_count = {row["instances"]: row for row in clusters}
    one = by_count.get(1)
    ratios: dict[str, Any] = {}
    for count, row in sorted(by_count.items()):
        if count == 1 or one is None:
            continue
        processed = (
            None
            if row["processed_msg_per_s"] is None or not one["processed_msg_per_s"]
            else round(row["processed_msg_per_s"] / one["processed_msg_per_s"], 3)
        )
        acknowledged = round(row["msg_per_s"] / one["msg_per_s"], 3) if one["msg_per_s"] else None
        ratios[f"{count}/1"] = {"processed": processed, "acknowledged": acknowledged}
    two = ratios.get("2/1", {}).get("processed")
    return {
        "ratios": ratios,
        "target": {
            "two_over_one_processed": two,
            "required": SCALE_TARGET,
            "verdict": verdict(None if two is None else two >= SCALE_TARGET),
        },
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
        "max lag s",
        "CPUs busy",
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
            "" if is_sink or row["processed_msg_per_s"] is None else f"{row['processed_msg_per_s']:,.1f}",
            "" if is_sink else f"{row['max_lag_s']:.1f}",
            "" if is_sink or row.get("machine_cpu_busy") is None else f"{100 * row['machine_cpu_busy']:.0f}%",
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
    instances: tuple[int, ...]
    deadline_s: float
    drain_timeout_s: float
    sample_interval_s: float
    cpu_plan: CpuPlan
    out: Path
    keep_tmp: bool
    parse_workers: int


def parse_options(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench cluster_throughput", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_MESSAGES} messages instead of {MESSAGES}")
    parser.add_argument("--messages", type=int, help="messages per run (overrides --quick)")
    parser.add_argument(
        "--instances", default=",".join(map(str, INSTANCES)), help="comma-separated cluster sizes (%(default)s)"
    )
    parser.add_argument("--deadline", type=float, default=40.0, help="seconds one run may take (%(default)s)")
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=240.0,
        help="seconds to wait for the pipeline after the last 250 (%(default)s)",
    )
    parser.add_argument(
        "--sample-interval", type=float, default=0.5, help="seconds between journal samples (%(default)s)"
    )
    parser.add_argument(
        "--pin", action="store_true", help="pin the load generator to one CPU and every instance to the others"
    )
    parser.add_argument(
        "--parse-workers",
        type=int,
        default=0,
        help="parse pool children per instance (%(default)s: every instance is one process, so that N "
        "instances on this one machine are compared, not N pools competing for its CPUs)",
    )
    add_run_options(parser, NAME, no_pin_help=None, keep_tmp_help="keep the gateways' working directories and logs")
    args = parser.parse_args(argv)
    instances = tuple(sorted({int(value) for value in args.instances.split(",")}))
    if not instances or min(instances) < 1 or max(instances) > 4:
        parser.error("--instances: cluster sizes between 1 and 4")
    return Options(
        messages=args.messages or (QUICK_MESSAGES if args.quick else MESSAGES),
        instances=instances,
        deadline_s=args.deadline,
        drain_timeout_s=args.drain_timeout,
        sample_interval_s=args.sample_interval,
        cpu_plan=plan_cpus(pin=args.pin),
        out=args.out,
        keep_tmp=args.keep_tmp,
        parse_workers=args.parse_workers,
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
        except ServerFailed as error:
            console.print(f"[red]could not run:[/red] {error}", markup=True, highlight=False)
            return 1
    sink_row = row_figures(sink, sink)
    clusters = [cluster_figures(run, sink) for run in runs]
    console.print(render(sink_row, clusters, options.messages))
    for row in (sink_row, *clusters):
        if row["first_error"]:
            console.print(f"[yellow]{row['target']}:[/yellow] {row['errors']} error(s), first: {row['first_error']}")
    scale = scale_figures(clusters)
    for label, pair in scale["ratios"].items():
        processed = "–" if pair["processed"] is None else f"{pair['processed']:.2f}×"
        acknowledged = "–" if pair["acknowledged"] is None else f"{pair['acknowledged']:.2f}×"
        console.print(f"instances {label}: processed msg/s {processed}, acknowledged msg/s {acknowledged}")
    target = scale["target"]
    shown = "not measured" if target["two_over_one_processed"] is None else f"{target['two_over_one_processed']:.2f}×"
    console.print(
        f"{verdict_markup(target['verdict'])}: two instances process {shown} what one does "
        f"(target: at least {SCALE_TARGET}×)"
    )
    clock.print_footer(console, options.cpu_plan.describe())
    settings = {
        "messages": options.messages,
        "instances": list(options.instances),
        "concurrency": CONCURRENCY,
        "size": SIZE,
        "deadline_per_run_s": options.deadline_s,
        "pinning": options.cpu_plan.describe(),
        "parse_workers_per_instance": options.parse_workers,
    }
    write_report(console, options.out, NAME, settings, clock, sink=sink_row, clusters=clusters, scale=scale)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
