"""Storage contract tests for nerved.store: real SQLite files under tmp_path, no mocks.

logs.db is nerve's source of truth (SPEC section 5): every run transition and every role's
output is a ``logs`` entry, and the materialised ``workflow_runs`` row changes in the same
transaction (RFC-002 section 6.2). These tests pin what the rest of the daemon relies on:
the file's settings, the batch (nothing is visible or acknowledged before COMMIT), guarded
transitions that write nothing when they lose, the reads the control protocol serves, and
that ``workflow_runs`` can always be rebuilt from ``logs``.

Where the store's connection must be inspected (per-connection pragmas, a shorter busy
timeout), the tests use ``store._conn``; everything else goes through the public API or a
separate plain ``sqlite3`` connection, as another process would see the file.
"""

from __future__ import annotations

import random
import re
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nerved import wire
from nerved.states import ACTIVE, RunStatus, Transition
from nerved.store import (
    MAX_QUERY_LIMIT,
    SCHEMA_VERSION,
    LogEntry,
    RunRecord,
    Store,
    StoreBusy,
    StoreError,
    Unreadable,
    now_ms,
)

REPO = Path(__file__).resolve().parent.parent
CREATING = [t for t in Transition if t.creates]
MOVING = [t for t in Transition if not t.creates]

# How to bring a fresh run into each status with legal transitions only.
PATH_TO: dict[RunStatus, tuple[Transition, ...]] = {
    RunStatus.QUEUED: (Transition.ENQUEUE,),
    RunStatus.STARTED: (Transition.START,),
    RunStatus.COMPLETED: (Transition.START, Transition.COMPLETE),
    RunStatus.FAILED: (Transition.START, Transition.FAIL),
    RunStatus.CRASHED: (Transition.START, Transition.CRASH),
    RunStatus.DROPPED: (Transition.ENQUEUE, Transition.EVICT),
}


# -- helpers and fixtures ----------------------------------------------------------------


def step(role: str, prompt: Any, event: Any) -> str:
    """A step record as the engine hands it to record_step: encoded once, by the caller."""
    return wire.dumps({"role": role, "prompt": prompt, "event": event})


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


def make_run(store: Store, run_id: str, status: RunStatus, *, workflow: str = "wf") -> str:
    """Bring a new run into ``status`` through legal transitions (not committed)."""
    first, *rest = PATH_TO[status]
    store.create_run(run_id, workflow, first, {"run": run_id})
    for transition in rest:
        assert store.transition_run(run_id, transition)
    return run_id


def history(store: Store, run_id: str) -> list[LogEntry]:
    """Every entry of one run, oldest first, page after page."""
    entries: list[LogEntry] = []
    more = True
    while more:
        page, more = store.run_history_page(run_id, entries[-1].id if entries else 0)
        entries += page
    return entries


def table_rows(conn: sqlite3.Connection, table: str) -> int:
    return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def install_poison(store: Store) -> None:
    """Make COMMIT itself fail for real, for any batch that logs an entry of type 'poison'.

    In WAL mode the store holds the write lock from its ``BEGIN IMMEDIATE`` onwards, so no
    other connection can make its COMMIT busy. A deferred foreign key can: the violation is
    only checked at COMMIT, which then fails and leaves the transaction open. The trigger and
    tables are added from another connection (while the store lets go of its write lock),
    so the store's code path is untouched, and the store's own connection has
    ``foreign_keys = ON``.
    """
    store.release()
    conn = plain_connect(store.path)
    conn.executescript(
        """
        CREATE TABLE poison_parent (id INTEGER PRIMARY KEY);
        CREATE TABLE poison_child (
            parent INTEGER REFERENCES poison_parent (id) DEFERRABLE INITIALLY DEFERRED
        );
        CREATE TRIGGER poison AFTER INSERT ON logs WHEN NEW.type = 'poison'
        BEGIN
            INSERT INTO poison_child (parent) VALUES (-1);
        END;
        """
    )
    conn.close()


def derive_runs_from_logs(conn: sqlite3.Connection) -> dict[str, tuple[RunStatus | None, int]]:
    """Rebuild every run's (status, steps) from the ``logs`` table alone.

    RFC-002 section 6.2 makes ``workflow_runs`` derived data, rebuildable from ``logs`` if
    lost. This is that rebuild, written independently of the store: a run's status is the
    type of its last entry whose type is a ``RunStatus`` value (``log`` lines and
    ``step_complete`` entries do not move it), and its steps are the number of its
    ``step_complete`` entries. Only ``source = 'workflow'`` entries count, since other
    sources may use the same string as a ref_id. A run with no transition entry at all gets
    status None, which never matches a materialised row.
    """
    statuses = {s.value for s in RunStatus}
    derived: dict[str, tuple[RunStatus | None, int]] = {}
    rows = conn.execute(
        "SELECT ref_id, type FROM logs WHERE source = 'workflow' AND ref_id IS NOT NULL ORDER BY id"
    )
    for ref_id, type_ in rows:
        status, steps = derived.get(ref_id, (None, 0))
        if type_ in statuses:
            status = RunStatus(type_)
        elif type_ == "step_complete":
            steps += 1
        derived[ref_id] = (status, steps)
    return derived


def materialised_runs(conn: sqlite3.Connection) -> dict[str, tuple[RunStatus | None, int]]:
    rows = conn.execute("SELECT run_id, status, steps FROM workflow_runs")
    return {run_id: (RunStatus(status), steps) for run_id, status, steps in rows}


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


