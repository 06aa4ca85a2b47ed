"""A PNG plot of SMTP throughput against concurrency, gateway and sink, on SQLite and PostgreSQL.

The series come from bench.smtp_throughput (c = 1, 8, 32; ~2 KB messages by default):
  - PostgreSQL: measured here, `smtp_throughput --backend postgresql` (each gateway run on a fresh
    database; its sink runs alongside), written to bench/out/smtp_throughput_postgresql.json;
  - SQLite: taken from bench/out/smtp_throughput.json when that was written by a run of the same
    size within the last hour (as `python -m bench` has just done), measured here otherwise.
The plot goes to bench/out/throughput.png (matplotlib, Agg backend), the series and the gateway's
share of the sink to bench/out/throughput_plot.json. It has no target of its own.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from rich.table import Table

from bench import smtp_throughput
from bench.common import OUT_DIR, git_state, load_average, make_console, now_iso, write_json

NAME = "throughput_plot"
PNG = OUT_DIR / "throughput.png"
SQLITE_JSON = OUT_DIR / "smtp_throughput.json"
POSTGRESQL_JSON = OUT_DIR / "smtp_throughput_postgresql.json"
OWN_SQLITE_JSON = OUT_DIR / "smtp_throughput_sqlite_for_plot.json"
FRESH_FOR = dt.timedelta(hours=1)
CONCURRENCIES = (1, 8, 32)
STYLE: dict[tuple[str, str], dict[str, Any]] = {  # (backend, target) -> line style
    ("sqlite", "gateway"): {"color": "tab:blue", "marker": "o", "linestyle": "-"},
    ("postgresql", "gateway"): {"color": "tab:orange", "marker": "s", "linestyle": "-"},
    ("sqlite", "sink"): {"color": "tab:blue", "marker": "o", "linestyle": ":", "alpha": 0.6},
    ("postgresql", "sink"): {"color": "tab:orange", "marker": "s", "linestyle": ":", "alpha": 0.6},
}


@dataclass(frozen=True)
class Series:
    backend: str
    target: str  # gateway | sink
    size: str
    points: dict[int, float]  # concurrency -> msg/s

    @property
    def label(self) -> str:
        name = smtp_throughput.BACKENDS[self.backend]
        return f"gateway ({name})" if self.target == "gateway" else f"sink (run beside {name})"


def series_from(figures: dict[str, Any], backend: str, size: str) -> list[Series]:
    found = []
    for target in ("gateway", "sink"):
        points = {
            result["concurrency"]: result["msg_per_s"]
            for result in figures["results"]
            if result["target"] == target and result["size"] == size and result["ok"]
        }
        if points:
            found.append(Series(backend=backend, target=target, size=size, points=points))
    return found


def usable(path: Path, messages: int, sizes: Sequence[str]) -> dict[str, Any] | None:
    """The figures at `path` if a run of this size and shape wrote them within FRESH_FOR."""
    try:
        figures: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        finished = dt.datetime.fromisoformat(figures["finished_at"])
        settings = figures["settings"]
    except (OSError, ValueError, KeyError):
        return None
    fresh = dt.datetime.now(dt.UTC) - finished < FRESH_FOR
    shape_ok = (
        settings.get("messages") == messages
        and set(sizes) <= set(settings.get("sizes", []))
        and set(CONCURRENCIES) <= set(settings.get("concurrencies", []))
        and {"sink", "gateway"} <= set(settings.get("targets", []))
        and settings.get("backend", "sqlite") == "sqlite"
    )
    return figures if fresh and shape_ok else None


def run_throughput(backend: str, sizes: Sequence[str], messages: int, out: Path) -> dict[str, Any]:
    argv = [
        "--backend",
        backend,
        "--sizes",
        ",".join(sizes),
        "--messages",
        str(messages),
        "--out",
        str(out),
        "--concurrency",
        ",".join(map(str, CONCURRENCIES)),
    ]
    smtp_throughput.main(argv)
    loaded: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return loaded


def plot(series: Sequence[Series], sizes: Sequence[str], title: str, path: Path) -> None:
    figure, axes = plt.subplots(1, len(sizes), figsize=(6.4 * len(sizes), 4.8), squeeze=False)
    for axis, size in zip(axes[0], sizes, strict=False):
        for line in (s for s in series if s.size == size):
            xs = sorted(line.points)
            axis.plot(xs, [line.points[x] for x in xs], label=line.label, **STYLE[(line.backend, line.target)])
        axis.set_xscale("log", base=2)
        axis.set_xticks(list(CONCURRENCIES), [str(c) for c in CONCURRENCIES])
        axis.set_xlabel("concurrent SMTP connections")
        axis.set_ylabel("acknowledged messages per second")
        axis.set_ylim(bottom=0)
        axis.set_title(f"~{size} messages")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize="small")
    figure.suptitle(title, fontsize="medium")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def shares(series: Sequence[Series]) -> list[dict[str, Any]]:
    """The gateway's msg/s as a fraction of the sink measured in the same run, per point."""
    rows = []
    for gateway in (s for s in series if s.target == "gateway"):
        sink = next(
            (s for s in series if s.target == "sink" and (s.backend, s.size) == (gateway.backend, gateway.size)), None
        )
        for concurrency in sorted(gateway.points):
            base = sink.points.get(concurrency) if sink else None
            rows.append(
                {
                    "backend": gateway.backend,
                    "size": gateway.size,
                    "concurrency": concurrency,
                    "gateway_msg_per_s": gateway.points[concurrency],
                    "sink_msg_per_s": base,
                    "gateway_over_sink": round(gateway.points[concurrency] / base, 3) if base else None,
                }
            )
    return rows


