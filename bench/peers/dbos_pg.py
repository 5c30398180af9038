"""DBOS Transact on workload W with a PostgreSQL system database (:mod:`bench.pg`).

bench/peers/w/bench_dbos.py (kept as it was measured, on SQLite) with one change: the
system database is the PostgreSQL database ``$DBOS_PG_URL`` names (a ``postgresql://``
URL; DBOS 3.4 takes only ``system_database_url``: its ``database_url`` was removed, and it
talks to PostgreSQL through SQLAlchemy and psycopg 3, with LISTEN/NOTIFY on by default).
The database must be fresh: the workflow ids are ``run-000000``..., and DBOS answers an
id it has seen with the run it already has. The rest is bench_dbos.py's: a
``@DBOS.workflow`` of three ``@DBOS.step`` functions, enqueued back to back from the main
thread on a queue of ``global_concurrency=C``; "complete" is the moment DBOS's
``update_workflow_outcome(..., SUCCESS)`` returns (its terminal row committed).

Run in the peers' venv (bench.common.anchors_python), which has dbos and psycopg; the
workload's helpers are bench/peers/w/common.py's::

    DBOS_PG_URL=postgresql://... python bench/peers/dbos_pg.py burst|iso POLL_S

Prints ``RESULT {json}`` (bench_dbos.py's fields).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent / "w"))  # W's helpers: common.py

from common import (  # type: ignore[import-not-found]
    CONC_DEFAULT,
    ISO_DEFAULT,
    N_DEFAULT,
    RssSampler,
    emit_result,
    lat_summary_ms,
    step_fn,
    throughput_fields,
)
from dbos import DBOS, SetWorkflowID  # type: ignore[import-not-found]

MODE = sys.argv[1]
POLL_S = float(sys.argv[2])
N = N_DEFAULT if MODE == "burst" else ISO_DEFAULT
CONC = CONC_DEFAULT
URL = os.environ["DBOS_PG_URL"]

DBOS(config={"name": "anchors", "system_database_url": URL, "log_level": "WARNING"})

started: dict[str, float] = {}
done: dict[str, float] = {}
all_done = threading.Event()
cv = threading.Condition()


@DBOS.step()
def step1(run_id: str) -> dict[str, Any]:
    return step_fn(run_id, 1)  # type: ignore[no-any-return]


@DBOS.step()
def step2(run_id: str) -> dict[str, Any]:
    return step_fn(run_id, 2)  # type: ignore[no-any-return]


@DBOS.step()
def step3(run_id: str) -> dict[str, Any]:
    return step_fn(run_id, 3)  # type: ignore[no-any-return]


@DBOS.workflow()
def wf(run_id: str) -> dict[str, Any]:
    started.setdefault(run_id, time.perf_counter())
    step1(run_id)
    step2(run_id)
    return step3(run_id)


def watch_outcomes() -> None:
    """Note each run's completion as DBOS commits it (its system database's outcome write)."""
    from dbos._dbos import _get_dbos_instance  # type: ignore[import-not-found]

    sysdb = _get_dbos_instance()._sys_db
    original = sysdb.update_workflow_outcome

    def wrapped(workflow_id: str, status: str, *args: Any, **kwargs: Any) -> Any:
        result = original(workflow_id, status, *args, **kwargs)
        if status == "SUCCESS":
            now = time.perf_counter()
            with cv:
                done[workflow_id] = now
                if len(done) >= N:
                    all_done.set()
                cv.notify_all()
        return result

    sysdb.update_workflow_outcome = wrapped


def main() -> None:
    DBOS.launch()
    watch_outcomes()
    DBOS.register_queue("anchors", global_concurrency=CONC, polling_interval_sec=POLL_S)
    logging.getLogger("dbos").setLevel(logging.WARNING)
    time.sleep(1.5)  # the queue manager (1 s check interval) starts the queue's thread

    rss = RssSampler().start()
    enqueued: dict[str, float] = {}
    enqueue_latency = []
    ids = [f"run-{i:06d}" for i in range(N)]
    t_start = time.perf_counter()
    ok = True
    for rid in ids:
        t0 = time.perf_counter()
        with SetWorkflowID(rid):
            DBOS.enqueue_workflow("anchors", wf, rid)
        t1 = time.perf_counter()
        enqueue_latency.append(t1 - t0)
        enqueued[rid] = t1
        if MODE == "iso":
            with cv:
                ok = cv.wait_for(lambda rid=rid: rid in done, timeout=120) and ok
    if MODE == "burst":
        ok = all_done.wait(timeout=1800)
    peak_tree = rss.stop()
    if not ok:
        raise SystemExit(f"timeout: only {len(done)}/{N} complete")
    wall = max(done[r] for r in ids) - t_start
    from importlib.metadata import version

    emit_result(
        {
            "engine": "dbos",
            "variant": f"{MODE}-poll{POLL_S:g}s-postgresql",
            "mode": MODE,
            "settings": {
                "dbos_version": version("dbos"),
                "psycopg_version": version("psycopg"),
                "system_database": "postgresql (SQLAlchemy, psycopg 3)",
                "queue": f"register_queue(global_concurrency={CONC},"
                f" polling_interval_sec={POLL_S})",
            },
            **throughput_fields(N, 3, wall),
            "enqueue_latency_ms": lat_summary_ms(enqueue_latency),
            "e2e_latency_ms": lat_summary_ms([done[r] - enqueued[r] for r in ids]),
            "exec_latency_ms": lat_summary_ms([done[r] - started[r] for r in ids]),
            "peak_tree_rss_kb": peak_tree // 1024,
            "window_cpu_s": rss.cpu_s,
        }
    )
    DBOS.destroy(workflow_completion_timeout_sec=0)
    os._exit(0)


if __name__ == "__main__":
    main()