def test_reopening_is_idempotent_and_keeps_data(db_path: Path) -> None:
    first = Store(db_path)
    first.create_run("r1", "wf", Transition.START, {"n": 1})
    first.set_meta("k", "v")
    first.commit()
    first.close()

    for _ in range(2):
        again = Store(db_path)
        assert again.schema_version == SCHEMA_VERSION
        run = again.get_run("r1")
        assert run is not None and run.status is RunStatus.STARTED
        assert run.trigger_payload == {"n": 1}
        assert again.get_meta("k") == "v"
        assert [e.type for e in history(again, "r1")] == ["started"]
        again.close()


def test_close_drops_the_uncommitted_batch(db_path: Path) -> None:
    """Only a commit acknowledges; what no commit covered was never promised to anyone."""
    s = Store(db_path)
    s.create_run("r0", "wf", Transition.ENQUEUE, None)
    s.commit()
    s.create_run("r1", "wf", Transition.ENQUEUE, None)
    s.close()
    conn = plain_connect(db_path)
    assert table_rows(conn, "workflow_runs") == 1
    assert table_rows(conn, "logs") == 1
    conn.close()


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


# -- the batch ---------------------------------------------------------------------------


def test_writes_are_invisible_to_others_until_commit(
    store: Store, peer: sqlite3.Connection
) -> None:
    """Readers never see half a turn; the store's own reads do see its open batch."""
    store.create_run("r1", "wf", Transition.START, {"a": 1})
    store.append_log("sense", "signal", "disk", {"v": 3})
    store.set_meta("k", "v")

    assert store.get_run("r1") is not None
    assert store.get_meta("k") == "v"
    assert store.last_log_id() == 2
    assert store.dirty
    for table in ("workflow_runs", "logs"):
        assert table_rows(peer, table) == 0
    assert peer.execute("SELECT value FROM meta WHERE key = 'k'").fetchone() is None

    store.commit()
    assert not store.dirty
    assert store.commits == 1
    assert table_rows(peer, "workflow_runs") == 1
    assert table_rows(peer, "logs") == 2
    assert peer.execute("SELECT value FROM meta WHERE key = 'k'").fetchone() == ("v",)


def test_after_commit_runs_in_order_only_after_the_commit(
    store: Store, peer: sqlite3.Connection
) -> None:
    """An acknowledgement must never run ahead of its data (SPEC section 5)."""
    seen: list[tuple[str, int]] = []

    def visible_runs() -> int:
        return table_rows(peer, "workflow_runs")

    store.create_run("r1", "wf", Transition.START, None)
    store.after_commit(lambda: seen.append(("first", visible_runs())))
    store.create_run("r2", "wf", Transition.START, None)
    store.after_commit(lambda: seen.append(("second", visible_runs())))
    store.after_commit(lambda: seen.append(("third", visible_runs())), lambda exc: None)
    assert seen == []

    store.commit()
    assert seen == [("first", 2), ("second", 2), ("third", 2)]

    store.commit()  # callbacks run once
    assert len(seen) == 3


def test_after_commit_runs_when_nothing_was_written(store: Store) -> None:
    """Callers must not care whether their own write opened the batch."""
    seen: list[str] = []
    store.after_commit(lambda: seen.append("a"))
    store.after_commit(lambda: seen.append("b"))
    assert store.dirty
    assert seen == []

    store.commit()
    assert seen == ["a", "b"]
    assert store.commits == 0  # there was no transaction to commit
    assert not store.dirty


def test_after_commit_registered_by_a_callback_waits_for_the_next_commit(store: Store) -> None:
    seen: list[str] = []

    def first() -> None:
        seen.append("first")
        store.append_log("test", "note", None, None)
        store.after_commit(lambda: seen.append("later"))

    store.after_commit(first)
    store.commit()
    assert seen == ["first"]
    assert store.dirty
    store.commit()
    assert seen == ["first", "later"]


def test_failing_commit_rolls_back_aborts_and_raises(
    store: Store, peer: sqlite3.Connection
) -> None:
    """COMMIT really fails (a deferred constraint): nothing of the batch may survive, no
    acknowledgement may run, and whoever waited is told why."""
    store.create_run("kept", "wf", Transition.START, None)
    store.commit()
    install_poison(store)

    committed: list[str] = []
    aborted: list[BaseException] = []
    store.create_run("r1", "wf", Transition.START, {"a": 1})
    store.after_commit(lambda: committed.append("r1"), aborted.append)
    store.append_log("test", "poison", None, None)
    store.after_commit(lambda: committed.append("poison"), aborted.append)
    store.after_commit(lambda: committed.append("no abort callback"))

    with pytest.raises(StoreError, match="commit failed") as info:
        store.commit()

    assert committed == []
    assert len(aborted) == 2
    assert all(isinstance(exc, StoreError) for exc in aborted)
    assert info.value.__cause__ is aborted[0] is aborted[1]
    assert not store.dirty
    assert store.get_run("r1") is None
    assert [r.run_id for r in store.list_runs()] == ["kept"]
    assert table_rows(peer, "workflow_runs") == 1
    assert table_rows(peer, "logs") == 1

    # The store is usable again, and the aborted callbacks are not carried over.
    store.create_run("r2", "wf", Transition.START, None)
    store.after_commit(lambda: committed.append("r2"))
    store.commit()
    assert committed == ["r2"]
    assert table_rows(peer, "workflow_runs") == 2


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


def test_a_failed_statement_keeps_the_rest_of_the_batch(store: Store) -> None:
    """A duplicate run id is refused without its log entry; the batch's other writes stay."""
    store.create_run("r1", "wf", Transition.START, None)
    store.commit()
    store.append_log("test", "before", None, None)
    with pytest.raises(StoreError, match="UNIQUE constraint failed"):
        store.create_run("r1", "wf", Transition.ENQUEUE, None)
    store.commit()
    assert [e.type for e in store.query_logs()] == ["started", "before"]
    run = store.get_run("r1")
    assert run is not None and run.status is RunStatus.STARTED


