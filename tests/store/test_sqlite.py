"""The SQLite backend's own tests (nerved.store.sqlite): real SQLite files under tmp_path,
no mocks. What every backend must do is the contract (test_contract.py), which runs
against this one too; here is what only SQLite has.

logs.db is nerve's source of truth (SPEC section 5): every run transition and every role's
output is a ``logs`` entry, and the materialised ``workflow_runs`` row changes in the same
transaction (RFC-002 section 6.2). These tests pin the file's settings and schema, the
write lock held from one commit to the next, rows damaged on disk, and that
``workflow_runs`` can always be rebuilt from ``logs``.

Where the store's connection must be inspected (per-connection pragmas, a shorter busy
timeout), the tests use ``store._conn``; everything else goes through the public API or a
separate plain ``sqlite3`` connection, as another process would see the file.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from store_support import (
    MIB,
    Model,
    failure,
    fill,
    install_poison,
    make_run,
    move,
    random_operations,
    role_failed,
    step,
)
from support import assert_runs_match, derive_runs, read_runs

from nerved.states import ACTIVE, RunStatus, Transition
from nerved.store import (
    SCHEMA_VERSION,
    Store,
    StoreBusy,
    StoreError,
    Unreadable,
)
from nerved.store.connection import AUTOCHECKPOINT_BYTES, CACHE_KIB, PAGE_SIZE
from nerved.store.schema import MIGRATIONS

# -- helpers and fixtures ----------------------------------------------------------------


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A path whose parent does not exist yet: the store must create it."""
    return tmp_path / "state" / "logs.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    s = Store(db_path)
    yield s
    s.close()


@pytest.fixture
def peer(store: Store) -> Iterator[sqlite3.Connection]:
    """A plain connection to the same file: what any other reader of logs.db would see."""
    conn = sqlite3.connect(store.path, isolation_level=None)
    yield conn
    conn.close()


def plain_connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def table_rows(conn: sqlite3.Connection, table: str) -> int:
    return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


# -- the file ----------------------------------------------------------------------------


def test_fresh_file_gets_schema_version_and_wal(store: Store, peer: sqlite3.Connection) -> None:
    """WAL lets the control socket read while a batch is open; the version guards upgrades."""
    assert store.path.exists()
    assert store.schema_version == SCHEMA_VERSION
    assert peer.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert peer.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in peer.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"logs", "meta", "workflow_runs"} <= tables


def test_store_connection_is_synchronous_full(store: Store) -> None:
    """synchronous is per connection, so only the store's own can show it: FULL (2) makes
    every commit durable before its after_commit acknowledgements run (SPEC section 5)."""
    assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_new_file_gets_small_pages_an_old_one_keeps_its_own(tmp_path: Path) -> None:
    """A commit writes whole pages (PAGE_SIZE); a file made with SQLite's default keeps it,
    and the automatic checkpoint stays at the same number of bytes of WAL."""
    fresh = Store(tmp_path / "new.db")
    try:
        assert fresh._conn.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE
        pages = fresh._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        assert pages * PAGE_SIZE == AUTOCHECKPOINT_BYTES
    finally:
        fresh.close()
    old = sqlite3.connect(tmp_path / "old.db")
    old.execute("PRAGMA page_size = 4096")
    old.execute("CREATE TABLE t (x)")
    old.close()
    store = Store(tmp_path / "old.db")
    try:
        assert store._conn.execute("PRAGMA page_size").fetchone()[0] == 4096
        pages = store._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        assert pages * 4096 == AUTOCHECKPOINT_BYTES
    finally:
        store.close()


def test_both_connections_page_caches_are_bounded(store: Store) -> None:
    """A page cache fills up to its bound and stays full: SQLite's default (2 MB) was held by
    the master once logs.db outgrew it, and counted again by every worker forked after."""
    for conn in (store._conn, store.committed._conn):
        assert conn.execute("PRAGMA cache_size").fetchone()[0] == -CACHE_KIB


def test_reopening_keeps_the_schema_version(db_path: Path) -> None:
    Store(db_path).close()
    for _ in range(2):
        again = Store(db_path)
        assert again.schema_version == SCHEMA_VERSION
        again.close()


