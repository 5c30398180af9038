"""How nerve's cost grows: workload W at concurrency 1, 10 and 100, and with 1, 4 and 16
workflows triggered at once (each with its own worker, concurrency 10 each).

Each row is one burst of N runs (round robin over the workflows) on a fresh nerved, its
workers warmed first; the submitter keeps ``max(10, total concurrency)`` triggers in flight
(at most 100), so that a wider workflow is not starved by the client. runs/s is N over
first trigger -> last completion, e2e p99 ack -> completion (see :mod:`bench.workflows`).

    python -m bench.growth [--n 1000] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Final

from tabulate import tabulate

from bench.common import Daemon
from bench.workflows import burst, config_for, packages_for, warm

SHAPES: Final = (  # (label, workflows, concurrency of each)
    ("concurrency 1", 1, 1),
    ("concurrency 10", 1, 10),
    ("concurrency 100", 1, 100),
    ("1 workflow", 1, 10),
    ("4 workflows", 4, 10),
    ("16 workflows", 16, 10),
)


def measure(workflows: int, conc: int, n: int) -> dict[str, Any]:
    names = [f"w{i}" for i in range(workflows)]
    window = min(100, max(10, workflows * conc))
    with Daemon(config_for(names, conc, max(n, 100)), packages_for(names)) as daemon:
        warm(daemon, names)
        b = burst(daemon, names, n, window)
    return {"runs_per_s": b["runs_per_s"], "e2e_p99_ms": b["e2e"]["p99"],
            "ack_p99_ms": b["ack"]["p99"], "rss_mb": b["rss_mb"], "window": window}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: dict[str, dict[str, Any]] = {}
    for label, workflows, conc in SHAPES:
        print(f"{label}...", file=sys.stderr, flush=True)
        results[label] = measure(workflows, conc, args.n)
    if args.json:
        print(json.dumps(results))
        return
    print(f"W (N={args.n} runs x 3 steps) as it grows")
    rows = [(label, r["runs_per_s"], r["e2e_p99_ms"], r["ack_p99_ms"], r["rss_mb"], r["window"])
            for label, r in results.items()]  # fmt: skip
    headers = ["shape", "runs/s", "e2e p99 ms", "ack p99 ms", "tree RSS MB", "in flight"]
    print(tabulate(rows, headers=headers, floatfmt=".2f"))


if __name__ == "__main__":
    main()