def test_a_process_dying_mid_batch_leaves_nothing_of_it(db_path: Path) -> None:
    """kill -9 of the master between a write and its commit loses the whole batch: neither
    the run row nor its log entry, while earlier commits survive."""
    script = textwrap.dedent(
        """
        import os, sys
        from pathlib import Path
        from nerved.states import Transition
        from nerved.store import Store

        store = Store(Path(sys.argv[1]))
        store.create_run("kept", "wf", Transition.START, {"n": 1})
        store.commit()
        store.create_run("lost", "wf", Transition.START, {"n": 2})
        store.append_log("test", "lost", "lost", None)
        os._exit(0)
        """
    )
    subprocess.run([sys.executable, "-c", script, str(db_path)], check=True, cwd=REPO)

    store = Store(db_path)
    assert [r.run_id for r in store.list_runs()] == ["kept"]
    assert [(e.type, e.ref_id) for e in store.query_logs()] == [("started", "kept")]
    store.close()


# -- create_run --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("transition", "status"),
    [
        (Transition.START, RunStatus.STARTED),
        (Transition.ENQUEUE, RunStatus.QUEUED),
    ],
    ids=lambda v: v.name if isinstance(v, Transition) else str(v),
)
def test_create_run_logs_the_trigger_payload(
    store: Store, peer: sqlite3.Connection, transition: Transition, status: RunStatus
) -> None:
    payload = {"path": "/var", "n": [1, 2.5, None], "ü": "ß"}
    record = store.create_run("r1", "wf", transition, payload, retry_of="r0", ts=1_000)
    store.commit()

    assert record == store.get_run("r1")
    assert record.status is status
    assert (record.created_at, record.updated_at) == (1_000, 1_000)
    assert (record.steps, record.attempts, record.error) == (0, 0, None)
    assert record.trigger_payload == payload
    assert record.retry_of == "r0"
    assert record.workflow == "wf"

    [entry] = history(store, "r1")
    assert (entry.source, entry.type, entry.ref_id) == ("workflow", status.value, "r1")
    assert entry.payload == payload
    assert entry.ts == 1_000
    assert table_rows(peer, "workflow_runs") == 1
    assert table_rows(peer, "logs") == 1


def test_create_run_reject_logs_the_reason_and_keeps_the_payload(store: Store) -> None:
    """A dropped trigger is acknowledged too, so its payload must be stored (SPEC section 5),
    while the log entry says why it was dropped (SPEC section 6)."""
    record = store.create_run(
        "r1", "wf", Transition.REJECT, {"a": 1}, reason="every slot busy (overflow: drop)"
    )
    store.commit()
    run = store.get_run("r1")
    assert run == record
    assert run is not None
    assert run.status is RunStatus.DROPPED
    assert run.trigger_payload == {"a": 1}
    assert run.error == "every slot busy (overflow: drop)"
    [entry] = history(store, "r1")
    assert entry.type == "dropped"
    assert entry.payload == "every slot busy (overflow: drop)"
    assert store.active_runs() == []


def test_create_run_without_payload(store: Store) -> None:
    store.create_run("r1", "wf", Transition.START, None)
    store.commit()
    run = store.get_run("r1")
    assert run is not None and run.trigger_payload is None
    assert history(store, "r1")[0].payload is None


def test_create_run_seq_follows_creation_order(store: Store) -> None:
    seqs = [store.create_run(f"r{i}", "wf", Transition.ENQUEUE, None).seq for i in range(3)]
    store.commit()
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 3
    assert [r.seq for r in reversed(store.list_runs())] == seqs


@pytest.mark.parametrize("transition", MOVING, ids=lambda t: t.name)
def test_create_run_refuses_non_creating_transitions(store: Store, transition: Transition) -> None:
    with pytest.raises(ValueError):
        store.create_run("r1", "wf", transition, None)
    assert not store.dirty
    assert store.get_run("r1") is None


@pytest.mark.parametrize("transition", CREATING, ids=lambda t: t.name)
def test_transition_run_refuses_creating_transitions(store: Store, transition: Transition) -> None:
    make_run(store, "r1", RunStatus.QUEUED)
    store.commit()
    with pytest.raises(ValueError):
        store.transition_run("r1", transition)
    assert not store.dirty
    assert len(history(store, "r1")) == 1


@pytest.mark.parametrize("payload", [float("nan"), object()], ids=["nan", "object"])
def test_create_run_with_unencodable_payload_writes_nothing(store: Store, payload: Any) -> None:
    with pytest.raises((ValueError, TypeError)):
        store.create_run("r1", "wf", Transition.START, {"x": payload})
    store.commit()
    assert store.get_run("r1") is None
    assert store.last_log_id() == 0


# -- transition_run ----------------------------------------------------------------------

LEGAL = [(t, s) for t in MOVING for s in sorted(t.sources)]
ILLEGAL = [(t, s) for t in MOVING for s in RunStatus if s not in t.sources]


def pair_id(value: Any) -> str:
    return value.name if isinstance(value, Transition) else f"from-{value}"


@pytest.mark.parametrize(("transition", "source"), LEGAL, ids=pair_id)
def test_every_legal_transition_works(
    store: Store, transition: Transition, source: RunStatus
) -> None:
    make_run(store, "r1", source)
    store.commit()
    before = history(store, "r1")
    before_run = store.get_run("r1")
    assert before_run is not None

    assert store.transition_run("r1", transition, ts=5_000)
    store.commit()

    run = store.get_run("r1")
    assert run is not None
    assert run.status is transition.target
    assert run.updated_at == 5_000
    assert run.created_at == before_run.created_at
    after = history(store, "r1")
    assert after[:-1] == before
    assert (after[-1].type, after[-1].ts) == (transition.target.value, 5_000)


