"""``since`` is found by bisecting ids (nerved.store.reads._first_id_since): each probe is a
seek, and so must its bounds be.

``SELECT MIN(id), MAX(id) FROM logs`` is no seek: SQLite's min/max optimisation takes a
query with one such aggregate only, and with both it scans a whole index of logs.db (on a
store of 1,000,000 entries, 340 to 940 ms of the master's one thread, for each
``logs.query {since}`` or ``nervectl logs --since``, against a watchdog ping every 0.5 s).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from nerved.store.records import now_ms
from nerved.store.sqlite import Store


def test_since_reads_the_bounds_of_the_ids_without_a_scan(tmp_path: Path) -> None:
    store = Store(tmp_path / "logs.db")
    try:
        for n in range(5):
            store.append_log("sense", "signal", "tick", {"n": n}, ts=1000 + n)
        store.commit()
        statements: list[str] = []
        store._conn._conn.set_trace_callback(statements.append)
        try:
            entries = store.query_logs(since=1003)
        finally:
            store._conn._conn.set_trace_callback(None)
        assert [e.payload for e in entries] == [{"n": 3}, {"n": 4}]
        assert store.query_logs(since=now_ms()) == []
        assert len(store.query_logs(since=0)) == 5
        peer = sqlite3.connect(store.path)
        plans = [
            (sql, row[3])
            for sql in statements
            if sql.lstrip().upper().startswith("SELECT")
            for row in peer.execute(f"EXPLAIN QUERY PLAN {sql}")
        ]
        peer.close()
        assert not [p for p in plans if p[1].startswith("SCAN logs")], plans
    finally:
        store.close()


def test_since_on_an_empty_store_finds_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "logs.db")
    try:
        assert store.query_logs(since=0) == []
    finally:
        store.close()


def test_a_runs_entries_of_one_type_are_read_on_the_ref_index(tmp_path: Path) -> None:
    """``logs.query {runId, type}`` paging back: on ``(source, type)`` SQLite walked the
    entries of that type of every run, newest first, down to the run's (1.4 s for a run
    among the first of 1,000,000 entries); a run's own entries are few."""
    store = Store(tmp_path / "logs.db")
    try:
        for n in range(3):
            store.append_log("workflow", "step_complete", f"run{n:029d}", {"n": n})
        store.commit()
        statements: list[str] = []
        store._conn._conn.set_trace_callback(statements.append)
        try:
            ref = f"run{1:029d}"
            entries = store.query_logs(source="workflow", type="step_complete", ref_id=ref)
            assert [e.payload for e in entries] == [{"n": 1}]
            before = store.query_logs(source="workflow", type="step_complete", ref_id=ref,
                                      before_id=10)  # fmt: skip
            assert [e.payload for e in before] == [{"n": 1}]
        finally:
            store._conn._conn.set_trace_callback(None)
        peer = sqlite3.connect(store.path)
        plans = [
            row[3]
            for sql in statements
            if sql.lstrip().upper().startswith("SELECT")
            for row in peer.execute(f"EXPLAIN QUERY PLAN {sql}")
        ]
        peer.close()
        assert plans and all("USING INDEX logs_ref (" in p for p in plans), plans
    finally:
        store.close()
