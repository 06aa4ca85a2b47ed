"""Plumbing shared by the benchmarks: server child processes, readiness checks, CPU pinning, output.

Nothing here measures anything; it starts and stops what a benchmark measures, and writes its
figures to bench/out/ (git-ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = REPO_ROOT / "bench" / "out"


class ServerFailed(Exception):
    """A server process exited or never became ready; the message carries the tail of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted sequence; NaN when it is empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass(frozen=True)
class CpuPlan:
    """Which CPUs the load generator and the measured servers may use (None: no pinning)."""

    client: frozenset[int] | None
    servers: frozenset[int] | None

    def describe(self) -> str:
        if self.client is None or self.servers is None:
            return "not pinned"
        return f"load generator on CPU {_cpus(self.client)}, servers on CPU {_cpus(self.servers)}"


def _cpus(cpus: frozenset[int]) -> str:
    return ",".join(str(cpu) for cpu in sorted(cpus))


#: The CPUs this process could use when it started. Benchmarks pin the process (see
#: pin_this_process), and `python -m bench` runs them one after another in one process, so each
#: plans from this set rather than from whatever the previous benchmark left behind.
INITIAL_CPUS: frozenset[int] = frozenset(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else frozenset()


def plan_cpus(pin: bool) -> CpuPlan:
    """Give the load generator one CPU and the servers the rest, when pinning is possible at all."""
    available = sorted(INITIAL_CPUS)
    if not pin or len(available) < 2:
        return CpuPlan(None, None)
    return CpuPlan(frozenset(available[:1]), frozenset(available[1:]))


def pin_this_process(cpus: frozenset[int] | None) -> None:
    """Run this process (and the children it starts unpinned) on `cpus`; None: on every initial CPU."""
    if hasattr(os, "sched_setaffinity") and INITIAL_CPUS:
        os.sched_setaffinity(0, cpus if cpus is not None else INITIAL_CPUS)


@dataclass
class ServerProcess:
    """A child process serving something a benchmark measures, with its output in a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise ServerFailed(f"{self.name} exited with status {self.popen.returncode}\n{self.log_tail()}")

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within grace_s."""
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=grace_s)


@contextmanager
def server_process(
    name: str,
    argv: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cpus: frozenset[int] | None = None,
) -> Iterator[ServerProcess]:
    """Run argv (cwd: the repository) for the duration of the block; always stopped afterwards."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        popen = subprocess.Popen(
            list(argv),
            cwd=REPO_ROOT,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the benchmark, which then stops its children
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus is not None else None,
        )
    process = ServerProcess(name=name, popen=popen, log_path=log_path)
    try:
        yield process
    finally:
        process.stop()


async def wait_for_port(process: ServerProcess, host: str, port: int, timeout_s: float) -> None:
    """Return once host:port accepts a TCP connection; ServerFailed if the process dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        process.check_alive()
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=2)
        except (TimeoutError, OSError):
            pass
        else:
            writer.close()
            await writer.wait_closed()
            return
        if time.monotonic() > deadline:
            raise ServerFailed(
                f"{process.name} not listening on {host}:{port} after {timeout_s:.0f} s\n{process.log_tail()}"
            )
        await asyncio.sleep(0.1)