@pytest.mark.parametrize(("transition", "source"), ILLEGAL, ids=pair_id)
def test_illegal_transition_is_refused_and_writes_nothing(
    store: Store, peer: sqlite3.Connection, transition: Transition, source: RunStatus
) -> None:
    """The guard is what makes a lost race harmless: no status change, no log entry."""
    make_run(store, "r1", source)
    store.commit()
    before_run = store.get_run("r1")
    before_logs = table_rows(peer, "logs")

    assert store.transition_run("r1", transition, error="should not stick") is False
    assert store.get_run("r1") == before_run
    store.commit()
    assert store.get_run("r1") == before_run
    assert table_rows(peer, "logs") == before_logs


@pytest.mark.parametrize(
    ("status", "transition"),
    [
        (RunStatus.QUEUED, Transition.COMPLETE),
        (RunStatus.COMPLETED, Transition.DISPATCH),
        (RunStatus.COMPLETED, Transition.COMPLETE),
        (RunStatus.DROPPED, Transition.CRASH),
    ],
    ids=["complete-queued", "dispatch-completed", "second-complete", "crash-dropped"],
)
def test_named_lost_races(store: Store, status: RunStatus, transition: Transition) -> None:
    make_run(store, "r1", status)
    store.commit()
    n = len(history(store, "r1"))
    assert not store.transition_run("r1", transition)
    assert len(history(store, "r1")) == n


def test_transition_of_unknown_run_is_refused(store: Store) -> None:
    assert not store.transition_run("nope", Transition.COMPLETE)
    store.commit()
    assert store.last_log_id() == 0
    assert store.get_run("nope") is None


def test_error_is_stored_and_logged(store: Store) -> None:
    make_run(store, "r1", RunStatus.STARTED)
    assert store.transition_run("r1", Transition.FAIL, error="role 'a' raised KeyError")
    store.commit()
    run = store.get_run("r1")
    assert run is not None and run.error == "role 'a' raised KeyError"
    assert history(store, "r1")[-1].payload == "role 'a' raised KeyError"


def test_payload_is_logged_in_preference_to_error(store: Store) -> None:
    make_run(store, "r1", RunStatus.STARTED)
    assert store.transition_run("r1", Transition.CRASH, payload_json='{"exit":-9}', error="killed")
    store.commit()
    run = store.get_run("r1")
    assert run is not None and run.error == "killed"
    assert history(store, "r1")[-1].payload == {"exit": -9}


def test_dispatch_logs_the_trigger_payload_given(store: Store) -> None:
    """``started`` entries carry the trigger payload (SPEC section 6), dispatched or not."""
    store.create_run("r1", "wf", Transition.ENQUEUE, {"a": 1})
    assert store.transition_run("r1", Transition.DISPATCH, payload_json='{"a":1}')
    store.commit()
    assert [(e.type, e.payload) for e in history(store, "r1")] == [
        ("queued", {"a": 1}),
        ("started", {"a": 1}),
    ]


def test_transition_without_error_keeps_none(store: Store) -> None:
    make_run(store, "r1", RunStatus.STARTED)
    assert store.transition_run("r1", Transition.COMPLETE)
    store.commit()
    run = store.get_run("r1")
    assert run is not None and run.error is None
    assert history(store, "r1")[-1].payload is None


def test_updated_at_defaults_to_now(store: Store) -> None:
    store.create_run("r1", "wf", Transition.START, None, ts=1_000)
    before = now_ms()
    assert store.transition_run("r1", Transition.COMPLETE)
    run = store.get_run("r1")
    assert run is not None
    assert run.created_at == 1_000
    assert before <= run.updated_at <= now_ms()
    assert history(store, "r1")[-1].ts == run.updated_at


def test_unencodable_transition_error_writes_nothing(store: Store) -> None:
    make_run(store, "r1", RunStatus.STARTED)
    store.commit()
    with pytest.raises(wire.Invalid):
        store.transition_run("r1", Transition.FAIL, error="lone \ud800")
    store.commit()
    run = store.get_run("r1")
    assert run is not None and run.status is RunStatus.STARTED
    assert [e.type for e in history(store, "r1")] == ["started"]


# -- record_step and count_attempt -------------------------------------------------------


def test_record_step_appends_and_counts(store: Store) -> None:
    make_run(store, "r1", RunStatus.STARTED)
    assert store.record_step("r1", step("planner", {"q": "why"}, {"answer": 42}), ts=7_000)
    assert store.record_step("r1", step("doer", "go", ["done"]), ts=8_000)
    store.commit()

    run = store.get_run("r1")
    assert run is not None
    assert run.steps == 2
    assert run.updated_at == 8_000
    steps = [e for e in history(store, "r1") if e.type == "step_complete"]
    assert [(e.payload, e.ts, e.source, e.ref_id) for e in steps] == [
        (
            {"role": "planner", "prompt": {"q": "why"}, "event": {"answer": 42}},
            7_000,
            "workflow",
            "r1",
        ),
        ({"role": "doer", "prompt": "go", "event": ["done"]}, 8_000, "workflow", "r1"),
    ]


@pytest.mark.parametrize("status", sorted(set(RunStatus) - {RunStatus.STARTED}), ids=str)
def test_record_step_only_while_started(store: Store, status: RunStatus) -> None:
    make_run(store, "r1", status)
    store.commit()
    before = store.get_run("r1")
    n = store.last_log_id()
    assert store.record_step("r1", step("role", None, {"e": 1})) is False
    store.commit()
    assert store.get_run("r1") == before
    assert store.last_log_id() == n


