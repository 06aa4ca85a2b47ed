"""`python -m bench` (what `make bench` runs): run every registered benchmark, or the ones named.

    python -m bench                          every benchmark, full size
    python -m bench --quick                  every benchmark, reduced size
    python -m bench smtp_throughput [ARGS]   one benchmark; ARGS go to it (see its --help)

A benchmark is a module of this package with `main(argv: Sequence[str]) -> int` that accepts
`--quick`; add it to BENCHMARKS to register it. A benchmark reports, it does not judge: a missed
target is printed, and the exit status only says whether the benchmark itself could run.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

#: name -> module under bench/; run in this order by `python -m bench`.
BENCHMARKS: dict[str, str] = {
    "smtp_throughput": "bench.smtp_throughput",
    "throughput_plot": "bench.throughput_plot",  # right after: it reuses smtp_throughput's SQLite figures
    "cluster_throughput": "bench.cluster_throughput",
    "ingest_latency": "bench.ingest_latency",
    "peak_memory": "bench.peak_memory",
    "panel_list": "bench.panel_list",
    "storage_growth": "bench.storage_growth",
    "sustained": "bench.sustained",
    "peer_helpdesk": "bench.peer_helpdesk",
}

USAGE = __doc__.split("\n\n")[1]


def load(name: str) -> Callable[[Sequence[str]], int]:
    module = importlib.import_module(BENCHMARKS[name])
    entry: Callable[[Sequence[str]], int] = module.main
    return entry


def run_all(quick: bool) -> int:
    status = 0
    for name in BENCHMARKS:
        print(f"== {name}", flush=True)
        status = max(status, load(name)(["--quick"] if quick else []))
    return status


def main(argv: Sequence[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE)
        print("benchmarks: " + ", ".join(BENCHMARKS))
        return 0
    if not argv or argv[0].startswith("-"):
        unknown = [arg for arg in argv if arg != "--quick"]
        if unknown:
            print(f"unknown option(s) {unknown} without a benchmark name\n{USAGE}", file=sys.stderr)
            return 2
        return run_all(quick="--quick" in argv)
    name, rest = argv[0], argv[1:]
    if name not in BENCHMARKS:
        print(f"no benchmark {name!r}; there are: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    return load(name)(rest)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