def render(rows: Sequence[dict[str, Any]]) -> Table:
    table = Table(title="Gateway throughput against concurrency (plotted)", title_justify="left")
    for name in ("database", "size", "conc", "gateway msg/s", "sink msg/s", "vs sink"):
        table.add_column(name, justify="left" if name in ("database", "size") else "right")
    for row in rows:
        share = row["gateway_over_sink"]
        table.add_row(
            smtp_throughput.BACKENDS[row["backend"]],
            row["size"],
            str(row["concurrency"]),
            f"{row['gateway_msg_per_s']:,.0f}",
            "–" if row["sink_msg_per_s"] is None else f"{row['sink_msg_per_s']:,.0f}",
            "–" if share is None else f"{share:.0%}",
        )
    return table


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench throughput_plot", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{smtp_throughput.QUICK_MESSAGES} messages per run instead of {smtp_throughput.FULL_MESSAGES}",
    )
    parser.add_argument(
        "--sizes", default="2KB", help=f"comma-separated from {', '.join(smtp_throughput.SIZES)} (%(default)s)"
    )
    parser.add_argument(
        "--remeasure-sqlite", action="store_true", help="measure SQLite here even if fresh figures exist"
    )
    parser.add_argument("--out", type=Path, default=PNG)
    args = parser.parse_args(argv)
    sizes = [size.strip() for size in args.sizes.split(",")]
    messages = smtp_throughput.QUICK_MESSAGES if args.quick else smtp_throughput.FULL_MESSAGES
    console = make_console()
    load_before = load_average()
    sqlite = None if args.remeasure_sqlite else usable(SQLITE_JSON, messages, sizes)
    if sqlite is not None:
        console.log(f"SQLite series from {SQLITE_JSON} ({sqlite['finished_at']})")
    else:
        sqlite = run_throughput("sqlite", sizes, messages, OWN_SQLITE_JSON)
    postgresql = run_throughput("postgresql", sizes, messages, POSTGRESQL_JSON)
    series = [
        s
        for size in sizes
        for s in (*series_from(sqlite, "sqlite", size), *series_from(postgresql, "postgresql", size))
    ]
    title = (
        f"SMTP throughput of the gateway and of a no-op sink, {messages} messages per point\n"
        f"{dt.date.today().isoformat()}, commit {git_state()['commit']}, load average {load_before} → {load_average()}"
    )
    plot(series, sizes, title, args.out)
    rows = shares(series)
    console.print(render(rows))
    figures = {
        "benchmark": NAME,
        "finished_at": now_iso(),
        "png": str(args.out),
        "messages": messages,
        "sources": {"sqlite": sqlite["finished_at"], "postgresql": postgresql["finished_at"]},
        "load_average_1min": {"before": load_before, "after": load_average()},
        "points": rows,
    }
    write_json(OUT_DIR / f"{NAME}.json", figures)
    console.print(f"plot written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