def test_record_step_of_unknown_run(store: Store) -> None:
    assert store.record_step("nope", step("role", None, None)) is False
    store.commit()
    assert store.last_log_id() == 0


def test_count_attempt_increments_while_started(store: Store) -> None:
    make_run(store, "r1", RunStatus.STARTED)
    assert [store.count_attempt("r1") for _ in range(3)] == [1, 2, 3]
    store.commit()
    run = store.get_run("r1")
    assert run is not None and run.attempts == 3
    assert [e.type for e in history(store, "r1")] == ["started"]


@pytest.mark.parametrize("status", sorted(set(RunStatus) - {RunStatus.STARTED}), ids=str)
def test_count_attempt_is_zero_unless_started(store: Store, status: RunStatus) -> None:
    make_run(store, "r1", status)
    store.commit()
    assert store.count_attempt("r1") == 0
    store.commit()
    run = store.get_run("r1")
    assert run is not None and run.attempts == 0


def test_count_attempt_of_unknown_run(store: Store) -> None:
    assert store.count_attempt("nope") == 0


# -- query_logs --------------------------------------------------------------------------

LOG_ROWS: list[tuple[str, str, str | None, Any, int]] = [
    ("sense", "signal", "disk", {"used": 1}, 1_000),
    ("workflow", "started", "run-a", {}, 1_010),
    ("workflow", "log", "run-a", "hello", 1_020),
    ("sense", "error", "disk", "boom", 1_030),
    ("workflow", "started", "run-b", None, 1_040),
    ("workflow", "step_complete", "run-a", {"role": "x"}, 1_050),
    ("daemon", "reload", None, {"changed": []}, 1_050),
    ("sense", "signal", "run-a", 3, 1_060),
    ("workflow", "completed", "run-a", None, 1_070),
    ("workflow", "log", "run-b", "bye", 1_080),
]


@pytest.fixture
def logged(store: Store) -> Store:
    for row in LOG_ROWS:
        store.append_log(*row)
    store.commit()
    return store


def expected_ids(
    *,
    source: str | None = None,
    type: str | None = None,
    ref_id: str | None = None,
    since: int | None = None,
    after_id: int | None = None,
    before_id: int | None = None,
    limit: int | None = 100,
) -> list[int]:
    """The documented semantics over LOG_ROWS (ids are 1-based positions)."""
    ids = [
        i
        for i, (src, typ, ref, _, ts) in enumerate(LOG_ROWS, start=1)
        if (source is None or src == source)
        and (type is None or typ == type)
        and (ref_id is None or ref == ref_id)
        and (since is None or ts >= since)
        and (after_id is None or i > after_id)
        and (before_id is None or i < before_id)
    ]
    n = MAX_QUERY_LIMIT if limit is None else limit
    return ids[:n] if since is not None or after_id is not None else ids[-n:]


@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"source": "sense"},
        {"type": "log"},
        {"ref_id": "run-a"},
        {"source": "workflow", "ref_id": "run-a"},
        {"source": "workflow", "type": "started"},
        {"since": 1_050},
        {"since": 1_050, "source": "workflow"},
        {"after_id": 4},
        {"after_id": 4, "ref_id": "run-a"},
        {"after_id": 10},
        {"before_id": 6},
        {"before_id": 6, "source": "sense"},
        {"before_id": 1},
        {"after_id": 2, "before_id": 7},
        {"since": 1_020, "before_id": 9},
        {"source": "nobody"},
    ],
    ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()) or "all",
)
@pytest.mark.parametrize("limit", [None, 100, 3, 1])
def test_query_logs_filters(logged: Store, filters: dict[str, Any], limit: int | None) -> None:
    entries = logged.query_logs(**filters, limit=limit)
    assert [e.id for e in entries] == expected_ids(**filters, limit=limit)


def test_query_logs_returns_the_newest_oldest_first(logged: Store) -> None:
    """What ``nervectl logs`` shows by default: the tail, in reading order."""
    assert [e.id for e in logged.query_logs(limit=3)] == [8, 9, 10]


def test_query_logs_after_id_follows_from_the_oldest(logged: Store) -> None:
    """What ``--follow`` needs: no entry skipped when more than ``limit`` arrived."""
    assert [e.id for e in logged.query_logs(after_id=2, limit=3)] == [3, 4, 5]


def test_query_logs_since_is_inclusive(logged: Store) -> None:
    assert [e.ts for e in logged.query_logs(since=1_050)] == [1_050, 1_050, 1_060, 1_070, 1_080]


def test_query_logs_decodes_entries(logged: Store) -> None:
    first, *_ = logged.query_logs(limit=None)
    assert first == LogEntry(1, "sense", "signal", "disk", {"used": 1}, 1_000)
    assert first.to_wire() == {
        "id": 1,
        "source": "sense",
        "type": "signal",
        "refId": "disk",
        "payload": {"used": 1},
        "ts": 1_000,
    }
    assert logged.query_logs(type="reload")[0].ref_id is None


def test_append_log_returns_ids_and_stamps_time(store: Store) -> None:
    assert store.last_log_id() == 0
    first = store.append_log("test", "a", None, None)
    second = store.append_log("test", "b", None, [1])
    assert (first, second) == (1, 2)
    assert store.last_log_id() == 2
    entry = store.query_logs(type="b")[0]
    assert entry.ts > 1_600_000_000_000  # milliseconds since the epoch, not seconds
    assert entry.payload == [1]


