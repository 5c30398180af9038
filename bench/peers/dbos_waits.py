"""DBOS on ``bench.waits``' workloads; prints one line of JSON.

    python bench/peers/dbos_waits.py latency N POLL   # N workflows one at a time
    python bench/peers/dbos_waits.py idle N WINDOW    # N workflows blocked in recv at once

The workflow: ``DBOS.recv("go", timeout_seconds=3600)``, then a ``@DBOS.step`` that returns
``time.time()`` as it starts, the peer of nerve's ``wait_for("go")`` and ``stamp`` role. The
bench sends ``DBOS.send(workflow_id, None, "go")`` from the main thread, outside any
workflow, as an operator's script would. DBOS 3.4.0, a SQLite system database on a fresh
temp dir, log level ERROR, each workflow started with ``DBOS.start_workflow`` (a thread of
DBOS's executor each, unbounded by default).

How DBOS's recv waits on SQLite (no LISTEN/NOTIFY): the waiting thread registers an event
in an in-process map and blocks on it; a notification listener thread wakes every
``notification_listener_polling_interval_sec`` (default 1 s, at least 0.001) and runs one
query per registered waiter to see whether a message arrived; ``send`` only inserts the row.
So a signal waits for the listener's next turn (latency about half the interval), and the
listener's work grows with the number of waiters, whether messages come or not.

A workflow counts as waiting once its waiter is in that map (``len`` of DBOS's internal
``notifications_map``): the peer of nerve's ``waiting`` status. Latency: from just before
``send`` to the step's start, one workflow at a time (``POLL``: the listener's interval);
each send comes a random time (0 to ``POLL``) after the workflow waits, as a signal would at
any point of the listener's turn (sent at once, every send lands just after the turn that
woke the one before, and waits a whole interval).
Idle: the CPU time (getrusage, the whole process, every thread) and voluntary context
switches over ``WINDOW`` seconds, first with no workflow (after launch), then with N waiting,
and the process's RSS.
"""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import sys
import tempfile
import threading
import time
from typing import Any

from dbos import DBOS
from dbos._dbos import _get_dbos_instance


def setup(root: str, poll: float) -> Any:
    DBOS(
        config={
            "name": "waits",
            "system_database_url": f"sqlite:///{os.path.join(root, 'dbos.sqlite')}",
            "log_level": "ERROR",
            "notification_listener_polling_interval_sec": poll,
        }
    )

    @DBOS.step()
    def stamp() -> float:
        return time.time()

    @DBOS.workflow()
    def waiter() -> float:
        DBOS.recv("go", timeout_seconds=3600)
        return stamp()

    DBOS.launch()
    time.sleep(0.5)  # DBOS's background threads are up
    return waiter


def waiters() -> int:
    """Waiters registered in recv now (DBOS's in-process map the listener polls for)."""
    return len(_get_dbos_instance()._sys_db.notifications_map.snapshot())


def until_waiting(count: int, limit: float) -> None:
    deadline = time.monotonic() + limit
    while waiters() < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"dbos: {waiters()}/{count} workflows waiting in recv")
        time.sleep(0.001)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100.0 * len(ordered) + 0.5) - 1))
    return ordered[k]


def latency(n: int, poll: float, root: str) -> dict[str, Any]:
    waiter = setup(root, poll)
    samples: list[float] = []
    jitter = random.Random(12)
    for i in range(n + 3):  # the first 3 warm up
        handle: Any = DBOS.start_workflow(waiter)
        until_waiting(1, 60)
        time.sleep(jitter.uniform(0, poll))  # a signal comes at any point of the listener's turn
        t0 = time.time()
        DBOS.send(handle.workflow_id, None, "go")
        started = handle.get_result()
        if i >= 3:
            samples.append((started - t0) * 1000)
    role = {"n": n, "p50": pct(samples, 50), "p99": pct(samples, 99), "max": max(samples)}
    return {"engine": "dbos", "poll_s": poll, "role": role}


def usage() -> tuple[float, int]:
    self = resource.getrusage(resource.RUSAGE_SELF)
    return self.ru_utime + self.ru_stime, self.ru_nvcsw


def window_figures(window: float) -> dict[str, float]:
    cpu0, switches0 = usage()
    time.sleep(window)
    cpu1, switches1 = usage()
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return {"cpu_ms": (cpu1 - cpu0) * 1000, "wakeups": switches1 - switches0, "rss_mb": rss / 2**20}


def idle(n: int, window: float, root: str) -> dict[str, Any]:
    waiter = setup(root, 1.0)  # DBOS's default interval
    baseline = window_figures(window)
    t0 = time.perf_counter()
    for _ in range(n):
        DBOS.start_workflow(waiter)
    until_waiting(n, 300 + n * 0.05)
    park_s = time.perf_counter() - t0
    threads = threading.active_count()
    loaded = window_figures(window)
    return {
        "engine": "dbos",
        "baseline": baseline,
        "loaded": loaded,
        "park_s": park_s,
        "threads": threads,
        "note": "a thread each, and the listener queries once per waiter each 1 s",
    }


def main() -> None:
    mode, n, value = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    root = tempfile.mkdtemp(prefix="dbos-waits-")
    try:
        result = latency(n, value, root) if mode == "latency" else idle(n, value, root)
    except SystemExit as failure:
        shutil.rmtree(root, ignore_errors=True)
        print(failure, file=sys.stderr, flush=True)
        os._exit(2)
    shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result), flush=True)
    os._exit(0)  # DBOS's threads need not wind down


if __name__ == "__main__":
    main()
