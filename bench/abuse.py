"""Abuse: what many heavy clients, and many that never read, cost the master.

Each figure is printed beside the bound that nerve's own limits (nerved/control) give it:

- heavy readers: ``--readers`` (60) clients each loop ``logs.query {limit: 10000}`` (send,
  read the whole answer, again) over a store of 12,000 entries for ``--seconds``, while one
  more client times ``status``. A loop turn spends at most ``TURN_BUDGET`` on heavy requests
  (plus the one that started before the budget ran out), so ``status`` waits about two turns
  at most: bound 2 x (TURN_BUDGET + one heavy query alone, timed first). The watchdog is fed
  from the same loop: a ``WATCHDOG=1`` every WATCHDOG_USEC/2, late by those two turns at most.
- greedy clients: ``--greedy`` (200) clients pipeline heavy queries and never read, for
  ``--seconds``. Bound on the master's VmRSS: its baseline (measured first, after it answered
  heavy queries one at a time) + INPUT_BUDGET + OUTPUT_BUDGET + for each connection what it
  may read past the input budget (SMALL_LINE + RECV_SIZE) + the one answer that may start
  below the output budget and end past it (RESULT_BUDGET). The tree (master and its sense
  worker) is held to the same growth.

    python -m bench.abuse [--seconds 15] [--readers 60] [--greedy 200]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import multiprocessing
import socket
import threading
import time
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from pathlib import Path

from tabulate import tabulate

from bench.common import Daemon, Rpc, pct, rss, tree_rss
from nerved.control.limits import INPUT_BUDGET, OUTPUT_BUDGET, RECV_SIZE, SMALL_LINE, TURN_BUDGET
from nerved.store import Store
from nerved.wire import RESULT_BUDGET

CONFIG = "senses:\n  tick: {}\n"
TICK = "def compute(ctx):\n    return None\n"
ENTRIES = 12_000
PAD = 150  # bytes of payload in each entry: an answer of 10,000 entries is 2.5 MiB
HEAVY = b'{"jsonrpc":"2.0","id":1,"method":"logs.query","params":{"limit":10000}}\n'
WATCHDOG_USEC = 1_000_000
MiB = 1024 * 1024


def fill(db: Path) -> None:
    """Write the entries the heavy queries read, before nerved opens logs.db."""
    store = Store(db)
    for n in range(ENTRIES):
        store.append_log("sense", "signal", f"s{n % 7}", {"n": n, "pad": "x" * PAD})
    store.commit()
    store.close()


def heavy_query(sock: socket.socket) -> int:
    """Send one heavy query, read its answer to the newline; returns its size in bytes."""
    sock.sendall(HEAVY)
    size = 0
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise ConnectionError("nerved closed a heavy client")
        size += len(chunk)
        if chunk.endswith(b"\n"):  # one query in flight: its newline ends what was sent
            return size


def connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(path))
    return sock


def status_ms(rpc: Rpc) -> float:
    """One ``status`` round trip, in milliseconds."""
    started = time.perf_counter()
    rpc.call("status")
    return (time.perf_counter() - started) * 1000


def read_heavily(path: Path, clients: int, stop: Event, answered: Synchronized[int]) -> None:
    """``clients`` threads loop heavy queries until ``stop``. Run in a process of its own, so
    that the client timing ``status`` never waits for the interpreter lock they hold."""

    def loop() -> None:
        with connect(path) as sock:
            while not stop.is_set():
                heavy_query(sock)
                with answered.get_lock():
                    answered.value += 1

    readers = [threading.Thread(target=loop) for _ in range(clients)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()


def heavy_readers(daemon: Daemon, clients: int, seconds: float) -> tuple[list[float], int]:
    """Status latencies (ms) while ``clients`` loop heavy queries; and how many were read."""
    stop = multiprocessing.Event()
    answered: Synchronized[int] = multiprocessing.Value("i", 0)
    child = multiprocessing.Process(
        target=read_heavily, args=(daemon.socket, clients, stop, answered)
    )
    child.start()
    rpc = daemon.rpc()
    latencies = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        latencies.append(status_ms(rpc))
        time.sleep(0.01)
    rpc.close()
    stop.set()
    child.join()
    return latencies, answered.value


def greedy(daemon: Daemon, clients: int, seconds: float) -> tuple[int, int, list[float]]:
    """Peak master and tree RSS while ``clients`` pipeline heavy queries and never read;
    and status latencies (ms) meanwhile."""
    socks = [connect(daemon.socket) for _ in range(clients)]
    for sock in socks:
        sock.setblocking(False)
    rpc = daemon.rpc()
    peak_master = peak_tree = 0
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for sock in socks:
            with contextlib.suppress(BlockingIOError):
                sock.send(HEAVY * 64)
        latencies.append(status_ms(rpc))
        peak_master = max(peak_master, rss(daemon.pid))
        peak_tree = max(peak_tree, tree_rss(daemon.pid))
        time.sleep(0.1)
    for sock in socks:
        sock.close()
    rpc.close()
    return peak_master, peak_tree, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--readers", type=int, default=60)
    parser.add_argument("--greedy", type=int, default=200)
    args = parser.parse_args()
    daemon = Daemon(CONFIG, {"senses/tick": TICK}, watchdog_usec=WATCHDOG_USEC)
    fill(daemon.state / "logs.db")
    with daemon:
        with connect(daemon.socket) as sock:
            alone = []
            for _ in range(20):
                started = time.perf_counter()
                size = heavy_query(sock)
                alone.append((time.perf_counter() - started) * 1000)
        base_master, base_tree = rss(daemon.pid), tree_rss(daemon.pid)
        since = time.monotonic()
        reader_status, answered = heavy_readers(daemon, args.readers, args.seconds)
        pings = [t for t, message in daemon.notifications if "WATCHDOG=1" in message]
        gaps = [b - a for a, b in itertools.pairwise(p for p in pings if p >= since)]
        peak_master, peak_tree, greedy_status = greedy(daemon, args.greedy, args.seconds)

    heavy_ms = pct(alone, 50)
    turns_ms = 2 * (TURN_BUDGET * 1000 + heavy_ms)
    turns = f"2 turns of {TURN_BUDGET * 1000:.0f} ms + one query"
    gap_bound = WATCHDOG_USEC / 2e6 + turns_ms / 1000
    growth = INPUT_BUDGET + OUTPUT_BUDGET + args.greedy * (SMALL_LINE + RECV_SIZE) + RESULT_BUDGET
    grown = f"idle + {growth / MiB:.0f} MiB"
    print(
        f"store: {ENTRIES:,} entries of {PAD} B; one logs.query {{limit: 10000}} alone: "
        f"{size / MiB:.1f} MiB, p50 {heavy_ms:.1f} ms\n"
        f"heavy readers: {args.readers} clients for {args.seconds:g} s read {answered:,} answers"
        f" ({answered / args.seconds:.0f}/s)\n"
    )
    rows = [
        (f"status p50 / p99, {args.readers} heavy readers",
         f"{pct(reader_status, 50):.1f} / {pct(reader_status, 99):.1f} ms",
         pct(reader_status, 99), turns_ms, f"{turns_ms:.0f} ms: {turns}"),
        ("WATCHDOG=1 gap, max",
         f"{max(gaps, default=0):.3f} s ({len(gaps)} gaps)",
         max(gaps, default=float("inf")), gap_bound,
         f"{gap_bound:.3f} s: every {WATCHDOG_USEC / 2e6:g} s + {turns}"),
        (f"status p50 / p99, {args.greedy} greedy clients",
         f"{pct(greedy_status, 50):.1f} / {pct(greedy_status, 99):.1f} ms",
         pct(greedy_status, 99), turns_ms, f"{turns_ms:.0f} ms"),
        (f"master VmRSS, {args.greedy} greedy clients (idle)",
         f"{peak_master / MiB:.0f} MiB ({base_master / MiB:.0f} MiB)",
         peak_master, base_master + growth, f"{(base_master + growth) / MiB:.0f} MiB: {grown}"),
        (f"tree RSS, {args.greedy} greedy clients (idle)",
         f"{peak_tree / MiB:.0f} MiB ({base_tree / MiB:.0f} MiB)",
         peak_tree, base_tree + growth, f"{(base_tree + growth) / MiB:.0f} MiB: {grown}"),
    ]  # fmt: skip
    print(
        tabulate(
            [(name, text, bound, "yes" if value <= limit else "NO")
             for name, text, value, limit, bound in rows],
            headers=["measure", "measured", "bound", "within"],
        )
    )  # fmt: skip


if __name__ == "__main__":
    main()