async def http_status(host: str, port: int, path: str, timeout_s: float = 2.0) -> int | None:
    """The status code of GET path, or None if there is no answer."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=timeout_s)
    except (TimeoutError, OSError):
        return None
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=timeout_s)
    except (TimeoutError, OSError):
        return None
    finally:
        writer.close()
    parts = status_line.split()
    return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None


async def wait_for_http_ok(process: ServerProcess, host: str, port: int, path: str, timeout_s: float) -> float:
    """Poll GET path until it answers 200; returns the seconds it took."""
    started = time.monotonic()
    last: int | None = None
    while True:
        process.check_alive()
        last = await http_status(host, port, path)
        if last == 200:
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise ServerFailed(
                f"{process.name}: GET {path} gave {last} after {timeout_s:.0f} s, not 200\n{process.log_tail()}"
            )
        await asyncio.sleep(0.2)


def write_json(path: Path, data: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------------------------
# What every benchmark reports alongside its figures


def load_average() -> str:
    """The 1-minute load average: other work on the machine makes every figure noisier."""
    return f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "?"


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def git_state() -> dict[str, Any]:
    """The commit measured, and whether the gateway's code differed from it (others edit the tree)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    changed = git("status", "--porcelain", "--", "gateway", "store", "templates")
    return {"commit": git("rev-parse", "--short", "HEAD"), "uncommitted_gateway_changes": changed.splitlines()}


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Latencies:
    """Summary of a list of latencies in milliseconds (nearest-rank percentiles)."""

    count: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float

    @classmethod
    def of(cls, values_ms: Sequence[float]) -> Latencies:
        ordered = sorted(values_ms)
        mean = sum(ordered) / len(ordered) if ordered else math.nan
        return cls(
            count=len(ordered),
            p50_ms=percentile(ordered, 50),
            p99_ms=percentile(ordered, 99),
            mean_ms=mean,
            max_ms=ordered[-1] if ordered else math.nan,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            **{name: rounded(getattr(self, name)) for name in ("p50_ms", "p99_ms", "mean_ms", "max_ms")},
        }


def rounded(value: float, digits: int = 2) -> float | None:
    return None if math.isnan(value) else round(value, digits)


def ratio_or_nan(numerator: float, denominator: float) -> float:
    if math.isnan(numerator) or math.isnan(denominator) or denominator == 0:
        return math.nan
    return numerator / denominator


def verdict(passed: bool | None) -> str:
    """PASS, MISS, or n/a when the figure could not be measured."""
    return "n/a" if passed is None else ("PASS" if passed else "MISS")


def verdict_markup(outcome: str) -> str:
    colour = {"PASS": "green", "MISS": "red"}.get(outcome, "yellow")
    return f"[bold {colour}]{outcome}[/bold {colour}]"


def make_console() -> Console:
    """A rich console; when the output is a file or a pipe, wide enough for the tables."""
    console = Console()
    return console if console.is_terminal else Console(width=140)


# --------------------------------------------------------------------------------------------
# The scaffolding of a benchmark's main(): command line, scratch directory, footer, report


def add_run_options(parser: argparse.ArgumentParser, name: str, *, keep_tmp_help: str, no_pin_help: str | None) -> None:
    """The options every benchmark ends with: --no-pin (unless no_pin_help is None), --out, --keep-tmp."""
    if no_pin_help is not None:
        parser.add_argument("--no-pin", action="store_true", help=no_pin_help)
    parser.add_argument("--out", type=Path, default=OUT_DIR / f"{name}.json")
    parser.add_argument("--keep-tmp", action="store_true", help=keep_tmp_help)


@contextmanager
def scratch_dir(prefix: str, *, keep: bool, console: Console, kept: str = "working directories") -> Iterator[Path]:
    """A fresh temporary directory for the block; removed afterwards unless keep (then its path is printed)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield tmp
    finally:
        if keep:
            console.print(f"{kept} kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class RunClock:
    """The load average before and after a benchmark, and how long it took."""

    load_before: str
    started: float
    load_after: str = "?"

    @classmethod
    def start(cls) -> RunClock:
        return cls(load_before=load_average(), started=time.monotonic())

    def print_footer(self, console: Console, pinning: str | None) -> None:
        """Read the load average again and print the closing line (prefixed by the pinning, if any)."""
        self.load_after = load_average()
        prefix = "load average" if pinning is None else f"{pinning}; load average"
        console.print(
            f"{prefix} before/after: {self.load_before} / {self.load_after}; {time.monotonic() - self.started:.0f} s"
        )


def write_report(
    console: Console, path: Path, name: str, settings: Mapping[str, Any], clock: RunClock, **figures: Any
) -> Path:
    """Write the benchmark's JSON (common header, settings, load average, then `figures`) and say where."""
    data = {
        "benchmark": name,
        "finished_at": now_iso(),
        "machine": machine(),
        "git": git_state(),
        "settings": dict(settings),
        "load_average_1min": {"before": clock.load_before, "after": clock.load_after},
        **figures,
    }
    written = write_json(path, data)
    console.print(f"figures written to {written}")
    return written
