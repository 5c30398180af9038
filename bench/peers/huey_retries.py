"""Huey on ``bench.retries``' "failing twice" workload; prints one line of JSON.

N tasks (default 1000), each failing its first two tries and succeeding on the third, under
``retries=2, retry_delay=1`` (huey's delay is fixed unless ``retry_backoff`` is set: factor
1), all enqueued at once. Huey 3.5.4, ``SqliteHuey`` (its defaults: WAL, SQLite's own
``synchronous``) on a fresh temp dir, and an in-process consumer of 10 worker threads, with
the rest as huey defaults:

- A worker that finds the queue empty polls it again after 0.1 s, then x1.15 per empty poll
  up to 10 s (``initial_delay``, ``backoff``, ``max_delay``); a task resets its delay.
- A failed try with retries left goes to the *schedule* table with its eta (now + 1 s); the
  scheduler thread moves due tasks back to the queue once a second (``scheduler_interval``
  = 1 s, huey's minimum), so a retry starts between 1 and 2 s after its failure, plus a
  worker's poll delay. Each failure also stores the error as the task's interim result
  (``store_intermediate_errors``, default on).
- Huey's logger is set to CRITICAL: its per-failure ``logger.exception`` would format and
  print 2N tracebacks to stderr.

The task reads its try from ``task.retries`` (``context=True``): 2 on the first try, 1 on the
second, 0 on the third. Reported, as ``bench.retries`` does for nerve: runs/s from the first
enqueue to the last ``SIGNAL_COMPLETE`` (emitted after the result is stored), and the CPU
time (utime + stime, getrusage) of this whole process — consumer threads included — from the
moment every task's first try has failed until 20 ms before the earliest retry is due (first
failure + 1 s). If the last first try fails after that, there is no such window: its length
is then 0 and its CPU time null.

    python bench/peers/huey_retries.py [N]     # with huey installed: not nerve's venv
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from typing import Any

from huey import SqliteHuey, signals
from waiting import idle_window

RETRY_DELAY = 1
WORKERS = 10


def run(n: int, root: str) -> dict[str, Any]:
    huey = SqliteHuey("retries", filename=os.path.join(root, "huey.db"))
    lock = threading.Lock()
    first_failures: list[float] = []
    completions: list[float] = []
    failed: list[str] = []
    failed_once, finished = threading.Event(), threading.Event()

    @huey.task(retries=2, retry_delay=RETRY_DELAY, context=True)
    def flaky(i: int, task: Any = None) -> int:
        if task.retries:
            raise RuntimeError("transient")
        return i

    @huey.signal(signals.SIGNAL_RETRYING)
    def on_retrying(signal: str, task: Any, *args: Any) -> None:
        # Emitted just before the task is scheduled again (its eta: now + the delay).
        if task.retries == 2:
            with lock:
                first_failures.append(time.monotonic())
                if len(first_failures) == n:
                    failed_once.set()

    @huey.signal(signals.SIGNAL_COMPLETE)
    def on_complete(signal: str, task: Any, *args: Any) -> None:
        with lock:
            completions.append(time.monotonic())
            if len(completions) == n:
                finished.set()

    @huey.signal(signals.SIGNAL_ERROR)
    def on_error(signal: str, task: Any, *args: Any) -> None:
        if not task.retries:  # its last try failed
            failed.append(f"{task.id}: {args!r}")
            failed_once.set()
            finished.set()

    consumer = huey.create_consumer(workers=WORKERS, worker_type="thread")
    consumer.start()
    time.sleep(0.5)  # the workers and the scheduler are up

    t0 = time.monotonic()
    for i in range(n):
        flaky(i)
    if not failed_once.wait(60 + n * 0.05) or failed:
        raise SystemExit(f"huey: {len(first_failures)}/{n} first tries failed; {failed[:1]}")
    # Every run now waits for its retry, the first due 1 s after the earliest failure.
    first_due = min(first_failures) + RETRY_DELAY
    idle_for, cpu_ms = idle_window(first_due)
    if not finished.wait(60 + n * 0.05) or failed:
        raise SystemExit(f"huey: {len(completions)}/{n} complete; {failed[:1]}")
    wall = max(completions) - t0
    consumer.stop()
    return {
        "engine": "huey",
        "runs": n,
        "runs_per_s": n / wall,
        "wall_s": wall,
        "first_tries_s": max(first_failures) - t0,
        "idle_window_s": idle_for,
        "cpu_ms_in_window": cpu_ms,
        "settings": {
            "storage": "SqliteHuey (WAL)",
            "workers": WORKERS,
            "worker_poll_s": "0.1 x1.15 up to 10",
            "scheduler_interval_s": consumer.scheduler_interval,
        },
    }


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    logging.getLogger("huey").setLevel(logging.CRITICAL)
    root = tempfile.mkdtemp(prefix="huey-retries-")
    try:
        result = run(n, root)
    except SystemExit as failure:
        shutil.rmtree(root, ignore_errors=True)
        print(failure, file=sys.stderr, flush=True)
        os._exit(2)
    shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result), flush=True)
    os._exit(0)  # the consumer's threads need not wind down


if __name__ == "__main__":
    main()
