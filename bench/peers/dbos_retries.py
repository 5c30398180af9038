"""DBOS on ``bench.retries``' "failing twice" workload; prints one line of JSON.

N workflows (default 1000), each of one step that fails its first two attempts and succeeds on
the third, ``@DBOS.step(retries_allowed=True, max_attempts=3, interval_seconds=1,
backoff_rate=1)``, all started at once with ``DBOS.start_workflow`` (no queue: each workflow
gets its own thread of DBOS's executor, unbounded by default). DBOS 3.4.0, a SQLite system
database (SQLAlchemy's pysqlite; DBOS sets no journal mode: SQLite's rollback journal) on a
fresh temp dir, log level ERROR (at WARNING, DBOS logs every retried attempt with its
traceback).

How DBOS retries a step: in memory, inside the workflow's thread. A failed attempt is not
written anywhere; the thread sleeps ``interval_seconds`` (``time.sleep``) and calls the step
again; only the step's final outcome is checkpointed. So N waiting workflows are N parked
threads, and a crash during the waits restarts the step's attempts from one on recovery.

The step counts its attempts per workflow in memory. Reported, as ``bench.retries`` does for
nerve: runs/s from the first ``start_workflow`` call to the last workflow's end (its thread's
future done, just after DBOS has committed the SUCCESS outcome), and the CPU time (utime +
stime, getrusage) of this whole process — DBOS's background threads included — from the
moment every step's first attempt has failed until 20 ms before the earliest retry is due
(first failure + 1 s). If the last first attempt fails after that, there is no such window:
its length is then 0 and its CPU time null.

    python bench/peers/dbos_retries.py [N]     # with dbos installed: not nerve's venv
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from typing import Any

from dbos import DBOS
from waiting import idle_window

INTERVAL = 1.0


def run(n: int, root: str) -> dict[str, Any]:
    DBOS(
        config={
            "name": "retries",
            "system_database_url": f"sqlite:///{os.path.join(root, 'dbos.sqlite')}",
            "log_level": "ERROR",
        }
    )
    lock = threading.Lock()
    attempts: dict[int, int] = {}
    first_failures: list[float] = []
    completions: list[float] = []
    failed: list[str] = []
    failed_once, finished = threading.Event(), threading.Event()

    @DBOS.step(retries_allowed=True, max_attempts=3, interval_seconds=INTERVAL, backoff_rate=1)
    def flaky(i: int) -> int:
        with lock:
            attempt = attempts[i] = attempts.get(i, 0) + 1
            if attempt == 1:
                first_failures.append(time.monotonic())
                if len(first_failures) == n:
                    failed_once.set()
        if attempt <= 2:
            raise RuntimeError("transient")
        return i

    @DBOS.workflow()
    def one_step(i: int) -> int:
        return flaky(i)

    def ended(future: Future[Any]) -> None:
        with lock:
            if future.exception() is not None:
                failed.append(repr(future.exception()))
                failed_once.set()
                finished.set()
            completions.append(time.monotonic())
            if len(completions) == n:
                finished.set()

    DBOS.launch()
    time.sleep(0.5)  # DBOS's background threads are up

    t0 = time.monotonic()
    for i in range(n):
        handle: Any = DBOS.start_workflow(one_step, i)
        handle.future.add_done_callback(ended)
    if not failed_once.wait(60 + n * 0.05) or failed:
        raise SystemExit(f"dbos: {len(first_failures)}/{n} first attempts failed; {failed[:1]}")
    # Every workflow now sleeps until its retry, the first due 1 s after the earliest failure.
    first_due = min(first_failures) + INTERVAL
    threads = threading.active_count()
    idle_for, cpu_ms = idle_window(first_due)
    if not finished.wait(60 + n * 0.05) or failed:
        raise SystemExit(f"dbos: {len(completions)}/{n} complete; {failed[:1]}")
    wall = max(completions) - t0
    return {
        "engine": "dbos",
        "runs": n,
        "runs_per_s": n / wall,
        "wall_s": wall,
        "first_tries_s": max(first_failures) - t0,
        "idle_window_s": idle_for,
        "cpu_ms_in_window": cpu_ms,
        "settings": {
            "system_database": "sqlite",
            "start": "DBOS.start_workflow (a thread per workflow)",
            "threads_while_waiting": threads,
        },
    }


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    root = tempfile.mkdtemp(prefix="dbos-retries-")
    try:
        result = run(n, root)
    except SystemExit as failure:
        shutil.rmtree(root, ignore_errors=True)
        print(failure, file=sys.stderr, flush=True)
        os._exit(2)
    shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result), flush=True)
    os._exit(0)  # DBOS's threads need not wind down


if __name__ == "__main__":
    main()
