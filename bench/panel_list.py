"""Panel list latency: `GET /api/panel/cases` for an admin whose account has 10 000 of 100 000 cases.

For each backend (SQLite, PostgreSQL) a database is bulk-loaded by bench.dataset with 100 000
cases, 10 000 of them belonging to one account (spread evenly over the two years, so the other
accounts' cases lie between them), and a real `gateway serve` is started on it. Over one keep-alive
HTTP connection this process then asks, alternately, for
  - `GET /healthz` (the baseline: the same server, HTTP stack and a `SELECT 1`), and
  - `GET /api/panel/cases?page=N` with an admin token of that account, N drawn without
    repetition from every page of its list (25 per page, so pages 1..400, deep offsets included),
300 requests each (100 with --quick) after a short warm-up; every answer is checked (200, 25
items, total 10 000). Target (issue 7): p99 of the list ≤ 50 ms (PASS/MISS); the ratio to the
health check's p99 is reported beside it. Figures go to bench/out/panel_list.json.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from rich.table import Table

from bench import dataset as ds
from bench.common import (
    CpuPlan,
    Latencies,
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
    write_report,
)
from bench.pg import NoPostgres, throwaway_database
from bench.smtp_throughput import HOST, gateway_env
from gateway.panel.auth import issue_token

NAME = "panel_list"
CASES = 100_000
FOCUS_CASES = 10_000
CASES_PER_ACCOUNT = 40
PER_PAGE = 25
REQUESTS = 300
QUICK_REQUESTS = 100
WARM_UP = 20
TARGET_P99_MS = 50.0
PANEL_SECRET = "bench-panel-secret-of-32-bytes-or-more"  # HS256 wants ≥ 32 bytes
SEED = 11


@dataclass
class Run:
    backend: str
    load_s: float = 0.0
    startup_s: float = 0.0
    list_ms: list[float] = field(default_factory=list)
    health_ms: list[float] = field(default_factory=list)
    by_depth_ms: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def shape() -> ds.Shape:
    others = (CASES - FOCUS_CASES) // CASES_PER_ACCOUNT
    return ds.Shape(cases=CASES, accounts=1 + others, focus_cases=FOCUS_CASES)


@contextmanager
def loaded_database(backend: str, data: ds.Dataset, workdir: Path, run: Run) -> Iterator[str]:
    """A database holding `data`, for the duration of the block."""
    started = time.perf_counter()
    if backend == "sqlite":
        url = f"sqlite:///{workdir / 'gateway.db'}"
        journal = workdir / "data" / "journal.db"
        ds.prepare_schema(url, journal)
        ds.load_sqlite(data, url, journal)
        run.load_s = time.perf_counter() - started
        yield url
        return
    with throwaway_database("bench_panel") as url:
        ds.prepare_schema(url)
        ds.load_postgresql(data, url)
        run.load_s = time.perf_counter() - started
        yield url


def pages(total_cases: int, count: int) -> list[int]:
    """`count` page numbers from all of the list's pages, shuffled, repeating only if needed."""
    last = math.ceil(total_cases / PER_PAGE)
    rng = random.Random(SEED)
    chosen: list[int] = []
    while len(chosen) < count:
        every = list(range(1, last + 1))
        rng.shuffle(every)
        chosen += every
    return chosen[:count]


def depth(page: int, total_cases: int) -> str:
    third = math.ceil(total_cases / PER_PAGE) / 3
    return ("first third", "middle third", "last third")[min(2, int((page - 1) / third))]


def timed_get(client: httpx.Client, path: str, headers: dict[str, str]) -> tuple[float, httpx.Response]:
    started = time.perf_counter()
    response = client.get(path, headers=headers)
    return (time.perf_counter() - started) * 1000, response


def check_page(response: httpx.Response, page: int) -> str | None:
    if response.status_code != 200:
        return f"page {page}: HTTP {response.status_code} {response.text[:200]}"
    body = response.json()
    expected = min(PER_PAGE, FOCUS_CASES - (page - 1) * PER_PAGE)
    if body.get("total") != FOCUS_CASES or len(body.get("items", [])) != expected:
        return f"page {page}: total {body.get('total')}, {len(body.get('items', []))} items"
    return None


def measure(run: Run, base_url: str, requests: int, warm_up: int) -> None:
    token = issue_token(secret=PANEL_SECRET, sub=ds.Dataset.contact_email(0, 0), account=ds.FOCUS_ACCOUNT, role="admin")
    auth = {"Authorization": f"Bearer {token}"}
    wanted = pages(FOCUS_CASES, warm_up + requests)
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for number, page in enumerate(wanted):
            health_ms, health = timed_get(client, "/healthz", {})
            list_ms, listed = timed_get(client, f"/api/panel/cases?page={page}", auth)
            problem = check_page(listed, page) or (
                None if health.status_code == 200 else f"healthz {health.status_code}"
            )
            if problem:
                run.errors.append(problem)
            if number >= warm_up:
                run.health_ms.append(health_ms)
                run.list_ms.append(list_ms)
                run.by_depth_ms.setdefault(depth(page, FOCUS_CASES), []).append(list_ms)