@pytest.fixture
def big(store: Store) -> Store:
    """More entries than one query may return."""
    for i in range(MAX_QUERY_LIMIT + 5):
        store.append_log("test", "n", None, i, ts=1_000 + i)
    store.commit()
    return store


@pytest.mark.parametrize("limit", [None, MAX_QUERY_LIMIT, MAX_QUERY_LIMIT + 100])
def test_query_logs_limit_is_capped(big: Store, limit: int | None) -> None:
    entries = big.query_logs(limit=limit)
    assert len(entries) == MAX_QUERY_LIMIT
    assert entries[-1].payload == MAX_QUERY_LIMIT + 4  # the newest ...
    assert entries[0].payload == 5  # ... oldest first
    following = big.query_logs(after_id=0, limit=limit)
    assert len(following) == MAX_QUERY_LIMIT
    assert following[0].payload == 0


def test_query_logs_negative_limit_is_still_capped(big: Store) -> None:
    assert len(big.query_logs(limit=-1)) <= MAX_QUERY_LIMIT


KIB = 1024
MIB = 1024 * KIB
BUDGET = 4 * MIB  # wire.RESULT_BUDGET


def fill(store: Store, sizes: list[int], ref_id: str = "big") -> list[int]:
    """One entry per size: a string payload of that many bytes once encoded (its quotes)."""
    ids = [store.append_log("test", "big", ref_id, "x" * (size - 2)) for size in sizes]
    store.commit()
    return ids


def test_query_logs_pages_end_at_the_result_budget(store: Store) -> None:
    """Six entries of 900 KiB: four fit in one answer; paging back and forward gets all."""
    ids = fill(store, [900 * KIB] * 6)
    newest = store.query_logs()
    assert [e.id for e in newest] == ids[2:]
    assert sum(len(e.payload) + 2 for e in newest) <= BUDGET
    assert [e.id for e in store.query_logs(before_id=newest[0].id)] == ids[:2]
    assert store.query_logs(before_id=ids[0]) == []

    assert [e.id for e in store.query_logs(after_id=0)] == ids[:4]
    assert [e.id for e in store.query_logs(after_id=ids[3])] == ids[4:]
    assert store.query_logs(after_id=ids[-1]) == []
    assert [e.id for e in store.query_logs(since=0, limit=2)] == ids[:2]


def test_query_logs_always_answers_at_least_one_entry(store: Store) -> None:
    """Entries that fill the budget alone still come one per page: paging always advances."""
    ids = fill(store, [MIB, BUDGET, BUDGET, 10])
    assert [e.id for e in store.query_logs()] == ids[3:]
    assert [e.id for e in store.query_logs(before_id=ids[3])] == [ids[2]]
    assert [e.id for e in store.query_logs(before_id=ids[2])] == [ids[1]]
    assert [e.id for e in store.query_logs(after_id=0)] == [ids[0]]


def test_a_payload_larger_than_an_answer_comes_alone_unreadable(store: Store) -> None:
    """Only an older release could have kept one; it costs its entry, never the answer."""
    ids = fill(store, [10, BUDGET + 1, 10])
    assert [e.id for e in store.query_logs()] == ids[2:]
    [huge] = store.query_logs(before_id=ids[2])
    assert huge.id == ids[1]
    assert isinstance(huge.payload, Unreadable)
    assert huge.to_wire()["payload"] is None
    assert huge.to_wire()["unreadable"] == "4.0 MiB stored, more than an answer carries (4.0 MiB)"
    assert [e.id for e in store.query_logs(after_id=0)] == ids[:1]


def test_query_logs_many_small_entries_stop_at_the_limit(store: Store) -> None:
    ids = fill(store, [100] * 50)
    assert [e.id for e in store.query_logs(limit=20)] == ids[30:]
    assert [e.id for e in store.query_logs(before_id=ids[30], limit=20)] == ids[10:30]


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


def test_run_history_page_pages_on_with_more(store: Store) -> None:
    make_run(store, "r1", RunStatus.STARTED)
    for n in range(5):
        assert store.record_step("r1", step("role", {"n": n}, "x" * (1500 * KIB)))
    store.append_log("workflow", "log", "other", "not this run's")
    store.transition_run("r1", Transition.COMPLETE)
    store.commit()
    every = history(store, "r1")
    assert len(every) == 7  # started, 5 steps, completed

    pages = []
    after, more = 0, True
    while more:
        entries, more = store.run_history_page("r1", after)
        assert entries
        pages.append(entries)
        after = entries[-1].id
    assert [[e.type for e in page] for page in pages] == [
        ["started", "step_complete", "step_complete"],
        ["step_complete", "step_complete"],
        ["step_complete", "completed"],
    ]
    assert [e for page in pages for e in page] == every
    assert store.run_history_page("r1", after) == ([], False)
    assert store.run_history_page("nope") == ([], False)


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


def test_run_wire_form_cuts_a_huge_error(store: Store) -> None:
    make_run(store, "r1", RunStatus.STARTED)
    store.transition_run("r1", Transition.FAIL, error="e" * MIB)
    store.commit()
    run = store.get_run("r1")
    assert run is not None and run.error == "e" * MIB  # kept whole
    error = run.to_wire()["error"]
    assert len(error.encode()) <= 64 * KIB and error.endswith("[truncated: 1.0 MiB in all]")
    assert len(run.to_wire(error_limit=1000)["error"].encode()) <= 1000


# -- run reads ---------------------------------------------------------------------------


def test_get_run_unknown_is_none(store: Store) -> None:
    assert store.get_run("nope") is None


