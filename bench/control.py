"""The control socket and the signal loop: round trips and sense -> signal latency.

- ``status`` round trip on one open connection (the daemon's cost per request);
- ``nervectl status`` as a command (what an operator or a script pays: interpreter start,
  connect, answer, table);
- sense -> signal: ``sense.trigger`` sent -> the signal visible in ``logs.query`` (polled
  with ``afterId`` on a second connection, so the figure includes up to one poll round trip).

    python -m bench.control [--n 2000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from tabulate import tabulate

from bench.common import REPO, Daemon, summary_ms, tree_rss

CONFIG = """
    senses:
      probe: {}
"""
SENSE = """
    def compute(ctx):
        return {"ok": True}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--commands", type=int, default=50)
    parser.add_argument("--signals", type=int, default=300)
    args = parser.parse_args()
    rows = []
    with Daemon(CONFIG, {"senses/probe": SENSE}) as daemon:
        rpc = daemon.rpc()
        rpc.call("status")
        lat = []
        for _ in range(args.n):
            t0 = time.perf_counter()
            rpc.call("status")
            lat.append(time.perf_counter() - t0)
        rows.append(("status round trip (open connection)", summary_ms(lat)))

        lat = []
        for _ in range(args.commands):
            t0 = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "nervectl", "--socket", str(daemon.socket), "status"],
                check=True, capture_output=True, cwd=REPO,
            )  # fmt: skip
            lat.append(time.perf_counter() - t0)
        rows.append(("nervectl status (whole command)", summary_ms(lat)))

        poll = daemon.rpc()
        last = max([e["id"] for e in poll.call("logs.query", {"limit": 1})] or [0])
        lat = []
        for _ in range(args.signals):
            t0 = time.perf_counter()
            rpc.call("sense.trigger", {"sense": "probe"})
            while True:
                found = poll.call("logs.query", {"type": "signal", "afterId": last})
                if found:
                    lat.append(time.perf_counter() - t0)
                    last = found[-1]["id"]
                    break
        rows.append(("sense.trigger -> signal logged", summary_ms(lat)))
        rss = tree_rss(daemon.pid) / 2**20
    print(
        tabulate(
            [(name, s["n"], s["p50"], s["p99"], s["max"]) for name, s in rows],
            headers=["measure", "n", "p50 ms", "p99 ms", "max ms"],
            floatfmt=".3f",
        )
    )
    print(f"process tree RSS: {rss:.1f} MB (master + one sense worker)")


if __name__ == "__main__":
    main()