def run_backend(backend: str, options: Options, tmp: Path) -> Run:
    run = Run(backend=backend)
    workdir = tmp / backend
    workdir.mkdir()
    data = ds.Dataset(shape(), datetime.now(UTC))
    try:
        with loaded_database(backend, data, workdir, run) as url:
            smtp_port, http_port = free_port(HOST), free_port(HOST)
            env = gateway_env(workdir, smtp_port, http_port, url, GATEWAY_PANEL_SECRET=PANEL_SECRET)
            argv = [sys.executable, "-m", "gateway", "serve"]
            with server_process(
                "gateway", argv, log_path=workdir / "gateway.log", env=env, cpus=options.cpu_plan.servers
            ) as gateway:
                run.startup_s = asyncio.run(wait_for_http_ok(gateway, HOST, http_port, "/healthz", 120))
                measure(run, f"http://{HOST}:{http_port}", options.requests, options.warm_up)
                gateway.check_alive()
    except ServerFailed as error:
        run.errors.append(str(error))
    finally:
        if not options.keep_tmp:
            shutil.rmtree(workdir, ignore_errors=True)
    return run


def summary(run: Run) -> dict[str, Any]:
    listed, health = Latencies.of(run.list_ms), Latencies.of(run.health_ms)
    measured = listed.count > 0 and not run.errors
    return {
        "backend": run.backend,
        "load_s": round(run.load_s, 1),
        "startup_s": round(run.startup_s, 2),
        "list": listed.as_dict(),
        "healthz": health.as_dict(),
        "p99_ratio_to_healthz": rounded(ratio_or_nan(listed.p99_ms, health.p99_ms), 2),
        "p99_by_depth_ms": {name: rounded(Latencies.of(values).p99_ms) for name, values in run.by_depth_ms.items()},
        "target_p99_ms": TARGET_P99_MS,
        "verdict": verdict(listed.p99_ms <= TARGET_P99_MS if measured else None),
        "errors": run.errors[:10],
    }


def render(results: Sequence[dict[str, Any]], requests: int) -> Table:
    table = Table(
        title=f"GET /api/panel/cases: admin of {FOCUS_CASES:,} of {CASES:,} cases, {requests} requests",
        title_justify="left",
    )
    for name in (
        "backend",
        "request",
        "p50 ms",
        "p99 ms",
        "max ms",
        "p99 vs healthz",
        "p99 first/mid/last third",
        "target",
    ):
        table.add_column(name, justify="left" if name in ("backend", "request") else "right")
    for result in results:
        depths = result["p99_by_depth_ms"]
        thirds = " / ".join(_ms(depths.get(name)) for name in ("first third", "middle third", "last third"))
        for request, figures in (("healthz", result["healthz"]), ("panel list", result["list"])):
            is_list = request == "panel list"
            table.add_row(
                result["backend"] if not is_list else "",
                request,
                _ms(figures["p50_ms"]),
                _ms(figures["p99_ms"]),
                _ms(figures["max_ms"]),
                f"{result['p99_ratio_to_healthz']}×" if is_list else "",
                thirds if is_list else "",
                verdict_markup(result["verdict"]) if is_list else "",
                end_section=is_list,
            )
    return table


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


@dataclass(frozen=True)
class Options:
    requests: int
    warm_up: int
    backends: tuple[str, ...]
    cpu_plan: CpuPlan
    out: Path
    keep_tmp: bool


def parse_options(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench panel_list", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_REQUESTS} requests instead of {REQUESTS}")
    parser.add_argument("--requests", type=int, help="timed requests of each kind (overrides --quick)")
    parser.add_argument("--backends", default="sqlite,postgresql", help="comma-separated (%(default)s)")
    add_run_options(
        parser,
        NAME,
        no_pin_help="do not pin client and server to separate CPUs",
        keep_tmp_help="keep the SQLite files and the gateway's log",
    )
    args = parser.parse_args(argv)
    backends = tuple(name.strip() for name in args.backends.split(","))
    if not set(backends) <= {"sqlite", "postgresql"}:
        parser.error("backends are sqlite and postgresql")
    return Options(
        requests=args.requests or (QUICK_REQUESTS if args.quick else REQUESTS),
        warm_up=WARM_UP,
        backends=backends,
        cpu_plan=plan_cpus(pin=not args.no_pin),
        out=args.out,
        keep_tmp=args.keep_tmp,
    )


def main(argv: Sequence[str] = ()) -> int:
    options = parse_options(argv)
    console = make_console()
    pin_this_process(options.cpu_plan.client)
    clock = RunClock.start()
    results, notes = [], []
    with scratch_dir("bench-panel-", keep=options.keep_tmp, console=console) as tmp:
        for backend in options.backends:
            try:
                results.append(summary(run_backend(backend, options, tmp)))
            except NoPostgres as error:
                notes.append(f"{backend} skipped: {error}")
            console.log(f"{backend} done")
    console.print(render(results, options.requests))
    for result in results:
        console.print(
            f"{verdict_markup(result['verdict'])}: {result['backend']} p99 {result['list']['p99_ms']} ms "
            f"(target: at most {TARGET_P99_MS:g} ms); healthz p99 {result['healthz']['p99_ms']} ms"
        )
        for problem in result["errors"]:
            console.print(f"[red]{result['backend']}:[/red] {problem}", highlight=False)
    for note in notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    clock.print_footer(console, options.cpu_plan.describe())
    settings = {
        "cases": CASES,
        "account_cases": FOCUS_CASES,
        "per_page": PER_PAGE,
        "requests": options.requests,
        "warm_up": options.warm_up,
        "pinning": options.cpu_plan.describe(),
    }
    write_report(console, options.out, NAME, settings, clock, results=results, notes=notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
