"""The PostgreSQL store's queries under the plans a large database gets (attack review,
issue 15): a parallel plan, forced here on a few rows, must run them all."""

from __future__ import annotations

import pytest
from pg_support import pg_unavailable

if (_reason := pg_unavailable()) is not None:
    pytest.skip(f"PostgreSQL: {_reason}", allow_module_level=True)

import psycopg

from nerved import wire
from nerved.states import ACTIVE, Transition
from nerved.store.postgres.store import PgStore
from nerved.store.reads import _run_where, query_page
from nerved.store.records import input_payload


def test_signals_are_found_under_a_parallel_plan(pg_dsn: str) -> None:
    """json_valid and json_extract catch errors (an EXCEPTION block: a subtransaction),
    which a parallel plan cannot start: at some 100,000 inputs PostgreSQL chose one for
    signalled_runs, which failed, and recovery with it, at every start."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        dbname = conn.info.dbname
        for setting in ("parallel_setup_cost = 0", "parallel_tuple_cost = 0",
                        "min_parallel_table_scan_size = 0", "min_parallel_index_scan_size = 0",
                        "max_parallel_workers_per_gather = 2", "enable_indexscan = off",
                        "enable_bitmapscan = off"):  # fmt: skip
            conn.execute(f'ALTER DATABASE "{dbname}" SET {setting}'.encode())
    store = PgStore(pg_dsn)
    try:
        for n in range(50):
            run = f"run{n:05d}"
            store.create_run(run, "w", Transition.START, None)
            event = wire.dumps({"type": "signal", "name": "go", "payload": None})
            store.append_log("workflow", "input", run, None)
            sent = store.append_log("workflow", "signal", run, {"name": "go", "payload": n})
            if n % 2:
                store._conn.execute(  # a delivered one: its input names it
                    "INSERT INTO logs (source, type, ref_id, payload, ts)"
                    " VALUES ('workflow', 'input', ?, ?, 1)",
                    (run, input_payload(event, sent)),
                )
        store.commit()
        plan = "\n".join(
            row[0]
            for row in store._reader.execute(
                "EXPLAIN SELECT COUNT(*) FROM logs WHERE json_valid(payload)"
            ).fetchall()
        )
        assert store.signalled_runs() == {f"run{n:05d}" for n in range(0, 50, 2)}, plan
        assert len(store.committed.pending_signals("run00000", "go")) == 1
    finally:
        store.close()


def test_a_page_of_large_entries_reads_no_more_than_it_answers(pg_dsn: str) -> None:
    """query_page reads rows "one at a time and no further than needed" (_read_page): an
    answer carries 4 MiB. On PostgreSQL the whole LIMIT (up to 10,000 rows of up to 1 MiB
    each) came into the master's memory first: 200 entries of 1 MiB, 200 MiB read for a
    page of 4 (at 10,000, 10 GB: one ``nervectl logs`` could take the master down)."""
    store = PgStore(pg_dsn)
    try:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO logs (source, type, ref_id, payload, ts) SELECT 'workflow',"
                " 'step_complete', 'run1', '\"' || repeat('x', 1000000) || '\"', 1"
                " FROM generate_series(1, 200)"
            )

        def peak_mib() -> int:
            with open("/proc/self/status") as status:
                return int(status.read().split("VmHWM:")[1].split()[0]) // 1024

        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # the peak (VmHWM) starts again from the RSS now
        before = peak_mib()
        entries, more = query_page(store._reader, limit=10_000)
        assert (len(entries), more) == (4, True)
        assert peak_mib() - before < 100
        # the same page, paging forward and back, as SQLite answers it
        forward, more = query_page(store._reader, after_id=2, limit=3)
        assert ([e.id for e in forward], more) == ([3, 4, 5], True)
        back, more = query_page(store._reader, before_id=7, limit=10)
        assert ([e.id for e in back], more) == ([3, 4, 5, 6], True)
        assert query_page(store._reader, after_id=200) == ([], False)
    finally:
        store.close()


def test_a_hosts_active_runs_are_listed_on_its_index_under_a_generic_plan(pg_dsn: str) -> None:
    """``workflow list --host H`` (active runs: the default) reads ``workflow_runs_host``,
    the partial index on ``(host, seq)`` of the active runs, not every run ever kept. Its
    predicate is proved only from literals: the statuses bound as parameters alone would not
    match it once PostgreSQL switches a statement to a generic plan, so list_runs writes
    them as :data:`ACTIVE_SQL` too (see ``_run_where``)."""
    store = PgStore(pg_dsn)
    try:
        clause, args = _run_where(sorted(ACTIVE), None, "a") or ("", [])
        numbered = clause
        for n in range(1, len(args) + 1):
            numbered = numbered.replace("?", f"${n}", 1)
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute("SET enable_seqscan = off")
            conn.execute("SET plan_cache_mode = force_generic_plan")
            conn.execute(
                f"PREPARE listed AS SELECT run_id FROM workflow_runs {numbered}".encode()
                + b" ORDER BY seq DESC LIMIT 100"
            )
            values = ", ".join(f"'{value}'" for value in args)
            plan = "\n".join(
                str(row[0]) for row in conn.execute(f"EXPLAIN EXECUTE listed({values})".encode())
            )
        assert "workflow_runs_host" in plan, plan
    finally:
        store.close()