def test_newer_schema_version_is_refused(db_path: Path) -> None:
    """A file written by a newer release must not be half-understood and overwritten."""
    db_path.parent.mkdir(parents=True)
    conn = plain_connect(db_path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()

    with pytest.raises(StoreError) as info:
        Store(db_path)
    numbers = re.findall(r"\d+", str(info.value).replace(str(db_path), ""))
    assert str(SCHEMA_VERSION + 1) in numbers
    assert str(SCHEMA_VERSION) in numbers

    conn = plain_connect(db_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    assert conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0
    conn.close()


def test_garbage_file_is_refused(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(b"this is not an SQLite database\n" * 200)
    with pytest.raises(StoreError, match="not a database"):
        Store(db_path)


def test_directory_as_path_is_refused(db_path: Path) -> None:
    db_path.mkdir(parents=True)
    with pytest.raises(StoreError):
        Store(db_path)


def test_foreign_database_with_clashing_tables_is_refused(db_path: Path) -> None:
    """An SQLite file at user_version 0 that already has a ``logs`` table is not ours."""
    db_path.parent.mkdir(parents=True)
    conn = plain_connect(db_path)
    conn.execute("CREATE TABLE logs (x)")
    conn.close()
    with pytest.raises(StoreError):
        Store(db_path)


def test_path_under_a_regular_file_is_refused_with_store_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError):
        Store(tmp_path / "file" / "logs.db")


@pytest.mark.parametrize("status", list(RunStatus), ids=str)
def test_schema_accepts_every_status(
    store: Store, peer: sqlite3.Connection, status: RunStatus
) -> None:
    """The CHECK constraint and RunStatus must agree, or a legal transition would fail."""
    store.release()
    peer.execute(
        "INSERT INTO workflow_runs (run_id, workflow, status, created_at, updated_at)"
        " VALUES ('x', 'wf', ?, 0, 0)",
        (status.value,),
    )


def test_schema_rejects_an_unknown_status(store: Store, peer: sqlite3.Connection) -> None:
    store.release()
    with pytest.raises(sqlite3.IntegrityError):
        peer.execute(
            "INSERT INTO workflow_runs (run_id, workflow, status, created_at, updated_at)"
            " VALUES ('x', 'wf', 'paused', 0, 0)"
        )


def test_schema_accepts_waiting_already(store: Store, peer: sqlite3.Connection) -> None:
    """Issue 12 adds 'waiting': the table of migration 2 takes it, so that it needs no
    rebuild (a status nerved does not know yet is never written)."""
    store.release()
    peer.execute(
        "INSERT INTO workflow_runs (run_id, workflow, status, created_at, updated_at)"
        " VALUES ('x', 'wf', 'waiting', 0, 0)"
    )


def test_the_unique_index_holds_keys_whoever_writes(store: Store, peer: sqlite3.Connection) -> None:
    """Migration 3's index: one run per (workflow, key), whoever writes the row; any number
    of runs without a key."""
    store.create_run("r1", "wf", Transition.START, None, idempotency_key="k")
    store.commit()
    store.release()
    insert = (
        "INSERT INTO workflow_runs (run_id, workflow, status, created_at, updated_at,"
        " idempotency_key) VALUES (?, ?, 'started', 0, 0, ?)"
    )
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        peer.execute(insert, ("r2", "wf", "k"))
    peer.execute(insert, ("r3", "other", "k"))
    peer.execute(insert, ("r4", "wf", None))
    peer.execute(insert, ("r5", "wf", None))
    peer.commit()


def plans(store: Store, peer: sqlite3.Connection, call: Callable[[], object]) -> list[str]:
    """The query plan of every statement ``call`` makes the store run (parameters as bound)."""
    statements: list[str] = []
    store._conn._conn.set_trace_callback(statements.append)
    try:
        call()
    finally:
        store._conn._conn.set_trace_callback(None)
    details = []
    for sql in statements:
        if sql.lstrip().upper().startswith(("SELECT", "INSERT", "UPDATE", "DELETE")):
            details += [row[3] for row in peer.execute(f"EXPLAIN QUERY PLAN {sql}")]
    return details


def test_the_engines_reads_use_their_indexes(store: Store, peer: sqlite3.Connection) -> None:
    """active_runs finds the active runs through the partial index (which covers exactly
    nerved.states.ACTIVE), and a run's history is read, counted and copied through the
    ``logs_ref`` index (the ref turned: nerved.store.refs): never a scan of every entry of
    every run."""
    make_run(store, "r1", RunStatus.STARTED)
    store.record_step("r1", step("role", None, None))
    make_run(store, "r2", RunStatus.STARTED)
    store.commit()
    index = peer.execute(
        "SELECT sql FROM sqlite_master WHERE name = 'workflow_runs_active'"
    ).fetchone()[0]
    assert all(f"'{status}'" in index for status in ACTIVE)
    assert index.count("'") == 2 * len(ACTIVE)

    active = plans(store, peer, store.active_runs)
    assert any("USING INDEX workflow_runs_active" in d for d in active), active
    assert any("USING INDEX logs_ref (" in d for d in active), active
    by_key = plans(store, peer, lambda: store.run_by_key("wf", "k"))
    assert any("USING INDEX workflow_runs_key" in d for d in by_key), by_key
    for call in (
        lambda: store.run_steps_page("r1"),
        lambda: store.copy_history("r1", "r2", 1),
        lambda: store.pending_signals("r1"),
        lambda: store.query_logs(ref_id="r1"),
        lambda: store.query_logs(source="workflow", ref_id="r1", after_id=0),
    ):
        details = plans(store, peer, call)
        assert any("USING INDEX logs_ref (" in d for d in details), details
        assert not any(d.startswith("SCAN logs") for d in details), details
    make_run(store, "r3", RunStatus.COMPLETED)
    store.commit()
    pruned = plans(store, peer, lambda: store.prune_runs(older_than=None, keep=0, limit=10))
    assert any("USING INDEX logs_ref (" in d for d in pruned), pruned


def test_a_listing_of_active_runs_reads_the_active_index(
    store: Store, peer: sqlite3.Connection
) -> None:
    """``workflow list`` without ``--all`` (with ``--host`` or not) walks the active runs'
    partial index, not every run kept: its statuses are written as the index's own literals
    (reads._run_where), which SQLite needs to use a partial index."""
    make_run(store, "r1", RunStatus.STARTED)
    make_run(store, "r2", RunStatus.COMPLETED)
    store.commit()
    for call in (
        lambda: store.list_runs(statuses=ACTIVE),
        lambda: store.list_runs(statuses=ACTIVE, host="a"),
        lambda: store.list_runs(statuses=[RunStatus.QUEUED]),
    ):
        details = plans(store, peer, call)
        assert any("USING INDEX workflow_runs_active" in d for d in details), details


# -- migrations ------------------------------------------------------------------------

# Runs of a version-1 file, one in each status it knew: (status, steps, attempts, error,
# entries), seqs with gaps, as the v1 engine wrote them.
V1_RUNS = [
    ("queued", 0, 0, None, ["queued"]),
    ("started", 2, 1, None, ["queued", "started", "step_complete", "log", "step_complete"]),
    ("completed", 1, 0, None, ["started", "step_complete", "completed"]),
    ("failed", 1, 0, "role 'a' raised", ["started", "step_complete", "failed"]),
    ("crashed", 0, 3, "worker died", ["started", "crashed"]),
    ("dropped", 0, 0, "queue full", ["queued", "dropped"]),
]


def write_version_1(path: Path) -> None:
    """A logs.db as nerved wrote it before migration 2: the v1 schema text, runs in every
    status and their entries."""
    path.parent.mkdir(parents=True)
    conn = plain_connect(path)
    conn.executescript(f"{MIGRATIONS[0]}\nPRAGMA user_version = 1;")
    for i, (status, steps, attempts, error, types) in enumerate(V1_RUNS):
        run_id = f"r{i}"
        conn.execute(
            "INSERT INTO workflow_runs (seq, run_id, workflow, status, created_at, updated_at,"
            " trigger_payload, steps, error, attempts, retry_of) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (10 * i + 3, run_id, "wf", status, 1_000 + i, 2_000 + i, f'{{"i":{i}}}', steps,
             error, attempts, "r0" if i == 2 else None),
        )  # fmt: skip
        for n, type_ in enumerate(types):
            payload = {
                "queued": f'{{"i":{i}}}',
                "started": f'{{"i":{i}}}',
                "step_complete": f'{{"role":"a","prompt":null,"event":{{"n":{n}}}}}',
                "log": '"a line"',
                "completed": None,
            }.get(type_, f'"{error}"')
            conn.execute(
                "INSERT INTO logs (source, type, ref_id, payload, ts) VALUES (?, ?, ?, ?, ?)",
                ("workflow", type_, run_id, payload, 1_000 + n),
            )
    conn.execute("INSERT INTO logs (source, type, ref_id, payload, ts) VALUES (?, ?, ?, ?, ?)",
                 ("sense", "signal", "disk", "1", 5))  # fmt: skip
    conn.close()


def rows_by_run(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    """Every column of every run, by run id."""
    cursor = conn.execute("SELECT * FROM workflow_runs ORDER BY seq")
    names = [column[0] for column in cursor.description]
    return {row[1]: dict(zip(names, row, strict=True)) for row in cursor}


def test_a_version_1_file_migrates_keeping_every_row_seq_and_entry(db_path: Path) -> None:
    """Migration 2 rebuilds workflow_runs: every row comes through with its seq and values,
    ``tries`` 0 and ``retry_at`` NULL; the entries are not touched; the indexes are there
    again; and the rows of before take the new statuses and columns."""
    write_version_1(db_path)
    conn = plain_connect(db_path)
    before = rows_by_run(conn)
    logs_before = conn.execute("SELECT * FROM logs ORDER BY id").fetchall()
    assert [row["status"] for row in before.values()] == [status for status, *_ in V1_RUNS]
    conn.close()

    store = Store(db_path)
    assert store.schema_version == SCHEMA_VERSION == 8
    assert [(r.run_id, r.steps, r.attempts, r.history) for r in store.active_runs()] == [
        ("r0", 0, 0, len('{"i":0}')),
        ("r1", 2, 1, len('{"i":1}') + 2 * len('{"role":"a","prompt":null,"event":{"n":2}}')),
    ]
    store.close()
    conn = plain_connect(db_path)
    after = rows_by_run(conn)
    assert after == {
        run_id: {
            **row,
            "tries": 0,
            "retry_at": None,
            "idempotency_key": None,
            "wait_for": None,
            "wake_at": None,
            "host": None,
            "placement": "local",
        }
        for run_id, row in before.items()
    }
    assert conn.execute("SELECT * FROM logs ORDER BY id").fetchall() == logs_before
    indexes = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL ORDER BY name"
    ).fetchall()
    assert indexes == [
        ("logs_ref",), ("logs_source_type",), ("workflow_runs_active",), ("workflow_runs_key",),
    ]  # fmt: skip
    tables = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
    assert tables.fetchall() == [("cron_firings",), ("logs",), ("meta",), ("workflow_runs",)]
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert_runs_match(derive_runs(conn), read_runs(conn))
    conn.close()

    # What the new columns and statuses are for works on the rows of before.
    store = Store(db_path)
    assert store.record_failure("r1", failure("a", "boom", 1, 9_000), 9_000, ts=3_000)
    assert move(store, "r0", Transition.CANCEL, reason="not needed", ts=3_000)
    new = store.create_run("new", "wf", Transition.START, None)
    store.commit()
    store.close()
    assert new.seq == max(row["seq"] for row in before.values()) + 1
    conn = plain_connect(db_path)
    after = rows_by_run(conn)
    after_1 = {
        "updated_at": 3_000,
        "tries": 1,
        "retry_at": 9_000,
        "idempotency_key": None,
        "wait_for": None,
        "wake_at": None,
        "host": None,
        "placement": "local",
    }
    assert after["r1"] == {**before["r1"], **after_1}
    assert after["r0"] == {
        **before["r0"],
        "status": "cancelled",
        "updated_at": 3_000,
        "error": "cancelled by uid 0: not needed",
        "tries": 0,
        "retry_at": None,
        "idempotency_key": None,
        "wait_for": None,
        "wake_at": None,
        "host": None,
        "placement": "local",
    }
    assert_runs_match(derive_runs(conn), read_runs(conn))
    conn.close()


def test_a_file_of_a_newer_version_is_refused_as_it_is(db_path: Path) -> None:
    """A version past this nerved's is not its own: refused, and not touched (nothing
    migrated down)."""
    newer = SCHEMA_VERSION + 1
    write_version_1(db_path)
    conn = plain_connect(db_path)
    conn.execute(f"PRAGMA user_version = {newer}")
    conn.close()
    match = f"schema version {newer}; this nerved knows up to {SCHEMA_VERSION}"
    with pytest.raises(StoreError, match=match):
        Store(db_path)
    conn = plain_connect(db_path)
    assert conn.execute("PRAGMA user_version").fetchone() == (newer,)
    sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'workflow_runs'").fetchone()
    assert "cancelled" not in sql[0]
    conn.close()


# -- the write lock ----------------------------------------------------------------------


def test_the_store_holds_the_write_lock_and_never_waits_for_it(
    store: Store, peer: sqlite3.Connection
) -> None:
    """Others may read logs.db but not write it while the store has it open. If another
    writer takes the lock all the same (in the instant the store lets go of it), acquire()
    says so at once, a write is refused with StoreBusy before anything changes, and once the
    lock is free again the same write works."""
    peer.execute("PRAGMA busy_timeout = 10")
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        peer.execute("BEGIN IMMEDIATE")
    assert table_rows(peer, "logs") == 0  # reading is fine

    store.release()
    peer.execute("BEGIN IMMEDIATE")
    started = time.monotonic()
    assert store.acquire() is False
    with pytest.raises(StoreBusy):
        store.create_run("r1", "wf", Transition.START, None)
    assert time.monotonic() - started < 0.5
    assert not store.dirty
    peer.execute("ROLLBACK")

    assert store.acquire() is True
    store.create_run("r1", "wf", Transition.START, None)
    store.commit()
    assert table_rows(peer, "workflow_runs") == 1
    assert table_rows(peer, "logs") == 1


# -- damaged rows ----------------------------------------------------------------------


def test_unreadable_payloads_are_entries_with_the_reason(
    store: Store, peer: sqlite3.Connection
) -> None:
    ids = fill(store, [10, 10, 10])
    store.release()
    peer.execute("UPDATE logs SET payload = '{\"cut' WHERE id = ?", (ids[1],))
    entries = store.query_logs()
    assert [e.id for e in entries] == ids
    assert isinstance(entries[1].payload, Unreadable)
    wire = entries[1].to_wire()
    assert wire["payload"] is None
    assert wire["unreadable"].startswith("not readable as JSON: ")
    assert "unreadable" not in entries[0].to_wire()
    assert entries[2].payload == "x" * 8


def test_list_runs_does_not_read_trigger_payloads(store: Store, peer: sqlite3.Connection) -> None:
    store.create_run("r1", "wf", Transition.START, {"big": "x" * MIB})
    store.create_run("r2", "wf", Transition.START, {"n": 2})
    store.commit()
    store.release()
    peer.execute("UPDATE workflow_runs SET trigger_payload = '{' WHERE run_id = 'r2'")
    assert [(r.run_id, r.trigger_payload) for r in store.list_runs()] == [
        ("r2", None),
        ("r1", None),
    ]
    r2 = store.get_run("r2")
    assert r2 is not None and isinstance(r2.trigger_payload, Unreadable)


# -- derivation: workflow_runs is derived data -------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_workflow_runs_is_derivable_from_logs(db_path: Path, seed: int) -> None:
    """After any sequence of operations, including batches whose COMMIT fails, rebuilding
    each run's status, steps, error, tries and retry_at from ``logs`` alone
    (tests/support.py, derive_runs) gives exactly ``workflow_runs`` (RFC-002 section 6.2),
    and both match a model of what should have happened (store_support.random_operations).
    The derivation is checked after every commit, from another connection, not only at the
    end.
    """
    store = Store(db_path)
    reader = plain_connect(db_path)

    def check(committed: Model) -> None:
        assert_runs_match(derive_runs(reader), read_runs(reader))

    model = random_operations(store, install_poison, seed, check)
    store.close()
    reader.close()

    conn = plain_connect(db_path)
    derived = derive_runs(conn)
    stored = read_runs(conn)
    attempts = dict(conn.execute("SELECT run_id, attempts FROM workflow_runs"))
    conn.close()
    assert_runs_match(derived, stored)
    fields = ("status", "steps", "tries", "retry_at")
    assert {run_id: tuple(row[f] for f in fields) for run_id, row in stored.items()} == {
        run_id: (run.status.value, run.steps, run.tries, run.retry_at)
        for run_id, run in model.items()
    }
    assert attempts == {run_id: run.attempts for run_id, run in model.items()}


def derivable(path: Path) -> bool:
    conn = plain_connect(path)
    try:
        return bool(derive_runs(conn) == read_runs(conn))
    finally:
        conn.close()


@pytest.mark.parametrize(
    "change",
    [
        "status = 'completed'",
        "status = 'cancelled'",
        "steps = 2",
        "error = 'other'",
        "tries = 2",
        "retry_at = 5",
    ],
)
def test_derivation_helper_sees_a_divergence(db_path: Path, change: str) -> None:
    """The property above is only worth something if the helper can fail: a row changed
    behind the logs' back must show up as a difference, whichever field it is."""
    store = Store(db_path)
    make_run(store, "r1", RunStatus.STARTED)
    store.record_step("r1", step("role", None, None))
    assert store.record_failure("r1", failure("role", "boom", 1, 9_000), 9_000)
    make_run(store, "r2", RunStatus.CANCELLED)
    store.commit()
    store.close()
    assert derivable(db_path)
    conn = plain_connect(db_path)
    conn.execute(f"UPDATE workflow_runs SET {change} WHERE run_id = 'r1'")
    conn.close()
    assert not derivable(db_path)


@pytest.mark.parametrize(("uid", "reason"), [(0, None), (1000, "not needed"), (None, "")])
def test_derivation_and_the_store_agree_on_a_cancelled_runs_error(
    db_path: Path, uid: int | None, reason: str | None
) -> None:
    """The error of a cancelled run is written in two places, nerved.store.records and
    tests/support.py: they must say the same, for each shape of ``{reason, uid}``."""
    store = Store(db_path)
    make_run(store, "r1", RunStatus.STARTED)
    assert move(store, "r1", Transition.CANCEL, reason=reason, uid=uid)
    store.commit()
    run = store.get_run("r1")
    store.close()
    assert run is not None and run.error is not None and run.error.startswith("cancelled")
    assert derivable(db_path)


def test_derivation_fails_on_an_entry_type_it_does_not_know(db_path: Path) -> None:
    """A new type of entry must be taught to the derivation, not skipped unseen."""
    store = Store(db_path)
    make_run(store, "r1", RunStatus.STARTED)
    assert store.record_input("r1", role_failed("role", "boom", 2))
    store.append_log("workflow", "resumed", "r1", {"reason": "a test", "attempt": 1})
    store.commit()
    assert derivable(db_path)
    store.append_log("workflow", "paused", "r1", None)
    store.commit()
    store.close()
    with pytest.raises(AssertionError, match="'paused'"):
        derivable(db_path)


def test_derivation_fails_on_a_miscounted_try(db_path: Path) -> None:
    """A ``step_failed`` entry says which try of its step failed: the count from the last
    step or input, which is the row's ``tries``."""
    store = Store(db_path)
    make_run(store, "r1", RunStatus.STARTED)
    assert store.record_failure("r1", failure("role", "boom", 1, None), None)
    assert store.record_input("r1", role_failed("role", "boom", 1))
    assert store.record_failure("r1", failure("role", "boom", 2, None), None)
    store.commit()
    store.close()
    with pytest.raises(AssertionError, match="should be try 1"):
        derivable(db_path)