def test_run_record_wire_form_has_the_spec_fields(store: Store) -> None:
    record = store.create_run("r1", "wf", Transition.START, {"a": 1}, ts=1_000)
    wire = record.to_wire()
    spec_fields = {"runId", "workflow", "status", "createdAt", "updatedAt", "steps", "error"}
    assert spec_fields <= wire.keys()
    assert wire["status"] == "started"
    assert (wire["runId"], wire["createdAt"], wire["steps"]) == ("r1", 1_000, 0)


FIND_IDS = ["abc", "abcd1", "abcd2", "abce", "ab_x", "abcé", "b", "abd"]


@pytest.fixture
def findable(store: Store) -> Store:
    for run_id in FIND_IDS:
        store.create_run(run_id, "wf", Transition.ENQUEUE, None)
    store.commit()
    return store


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("abcd", ["abcd1", "abcd2"]),
        ("abc", ["abc", "abcd1", "abcd2", "abce", "abcé"]),
        ("abcd1", ["abcd1"]),
        ("abcé", ["abcé"]),
        ("ab_", ["ab_x"]),  # not LIKE: '_' is no wildcard
        ("ab%", []),
        ("abcf", []),
        ("c", []),
        ("", sorted(FIND_IDS)),
    ],
)
def test_find_runs_by_prefix(findable: Store, prefix: str, expected: list[str]) -> None:
    """Ids sharing only a shorter prefix must not match (``workflow.inspect`` takes a
    unique prefix and must not pick the wrong run)."""
    assert [r.run_id for r in findable.find_runs(prefix, limit=100)] == expected


def test_find_runs_default_limit_tells_ambiguity(findable: Store) -> None:
    """Two results are enough to know a prefix is ambiguous."""
    assert [r.run_id for r in findable.find_runs("abc")] == ["abc", "abcd1"]


@pytest.fixture
def many(store: Store) -> Store:
    """Runs of two workflows in every status, created in id order."""
    for i, status in enumerate(list(RunStatus) * 2):
        make_run(store, f"r{i:02d}", status, workflow="a" if i % 2 else "b")
    store.commit()
    return store


def ids(records: list[RunRecord]) -> list[str]:
    return [r.run_id for r in records]


def test_list_runs_newest_first(many: Store) -> None:
    assert ids(many.list_runs()) == [f"r{i:02d}" for i in reversed(range(12))]


def test_list_runs_by_status_and_workflow(many: Store) -> None:
    started = many.list_runs(statuses=[RunStatus.STARTED])
    assert {r.status for r in started} == {RunStatus.STARTED}
    assert ids(started) == ["r07", "r01"]

    final_a = many.list_runs(statuses=sorted(set(RunStatus) - ACTIVE), workflow="a")
    assert ids(final_a) == ["r11", "r09", "r05", "r03"]
    assert {r.workflow for r in final_a} == {"a"}

    assert ids(many.list_runs(workflow="b", limit=2)) == ["r10", "r08"]
    assert many.list_runs(workflow="nope") == []
    assert many.list_runs(statuses=[]) == []


def test_list_runs_limit(many: Store) -> None:
    assert ids(many.list_runs(limit=3)) == ["r11", "r10", "r09"]
    assert len(many.list_runs(limit=None)) == 12


def test_active_runs_in_creation_order(store: Store) -> None:
    """Recovery re-queues in original order: a queued run dispatched later keeps its place."""
    make_run(store, "q1", RunStatus.QUEUED)
    make_run(store, "s1", RunStatus.STARTED)
    make_run(store, "done", RunStatus.COMPLETED)
    make_run(store, "q2", RunStatus.QUEUED)
    make_run(store, "gone", RunStatus.DROPPED)
    make_run(store, "s2", RunStatus.STARTED)
    assert store.transition_run("q1", Transition.DISPATCH)
    store.commit()
    active = store.active_runs()
    assert ids(active) == ["q1", "s1", "q2", "s2"]
    assert [r.status for r in active] == ["started", "started", "queued", "started"]
    assert [r.seq for r in active] == sorted(r.seq for r in active)


def test_active_runs_count_each_runs_history_in_bytes(store: Store) -> None:
    """What a resume would read: the stored trigger payload and step records, UTF-8 bytes."""
    store.create_run("r1", "wf", Transition.START, {"é": 1})  # {"é":1}: 8 bytes
    record = step("role", None, {"type": "x"})
    store.record_step("r1", record)
    store.append_log("workflow", "log", "r1", "log lines are not resumed")
    store.create_run("r2", "wf", Transition.ENQUEUE, None)
    store.commit()
    assert [(r.run_id, r.history) for r in store.active_runs()] == [
        ("r1", 8 + len(record)),
        ("r2", 0),
    ]
    run = store.get_run("r1")
    assert run is not None and run.history == 0  # counted by active_runs only


def test_run_history_is_only_this_runs_workflow_entries(store: Store) -> None:
    make_run(store, "r1", RunStatus.STARTED)
    make_run(store, "r10", RunStatus.STARTED)
    store.append_log("workflow", "log", "r1", "line 1")
    store.append_log("sense", "signal", "r1", "same ref_id, other source")
    store.record_step("r1", step("role", None, "ev"))
    store.append_log("workflow", "log", "r10", "other run")
    store.transition_run("r1", Transition.COMPLETE)
    store.commit()

    entries = history(store, "r1")
    assert [(e.type, e.payload) for e in entries] == [
        ("started", {"run": "r1"}),
        ("log", "line 1"),
        ("step_complete", {"role": "role", "prompt": None, "event": "ev"}),
        ("completed", None),
    ]
    assert [e.id for e in entries] == sorted(e.id for e in entries)
    assert {(e.source, e.ref_id) for e in entries} == {("workflow", "r1")}
    assert history(store, "nope") == []


