"""Peak memory: the RSS of `gateway serve` while four ~60 MiB messages arrive at once over SMTP.

A fresh gateway (SQLite by default, `--backends sqlite,postgresql` for both) first gets one small
message and processes it, so that everything a message needs is imported and warmed up; its RSS
then is the baseline. Four clients then connect at once and each sends one message of about
60 MiB on the wire: a short text and one attachment, base64-encoded (so ~44 MiB decoded, beyond
the 15 MiB attachment limit: it is recorded as refused and a notice goes out, as in real life).
The gateway's RSS is sampled from /proc/PID/status every few milliseconds, and its kernel-kept
peak (VmHWM, reset after the baseline through /proc/PID/clear_refs) is read at the end, from
before the first byte until all four are acknowledged (phase "receive") and then until the
pipeline has processed all four (phase "process").

The same four messages go first to bench.sink (aiosmtpd answering 250 and keeping nothing), measured
the same way: what the SMTP library alone costs, for comparison.

Reported: baseline RSS, peak RSS per phase, and (peak − baseline) / bytes in flight, where bytes
in flight = 4 × message size. Target (issue 7): at most 4× (PASS/MISS). Figures go to
bench/out/peak_memory.json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosmtplib
from rich.table import Table
from sqlalchemy import create_engine, text

from bench.common import (
    CpuPlan,
    RunClock,
    ServerFailed,
    add_run_options,
    free_port,
    make_console,
    pin_this_process,
    plan_cpus,
    scratch_dir,
    server_process,
    verdict,
    verdict_markup,
    wait_for_http_ok,
    wait_for_port,
    write_report,
)
from bench.pg import NoPostgres, throwaway_database
from bench.smtp_throughput import CUSTOMERS, HOST, RECIPIENT, SMTP_TIMEOUT_S, gateway_env

NAME = "peak_memory"
MIB = 1024 * 1024
MESSAGES = 4
WIRE_BYTES = 60 * MIB
TARGET_RATIO = 4.0
SAMPLE_S = 0.005
PROCESS_TIMEOUT_S = 300.0


# --------------------------------------------------------------------------------------------
# Reading a process's memory


def status_kib(pid: int, field_name: str) -> int:
    """A `VmRSS`/`VmHWM` line of /proc/PID/status, in KiB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise KeyError(field_name)


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0); False where that is not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


@dataclass
class Sampler:
    """Samples a process's RSS in a thread; `phase` says which phase a sample belongs to."""

    pid: int
    phase: str = "idle"
    peaks_kib: dict[str, int] = field(default_factory=dict)
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss = status_kib(self.pid, "VmRSS")
            except (OSError, KeyError):
                return  # the process is gone
            self.peaks_kib[self.phase] = max(rss, self.peaks_kib.get(self.phase, 0))
            self.samples += 1
            self._stop.wait(SAMPLE_S)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


# --------------------------------------------------------------------------------------------
# The messages


def big_message(number: int, wire_bytes: int) -> tuple[str, bytes]:
    """(sender, bytes) of a message about `wire_bytes` long: a text and one base64 attachment."""
    name, sender = CUSTOMERS[number % len(CUSTOMERS)]
    head = (
        f"From: {sender}\r\nTo: {RECIPIENT}\r\nSubject: Skany dokumentów, część {number + 1}\r\n"
        f"Message-ID: <peak.{number}.{os.getpid()}.{time.time_ns()}@klient.example.pl>\r\n"
        'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        f"Dzień dobry, w załączniku skany umowy.\r\nPozdrawiam, {name}\r\n"
        '--b\r\nContent-Type: application/pdf; name="skany.pdf"\r\nContent-Transfer-Encoding: base64\r\n'
        'Content-Disposition: attachment; filename="skany.pdf"\r\n\r\n'
    ).encode()
    tail = b"\r\n--b--\r\n"
    raw_len = (wire_bytes - len(head) - len(tail)) * 3 // 4 * 76 // 78
    encoded = base64.encodebytes(os.urandom(raw_len)).replace(b"\n", b"\r\n")
    return sender, head + encoded + tail


async def send(port: int, sender: str, message: bytes) -> float:
    """Deliver one message on a connection of its own; returns seconds until its 250."""
    client = aiosmtplib.SMTP(hostname=HOST, port=port, timeout=SMTP_TIMEOUT_S * 10)
    started = time.perf_counter()
    async with client:
        await client.sendmail(sender, [RECIPIENT], message)
    return time.perf_counter() - started


# --------------------------------------------------------------------------------------------
# One measurement


@dataclass
class Measurement:
    backend: str
    message_bytes: int
    baseline_kib: int = 0
    peaks_kib: dict[str, int] = field(default_factory=dict)
    hwm_kib: int | None = None
    receive_s: float = 0.0
    process_s: float | None = None
    processed: int = 0
    samples: int = 0
    error: str | None = None

    @property
    def in_flight(self) -> int:
        return MESSAGES * self.message_bytes

    def peak_kib(self) -> int:
        return max([*self.peaks_kib.values(), self.hwm_kib or 0])

    def ratio(self) -> float:
        return (self.peak_kib() - self.baseline_kib) * 1024 / self.in_flight


def journal_counts(journal_url: str) -> tuple[int, int]:
    """(pending, processed) journal entries."""
    engine = create_engine(journal_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT status, count(*) FROM journal_entry GROUP BY status")).all()
    finally:
        engine.dispose()
    counts = {status: count for status, count in rows}
    return counts.get("pending", 0), sum(count for status, count in counts.items() if status != "pending")


async def wait_processed(journal_url: str, expected: int, timeout_s: float) -> tuple[float | None, int]:
    started = time.perf_counter()
    while True:
        pending, processed = journal_counts(journal_url)
        if pending == 0 and processed >= expected:
            return time.perf_counter() - started, processed
        if time.perf_counter() - started > timeout_s:
            return None, processed
        await asyncio.sleep(0.1)


async def measure(
    pid: int, port: int, journal_url: str | None, messages: Sequence[tuple[str, bytes]], run: Measurement
) -> None:
    """Baseline, then the messages at once; journal_url None (the sink): no processing phase."""
    # Warm-up: one small message, processed, before the baseline is taken.
    await send(
        port,
        CUSTOMERS[0][1],
        f"From: {CUSTOMERS[0][1]}\r\nTo: {RECIPIENT}\r\nSubject: test\r\n\r\nDzień dobry\r\n".encode(),
    )
    if journal_url is not None:
        await wait_processed(journal_url, 1, 60)
    await asyncio.sleep(1.0)
    run.baseline_kib = status_kib(pid, "VmRSS")
    can_reset = reset_peak(pid)
    sampler = Sampler(pid)
    sampler.phase = "receive"
    sampler.start()
    started = time.perf_counter()
    try:
        await asyncio.gather(*(send(port, sender, message) for sender, message in messages))
        run.receive_s = time.perf_counter() - started
        if journal_url is not None:
            sampler.phase = "process"
            run.process_s, run.processed = await wait_processed(journal_url, 1 + len(messages), PROCESS_TIMEOUT_S)
        run.hwm_kib = status_kib(pid, "VmHWM") if can_reset else None
    finally:
        sampler.stop()
    run.peaks_kib, run.samples = dict(sampler.peaks_kib), sampler.samples


@contextmanager
def database(backend: str, workdir: Path) -> Iterator[tuple[str | None, str]]:
    """(GATEWAY_DATABASE_URL or None for the default SQLite file, URL of the journal's database)."""
    if backend == "sqlite":
        yield None, f"sqlite:///{workdir / 'data' / 'journal.db'}"
        return
    with throwaway_database("bench_memory") as url:
        yield url, url


def run_sink(messages: Sequence[tuple[str, bytes]], options: Options, tmp: Path) -> Measurement:
    """The same delivery to bench.sink (aiosmtpd answering 250 and keeping nothing): what the SMTP
    library alone costs, the baseline the gateway's figure is compared with."""
    run = Measurement(backend="sink", message_bytes=sum(len(m) for _, m in messages) // len(messages))
    port = free_port(HOST)
    argv = [sys.executable, "-m", "bench.sink", "--host", HOST, "--port", str(port)]
    with server_process("sink", argv, log_path=tmp / "sink.log", cpus=options.cpu_plan.servers) as sink:
        try:
            asyncio.run(wait_for_port(sink, HOST, port, 15))
            asyncio.run(measure(sink.popen.pid, port, None, messages, run))
        except (ServerFailed, aiosmtplib.SMTPException, OSError) as error:
            run.error = f"{type(error).__name__}: {error}"
    return run


def run_backend(backend: str, messages: Sequence[tuple[str, bytes]], options: Options, tmp: Path) -> Measurement:
    run = Measurement(backend=backend, message_bytes=sum(len(m) for _, m in messages) // len(messages))
    workdir = tmp / backend
    smtp_port, http_port = free_port(HOST), free_port(HOST)
    with ExitStack() as stack:
        database_url, journal_url = stack.enter_context(database(backend, workdir))
        env = gateway_env(workdir, smtp_port, http_port, database_url)
        gateway = stack.enter_context(
            server_process(
                "gateway",
                [sys.executable, "-m", "gateway", "serve"],
                log_path=workdir / "gateway.log",
                env=env,
                cpus=options.cpu_plan.servers,
            )
        )
        try:
            asyncio.run(wait_for_http_ok(gateway, HOST, http_port, "/healthz", 90))
            asyncio.run(measure(gateway.popen.pid, smtp_port, journal_url, messages, run))
            gateway.check_alive()
        except (ServerFailed, aiosmtplib.SMTPException, OSError) as error:
            run.error = f"{type(error).__name__}: {error}"
    return run


# --------------------------------------------------------------------------------------------
# Report


def summary(run: Measurement) -> dict[str, Any]:
    processed = run.backend == "sink" or run.processed >= 1 + MESSAGES
    measured = run.error is None and processed and run.samples > 0
    return {
        "backend": run.backend,
        "messages": MESSAGES,
        "message_bytes": run.message_bytes,
        "bytes_in_flight": run.in_flight,
        "baseline_rss_mib": round(run.baseline_kib / 1024, 1),
        "peak_rss_mib_by_phase": {phase: round(kib / 1024, 1) for phase, kib in run.peaks_kib.items()},
        "vm_hwm_mib": None if run.hwm_kib is None else round(run.hwm_kib / 1024, 1),
        "peak_minus_baseline_mib": round((run.peak_kib() - run.baseline_kib) / 1024, 1),
        "ratio_to_in_flight": round(run.ratio(), 2) if run.samples else None,
        "receive_s": round(run.receive_s, 2),
        "process_s": None if run.process_s is None else round(run.process_s, 2),
        "samples": run.samples,
        "target_ratio": TARGET_RATIO,
        "verdict": verdict(run.ratio() <= TARGET_RATIO if measured else None),
        "error": run.error,
    }


def render(results: Sequence[dict[str, Any]]) -> Table:
    table = Table(title=f"Peak RSS of gateway serve, {MESSAGES} messages of ~60 MiB at once", title_justify="left")
    for name in (
        "backend",
        "in flight MiB",
        "baseline MiB",
        "peak receiving",
        "peak processing",
        "VmHWM",
        "peak − baseline",
        "ratio",
        "receive s",
        "process s",
        "target",
    ):
        table.add_column(name, justify="left" if name == "backend" else "right")
    for result in results:
        peaks = result["peak_rss_mib_by_phase"]
        table.add_row(
            result["backend"],
            f"{result['bytes_in_flight'] / MIB:.0f}",
            f"{result['baseline_rss_mib']:.0f}",
            _mib(peaks.get("receive")),
            _mib(peaks.get("process")),
            _mib(result["vm_hwm_mib"]),
            f"{result['peak_minus_baseline_mib']:.0f}",
            "–" if result["ratio_to_in_flight"] is None else f"{result['ratio_to_in_flight']:.2f}×",
            f"{result['receive_s']:.1f}",
            "–" if result["process_s"] is None else f"{result['process_s']:.1f}",
            "(baseline)" if result["backend"] == "sink" else verdict_markup(result["verdict"]),
            end_section=result["backend"] == "sink",
        )
    return table


def _mib(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


@dataclass(frozen=True)
class Options:
    backends: tuple[str, ...]
    wire_bytes: int
    cpu_plan: CpuPlan
    out: Path
    keep_tmp: bool


def parse_options(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench peak_memory", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="SQLite only")
    parser.add_argument("--backends", help="comma-separated from sqlite, postgresql (default: both; --quick: sqlite)")
    parser.add_argument("--mib", type=float, default=WIRE_BYTES / MIB, help="size of each message (%(default)s MiB)")
    add_run_options(
        parser,
        NAME,
        no_pin_help="do not pin client and server to separate CPUs",
        keep_tmp_help="keep the gateway's working directory and log",
    )
    args = parser.parse_args(argv)
    backends = tuple(b.strip() for b in (args.backends or ("sqlite" if args.quick else "sqlite,postgresql")).split(","))
    if not set(backends) <= {"sqlite", "postgresql"}:
        parser.error("backends are sqlite and postgresql")
    return Options(
        backends=backends,
        wire_bytes=int(args.mib * MIB),
        cpu_plan=plan_cpus(pin=not args.no_pin),
        out=args.out,
        keep_tmp=args.keep_tmp,
    )


def main(argv: Sequence[str] = ()) -> int:
    options = parse_options(argv)
    console = make_console()
    pin_this_process(options.cpu_plan.client)
    clock = RunClock.start()
    messages = [big_message(number, options.wire_bytes) for number in range(MESSAGES)]
    results, notes = [], []
    with scratch_dir("bench-memory-", keep=options.keep_tmp, console=console) as tmp:
        results.append(summary(run_sink(messages, options, tmp)))
        for backend in options.backends:
            try:
                results.append(summary(run_backend(backend, messages, options, tmp)))
            except NoPostgres as error:
                notes.append(f"{backend} skipped: {error}")
            console.log(f"{backend} done")
    console.print(render(results))
    for result in results[1:]:
        ratio = result["ratio_to_in_flight"]
        console.print(
            f"{verdict_markup(result['verdict'])}: {result['backend']} peak RSS grew by "
            f"{result['peak_minus_baseline_mib']:.0f} MiB for {result['bytes_in_flight'] / MIB:.0f} MiB in flight "
            f"= {ratio}× (target: at most {TARGET_RATIO:g}×)"
        )
        if result["error"]:
            console.print(f"[red]{result['backend']}:[/red] {result['error']}", highlight=False)
    for note in notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    clock.print_footer(console, options.cpu_plan.describe())
    settings = {
        "messages": MESSAGES,
        "wire_bytes_each": options.wire_bytes,
        "sample_interval_s": SAMPLE_S,
        "pinning": options.cpu_plan.describe(),
    }
    write_report(console, options.out, NAME, settings, clock, results=results, notes=notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