def test_count_runs(many: Store) -> None:
    # Runs i and i + 6 share a status and a parity, hence a workflow.
    assert many.count_runs() == {
        ("b", RunStatus.QUEUED): 2,
        ("a", RunStatus.STARTED): 2,
        ("b", RunStatus.COMPLETED): 2,
        ("a", RunStatus.FAILED): 2,
        ("b", RunStatus.CRASHED): 2,
        ("a", RunStatus.DROPPED): 2,
    }


def test_meta_get_and_set(store: Store, peer: sqlite3.Connection) -> None:
    assert store.get_meta("boot") is None
    store.set_meta("boot", "1")
    store.set_meta("boot", "2")
    store.set_meta("other", "x")
    assert store.get_meta("boot") == "2"
    store.commit()
    meta = dict(peer.execute("SELECT key, value FROM meta WHERE key != 'last_start'"))
    assert meta == {"boot": "2", "other": "x"}


# -- derivation: workflow_runs is derived data -------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_workflow_runs_is_derivable_from_logs(db_path: Path, seed: int) -> None:
    """After any sequence of operations, including batches whose COMMIT fails, rebuilding
    each run's status and steps from ``logs`` alone gives exactly ``workflow_runs``
    (RFC-002 section 6.2), and both match a model of what should have happened. The
    derivation is checked after every commit, from another connection, not only at the end.
    """
    rng = random.Random(seed)
    store = Store(db_path)
    install_poison(store)
    reader = plain_connect(db_path)
    seen: Counter[str] = Counter()  # what the sequence exercised, so it cannot go vacuous

    # The model: (status, steps, attempts) per run, and its state at the last commit.
    model: dict[str, tuple[RunStatus, int, int]] = {}
    committed: dict[str, tuple[RunStatus, int, int]] = {}
    created = 0
    for _ in range(400):
        run_ids = [*model, "unknown"]
        op = rng.random()
        if op < 0.2 or not model:
            run_id = f"run-{created}"
            created += 1
            transition = rng.choice(CREATING)
            reason = "full" if transition is Transition.REJECT else None
            store.create_run(run_id, rng.choice("ab"), transition, {"i": created}, reason=reason)
            model[run_id] = (transition.target, 0, 0)
        elif op < 0.5:
            run_id = rng.choice(run_ids)
            transition = rng.choice(MOVING)
            status, steps, attempts = model.get(run_id, (None, 0, 0))
            legal = status in transition.sources
            error = rng.choice([None, "why"])
            assert store.transition_run(run_id, transition, error=error) is legal
            seen["moved" if legal else "refused"] += 1
            if legal:
                model[run_id] = (transition.target, steps, attempts)
        elif op < 0.7:
            run_id = rng.choice(run_ids)
            status, steps, attempts = model.get(run_id, (None, 0, 0))
            legal = status is RunStatus.STARTED
            record = step(rng.choice("xyz"), None, {"n": steps})
            assert store.record_step(run_id, record) is legal
            seen["step" if legal else "step refused"] += 1
            if legal:
                model[run_id] = (RunStatus.STARTED, steps + 1, attempts)
        elif op < 0.75:
            run_id = rng.choice(run_ids)
            status, steps, attempts = model.get(run_id, (None, 0, 0))
            expected = attempts + 1 if status is RunStatus.STARTED else 0
            assert store.count_attempt(run_id) == expected
            if expected:
                model[run_id] = (RunStatus.STARTED, steps, expected)
        elif op < 0.85:
            # Entries that must not move a run: ctx.log lines, other sources on the same id.
            if rng.random() < 0.5:
                store.append_log("workflow", "log", rng.choice(list(model)), "a ctx.log line")
            else:
                store.append_log("sense", "completed", rng.choice(run_ids), "same ref_id")
        elif op < 0.97:
            store.commit()
            committed = dict(model)
            seen["commit"] += 1
            assert derive_runs_from_logs(reader) == materialised_runs(reader)
        else:
            store.append_log("test", "poison", None, None)
            with pytest.raises(StoreError):
                store.commit()
            model = dict(committed)  # rolled-back run ids are not reused: created goes on
            seen["rollback"] += 1
            assert derive_runs_from_logs(reader) == materialised_runs(reader)
    store.commit()
    store.close()
    reader.close()
    assert min(seen[k] for k in ("moved", "refused", "step", "commit", "rollback")) > 0, seen

    conn = plain_connect(db_path)
    derived = derive_runs_from_logs(conn)
    materialised = materialised_runs(conn)
    attempts = dict(conn.execute("SELECT run_id, attempts FROM workflow_runs"))
    conn.close()
    assert derived == materialised
    assert materialised == {run_id: (s, n) for run_id, (s, n, _) in model.items()}
    assert attempts == {run_id: a for run_id, (_, _, a) in model.items()}
    assert len(model) > 10


def test_derivation_helper_sees_a_divergence(db_path: Path) -> None:
    """The property above is only worth something if the helper can fail: a row changed
    behind the logs' back must show up as a difference."""
    store = Store(db_path)
    make_run(store, "r1", RunStatus.STARTED)
    store.record_step("r1", step("role", None, None))
    store.commit()
    store.close()
    conn = plain_connect(db_path)
    assert derive_runs_from_logs(conn) == materialised_runs(conn)
    conn.execute("UPDATE workflow_runs SET status = 'completed'")
    assert derive_runs_from_logs(conn) != materialised_runs(conn)
    conn.execute("UPDATE workflow_runs SET status = 'started', steps = 2")
    assert derive_runs_from_logs(conn) != materialised_runs(conn)
    conn.close()
