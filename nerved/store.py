"""logs.db: the one module that speaks SQL.

Everything durable in nerve goes through here, so that another backend can replace SQLite
by implementing the same narrow interface, ``Store``. Only the master opens logs.db: workers
are forked from it, and SQLite state must never cross a fork (workers that read the logs
ask the master over their channel).

Writes are *batched*: each write joins the transaction that is open for the current turn
of the master loop, and the loop calls :meth:`Store.commit` once at the end of the turn.
Whoever needs to act only once a write is durable (acknowledging a trigger, telling a
worker to go on) registers that action with :meth:`Store.after_commit`. That gives group
commit for free: many workers' events share one fsync, and no acknowledgement ever runs
ahead of its data.

Run statuses change only through :class:`~nerved.states.Transition`s, applied as guarded
``UPDATE ... WHERE status IN (...)`` statements together with the log entry that records
them, in the same transaction (RFC-002 §6.2).

**The write lock.** The master holds logs.db's write lock (an open ``BEGIN IMMEDIATE``) from
one commit to the next, so other processes may read the file (WAL) but not write it while
nerved runs. Should one take the lock all the same (in the instant between a commit and the
next ``BEGIN``), :meth:`Store.acquire` says so without waiting, and the master's loop runs
only what does not write until it has the lock back (nerved.master.loop, "the gate"): contention
costs a pause, never a crash or a blocked loop. At start the store waits for the lock.

**Failures.** Every SQLite error becomes a one-line :class:`StoreError` naming the file. At
each commit the store also checks that ``logs.db`` (and any file it was told to watch, such
as the state directory's lock) is still the file it opened: a state directory deleted under
a running daemon must stop it, not have it acknowledge work into an unlinked file.

**Its files.** logs.db and its ``-wal``/``-shm``/``-journal`` are opened first by nerve
itself (never through a symbolic link, never a file with a second hard link, created 0600,
group and other permissions taken off: nerved.master.modes.prepare_db), and the file SQLite then
opens by path is compared with that descriptor: a link in the state directory cannot aim
nerved's writes at another file of the host.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

from nerved import wire
from nerved.master import modes
from nerved.states import ACTIVE, RunStatus, Transition

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMA_VERSION: Final = 1
AUTOCHECKPOINT_PAGES: Final = 8000  # ~32 MB of WAL before SQLite checkpoints on its own
MAX_QUERY_LIMIT: Final = wire.MAX_QUERY_LIMIT

_MIGRATIONS: Final[tuple[str, ...]] = (
    # 1: the RFC-002 §6 tables, with what the engine needs to resume and explain a run.
    # Every index costs pages in each commit's fsync, so there are only the ones the hot
    # paths need: a run's history (ref_id), filters by source/type, the active runs.
    # Time (``since``) is found through ids, which grow with time; the rest of
    # workflow_runs is scanned newest first, which retention keeps short.
    """
    CREATE TABLE logs (
        id      INTEGER PRIMARY KEY,
        source  TEXT    NOT NULL,
        type    TEXT    NOT NULL,
        ref_id  TEXT,
        payload TEXT,
        ts      INTEGER NOT NULL
    );
    CREATE INDEX logs_ref_id      ON logs (ref_id, id);
    CREATE INDEX logs_source_type ON logs (source, type, id);

    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE workflow_runs (
        seq             INTEGER PRIMARY KEY,
        run_id          TEXT    NOT NULL UNIQUE,
        workflow        TEXT    NOT NULL,
        status          TEXT    NOT NULL CHECK (status IN
                          ('queued', 'started', 'completed', 'failed', 'crashed', 'dropped')),
        created_at      INTEGER NOT NULL,
        updated_at      INTEGER NOT NULL,
        trigger_payload TEXT,
        steps           INTEGER NOT NULL DEFAULT 0,
        error           TEXT,
        attempts        INTEGER NOT NULL DEFAULT 0,
        retry_of        TEXT
    );
    CREATE INDEX workflow_runs_active ON workflow_runs (seq)
        WHERE status IN ('queued', 'started');
    """,
)

_RUN_COLUMNS: Final = (
    "run_id, workflow, status, created_at, updated_at, trigger_payload, steps, error, "
    "attempts, retry_of, seq"
)
_LISTED_COLUMNS: Final = _RUN_COLUMNS.replace("trigger_payload", "NULL")


class StoreError(Exception):
    """logs.db cannot be opened, read or written: one line, naming the file and why."""


class StoreBusy(StoreError):
    """Another process holds logs.db's write lock (SQLITE_BUSY): try again later."""


START_RETRY: Final = 0.1  # seconds between two tries for the write lock at start
BUSY_TIMEOUT_MS: Final = 10  # SQLite's own wait for a lock: short, never a stall


def _is_busy(exc: sqlite3.Error) -> bool:
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in (
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
    )


def _store_error(path: Path, exc: sqlite3.Error) -> StoreError:
    kind = StoreBusy if _is_busy(exc) else StoreError
    return kind(f"{path}: {exc}")


class _Cursor:
    """A cursor whose errors, even half-way through its rows, are StoreErrors."""

    __slots__ = ("_cursor", "_path")

    def __init__(self, cursor: sqlite3.Cursor, path: Path) -> None:
        self._cursor = cursor
        self._path = path

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    def fetchone(self) -> Any:
        try:
            return self._cursor.fetchone()
        except sqlite3.Error as exc:
            raise _store_error(self._path, exc) from exc

    def fetchall(self) -> list[Any]:
        try:
            return self._cursor.fetchall()
        except sqlite3.Error as exc:
            raise _store_error(self._path, exc) from exc

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._cursor.close()

    def __iter__(self) -> Iterator[Any]:
        while True:
            try:
                row = next(self._cursor)
            except StopIteration:
                return
            except sqlite3.Error as exc:
                raise _store_error(self._path, exc) from exc
            yield row


class _Connection:
    """The one sqlite3 connection, every error of which is a StoreError (busy: StoreBusy)."""

    __slots__ = ("_conn", "path")

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Cursor:
        try:
            return _Cursor(self._conn.execute(sql, params), self.path)
        except sqlite3.Error as exc:
            raise _store_error(self.path, exc) from exc

    def executescript(self, script: str) -> None:
        try:
            self._conn.executescript(script)
        except sqlite3.Error as exc:
            raise _store_error(self.path, exc) from exc

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()


def _gone(path: Path, why: str) -> StoreError:
    return StoreError(
        f"{path} is gone from under nerved ({why}): was the state directory deleted?"
        " Nothing more is written to the file nerved had open"
    )


def _file_id(path: Path | int) -> tuple[int, int]:
    st = os.fstat(path) if isinstance(path, int) else os.stat(path)
    return st.st_dev, st.st_ino


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def dumps(value: Any) -> str:
    """The one JSON encoding used for stored payloads (:func:`nerved.wire.dumps`).

    Raises :class:`nerved.wire.Invalid` (a ``ValueError``) for what JSON cannot carry,
    before anything is written.
    """
    return wire.dumps(value)


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A stored payload that does not decode: written by an older release, or damaged on disk.

    It stands in for the value, so that one bad row costs the entry or the run it belongs
    to, never the query or the daemon that reads it.
    """

    reason: str
    size: int  # characters of the stored text


def _loads(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return wire.loads_stored(text)
    except wire.Invalid as exc:
        return Unreadable(exc.reason, len(text))


@dataclass(frozen=True, slots=True)
class LogEntry:
    id: int
    source: str
    type: str
    ref_id: str | None
    payload: Any
    ts: int

    def to_wire(self) -> dict[str, Any]:
        """``{id, source, type, refId, payload, ts}``; an :class:`Unreadable` payload is sent
        as ``payload: null`` with ``unreadable``: why (the entry is still listed)."""
        wire = {
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "refId": self.ref_id,
            "payload": self.payload,
            "ts": self.ts,
        }
        if isinstance(self.payload, Unreadable):
            wire["payload"] = None
            wire["unreadable"] = self.payload.reason
        return wire


@dataclass(frozen=True, slots=True)
class RunRecord:
    run_id: str
    workflow: str
    status: RunStatus
    created_at: int
    updated_at: int
    trigger_payload: Any
    steps: int
    error: str | None
    attempts: int
    retry_of: str | None
    seq: int
    history: int = 0
    """Bytes of its stored trigger payload and step records, what a resume reads and sends;
    counted by :meth:`Store.active_runs` only (0 from the other reads)."""

    def to_wire(self, error_limit: int = wire.MAX_LOG_LINE) -> dict[str, Any]:
        """The run's fields (no trigger payload); ``error`` is cut to ``error_limit`` bytes
        with a marker, so that a run's answer stays small whatever a role raised."""
        return {
            "runId": self.run_id,
            "workflow": self.workflow,
            "status": str(self.status),
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
            "steps": self.steps,
            "error": None if self.error is None else wire.text(self.error, error_limit),
            "attempts": self.attempts,
            "retryOf": self.retry_of,
        }


def _run_from_row(row: Sequence[Any], history: int = 0) -> RunRecord:
    return RunRecord(
        run_id=row[0],
        workflow=row[1],
        status=RunStatus(row[2]),
        created_at=row[3],
        updated_at=row[4],
        trigger_payload=_loads(row[5]),
        steps=row[6],
        error=row[7],
        attempts=row[8],
        retry_of=row[9],
        seq=row[10],
        history=history,
    )


def _entry_from_row(row: Sequence[Any]) -> LogEntry:
    return LogEntry(row[0], row[1], row[2], row[3], _loads(row[4]), row[5])


def _connect(path: Path, synchronous: str = "FULL") -> _Connection:
    """The connect hook: every connection nerve opens gets its pragmas here and nowhere else."""
    try:
        raw = sqlite3.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        raise _store_error(path, exc) from exc
    conn = _Connection(raw, path)
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode != "wal":
        raise StoreError(f"{path}: cannot switch to WAL mode (got {mode!r})")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("PRAGMA journal_size_limit = 67108864")
    # Checkpoints copy the WAL into the database and fsync it: a stall of milliseconds. The
    # master runs them when it is idle (Store.checkpoint); this is only the backstop.
    conn.execute(f"PRAGMA wal_autocheckpoint = {AUTOCHECKPOINT_PAGES}")
    # Never wait long for a lock: the master's loop must not stall (see "The write lock").
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA temp_store = MEMORY")
    return conn


def _connect_reader(path: Path) -> _Connection:
    """A read-only connection (``mode=ro``, ``query_only``) for the queries of clients."""
    uri = f"{path.absolute().as_uri()}?mode=ro"
    try:
        raw = sqlite3.connect(uri, uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise _store_error(path, exc) from exc
    conn = _Connection(raw, path)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA query_only = ON")
    conn.execute("PRAGMA temp_store = MEMORY")
    return conn


def _cap(limit: int | None) -> int:
    """At most MAX_QUERY_LIMIT rows; SQLite would read a negative LIMIT as no limit at all."""
    if limit is None or limit < 0:
        return MAX_QUERY_LIMIT
    return min(limit, MAX_QUERY_LIMIT)


def _first_id_since(conn: _Connection, ts: int) -> int:
    """The first entry at or after ``ts``, by bisecting ids (they grow with time).

    Entries are appended with the master's clock, so ts is non-decreasing in id unless the
    wall clock was stepped back; then the boundary is approximate, never an error.
    """
    lo, hi = conn.execute("SELECT COALESCE(MIN(id), 0), COALESCE(MAX(id), 0) FROM logs").fetchone()
    hi += 1
    while lo < hi:
        mid = (lo + hi) // 2
        row = conn.execute(
            "SELECT id, ts FROM logs WHERE id >= ? ORDER BY id LIMIT 1", (mid,)
        ).fetchone()
        if row is None or row[1] >= ts:
            hi = mid
        else:
            lo = row[0] + 1
    return int(lo)


def _query_logs(
    conn: _Connection,
    *,
    source: str | None = None,
    type: str | None = None,
    ref_id: str | None = None,
    since: int | None = None,
    after_id: int | None = None,
    before_id: int | None = None,
    limit: int | None = 100,
) -> tuple[list[LogEntry], bool]:
    """One page of entries, oldest first, and whether more matched past it.

    With ``after_id`` or ``since`` the page starts at the oldest match (paging forward, for
    following); otherwise it ends at the newest, or just before ``before_id`` (paging back).
    See :func:`_read_page` for where a page ends.
    """
    where: list[str] = []
    args: list[Any] = []
    for column, value in (("source", source), ("type", type), ("ref_id", ref_id)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if since is not None:
        where.append("id >= ?")
        args.append(_first_id_since(conn, since))
    if after_id is not None:
        where.append("id > ?")
        args.append(after_id)
    if before_id is not None:
        where.append("id < ?")
        args.append(before_id)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    n = _cap(limit)
    forward = after_id is not None or since is not None
    with contextlib.closing(
        conn.execute(
            f"SELECT id, source, type, ref_id, payload, ts FROM logs {clause}"
            f" ORDER BY id {'ASC' if forward else 'DESC'} LIMIT ?",
            (*args, n + 1),
        )
    ) as rows:
        entries, more = _read_page(rows, n)
    if not forward:
        entries.reverse()
    return entries, more


def _read_page(rows: Iterable[Sequence[Any]], limit: int) -> tuple[list[LogEntry], bool]:
    """Up to ``limit`` entries whose payloads fit :data:`wire.RESULT_BUDGET` bytes together,
    and whether a row was left over (a row past ``limit``, or one that did not fit).

    Rows are read one at a time and no further than needed, and decoded only when taken.
    The first entry is always taken, so that a client paging on always gets further; a
    payload larger than the whole budget (larger than anything nerve accepts: an older
    release may have stored one) comes alone, as :class:`Unreadable`, so that no answer
    outgrows the budget.
    """
    entries: list[LogEntry] = []
    room = wire.RESULT_BUDGET
    for row in rows:
        if len(entries) == limit:
            return entries, True
        text = row[4]
        size = 0 if text is None else len(text) if text.isascii() else len(text.encode())
        if entries and size > room:
            return entries, True
        room -= size
        if size > wire.RESULT_BUDGET:
            budget = wire.size_text(wire.RESULT_BUDGET)
            payload: Any = Unreadable(
                f"{wire.size_text(size)} stored, more than an answer carries ({budget})",
                len(text),
            )
        else:
            payload = _loads(text)
        entries.append(LogEntry(row[0], row[1], row[2], row[3], payload, row[5]))
    return entries, False


CommitCallback = Callable[[], None]
AbortCallback = Callable[[BaseException], None]


class Reads:
    """The queries, over one connection: the store's own, or :attr:`Store.committed`."""

    _conn: _Connection
    path: Path

    def __init__(self, conn: _Connection, path: Path) -> None:
        self._conn = conn
        self.path = path

    def close(self) -> None:
        self._conn.close()

    def get_meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def query_logs(
        self,
        *,
        source: str | None = None,
        type: str | None = None,
        ref_id: str | None = None,
        since: int | None = None,
        after_id: int | None = None,
        before_id: int | None = None,
        limit: int | None = 100,
    ) -> list[LogEntry]:
        """Up to ``limit`` entries (at most :data:`MAX_QUERY_LIMIT`), oldest first: after
        ``after_id`` or from ``since`` when given (paging forward), else the newest (before
        ``before_id``: paging back). Never more payload than :data:`wire.RESULT_BUDGET` (at
        least one entry): fewer than ``limit`` does not mean there are no more.
        """
        entries, _ = _query_logs(
            self._conn,
            source=source,
            type=type,
            ref_id=ref_id,
            since=since,
            after_id=after_id,
            before_id=before_id,
            limit=limit,
        )
        return entries

    def last_log_id(self) -> int:
        row = self._conn.execute("SELECT MAX(id) FROM logs").fetchone()
        return int(row[0] or 0)

    def get_run(self, run_id: str) -> RunRecord | None:
        row = self._conn.execute(
            f"SELECT {_RUN_COLUMNS} FROM workflow_runs WHERE run_id = ?", (run_id,)
        ).fetchone()
        return None if row is None else _run_from_row(row)

    def find_runs(self, prefix: str, limit: int = 2) -> list[RunRecord]:
        """Runs whose id starts with ``prefix`` (an index range scan, not LIKE)."""
        rows = self._conn.execute(
            f"SELECT {_RUN_COLUMNS} FROM workflow_runs WHERE run_id >= ? AND run_id < ?"
            " ORDER BY run_id LIMIT ?",
            (prefix, prefix + "\U0010ffff", limit),
        ).fetchall()
        return [_run_from_row(r) for r in rows]

    def list_runs(
        self,
        *,
        statuses: Iterable[RunStatus] | None = None,
        workflow: str | None = None,
        limit: int | None = 100,
    ) -> list[RunRecord]:
        """Newest first, as an operator reads a list; ``trigger_payload`` is not read (None).

        A list never shows payloads: reading up to 10,000 of them (a MiB each) only to drop
        them would stall the loop.
        """
        where: list[str] = []
        args: list[Any] = []
        if statuses is not None:
            wanted = sorted(set(statuses))
            where.append(f"status IN ({','.join('?' * len(wanted))})")
            args.extend(wanted)
        if workflow is not None:
            where.append("workflow = ?")
            args.append(workflow)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        n = _cap(limit)
        rows = self._conn.execute(
            f"SELECT {_LISTED_COLUMNS} FROM workflow_runs {clause} ORDER BY seq DESC LIMIT ?",
            (*args, n),
        ).fetchall()
        return [_run_from_row(r) for r in rows]

    def run_steps_page(self, run_id: str, after_id: int = 0) -> tuple[list[LogEntry], bool]:
        """One run's ``step_complete`` entries after ``after_id``, oldest first, a page of
        them (:func:`_read_page`), and whether more follow: what resuming it reads (not its
        log lines, however many)."""
        return _query_logs(
            self._conn,
            source="workflow",
            type="step_complete",
            ref_id=run_id,
            after_id=after_id,
            limit=None,
        )

    def run_history_page(self, run_id: str, after_id: int = 0) -> tuple[list[LogEntry], bool]:
        """One run's entries after ``after_id``, oldest first, as many as one answer carries
        (:func:`_read_page`), and whether more follow: ``workflow.inspect`` pages on them."""
        return _query_logs(
            self._conn, source="workflow", ref_id=run_id, after_id=after_id, limit=None
        )

    def count_runs(self) -> dict[tuple[str, RunStatus], int]:
        rows = self._conn.execute(
            "SELECT workflow, status, COUNT(*) FROM workflow_runs GROUP BY workflow, status"
        ).fetchall()
        return {(r[0], RunStatus(r[1])): int(r[2]) for r in rows}


class Store(Reads):
    """The master's connection to logs.db: batched writes, and the reads the engine makes.

    Its queries see the batch of the current turn. Queries for clients go through
    :attr:`committed` instead, a second, read-only connection that sees what is durable and
    nothing else: a client never reads what a crash could take back, and a query that meets
    a damaged page fails alone, where the same error inside the write transaction would
    poison the whole batch (SQLite refuses every later statement of it).
    """

    def __init__(
        self,
        path: Path,
        *,
        synchronous: str = "FULL",
        on_wait: Callable[[str], None] | None = None,
    ) -> None:
        """Open (or create) logs.db, migrate it, prove it writable, and take its write lock.

        While another process holds the write lock, waits (``on_wait`` hears why, once).
        Raises StoreError when the file cannot be opened, read, migrated or written.
        """
        self.path = path
        self._in_tx = False  # we hold the write lock: a BEGIN IMMEDIATE is open
        self._wrote = False  # and something was written in it since the last commit
        self._on_commit: list[CommitCallback] = []
        self._on_abort: list[AbortCallback] = []
        self._watched: list[tuple[Path, int, tuple[int, int]]] = []  # path, open fd, inode
        self.locked_since: float | None = None  # monotonic: another process took the lock
        self.commits = 0
        self.last_commit = 0.0  # time.monotonic() of the last commit
        self._since_checkpoint = 0
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{path.parent}: {exc.strerror or exc}") from exc
        # Our own descriptor of logs.db, opened first (never through a link, created 0600:
        # nerved.master.modes.prepare_db), then compared with the file SQLite opened by its path,
        # and kept to see it unlinked at each commit (fstat, no path lookup). It is closed
        # only after SQLite's connections: closing any descriptor of a file drops every
        # POSIX lock the process holds on it, SQLite's included.
        try:
            self._db_fd = modes.prepare_db(path)
        except modes.UnsafeStateFile as exc:
            raise StoreError(str(exc)) from exc  # names the file: logs.db or a companion
        except OSError as exc:
            raise StoreError(f"{exc.filename or path}: {exc.strerror or exc}") from exc
        try:
            self._conn = self._at_start(lambda: _connect(path, synchronous), on_wait)
        except BaseException:
            os.close(self._db_fd)
            raise
        try:
            identity = _file_id(self._db_fd)
            st = os.lstat(path)
            if (st.st_dev, st.st_ino) != identity:
                raise StoreError(f"{path} was replaced while nerved opened it")
            self._watched.append((path, self._db_fd, identity))
            self._at_start(self._migrate, on_wait)
            self._at_start(self._prove_writable, on_wait)
            self._at_start(self._acquire_or_raise, on_wait)
            self.committed = Reads(_connect_reader(path), path)
        except OSError as exc:
            self._close_files()
            raise StoreError(f"{path}: {exc.strerror or exc}") from exc
        except BaseException:
            self._close_files()
            raise
        if self.locked_since is not None:
            log.warning("%s: got the write lock", path)
            self.locked_since = None

    def _at_start(self, step: Callable[[], T], on_wait: Callable[[str], None] | None) -> T:
        """Run a start-up step, waiting as long as another process holds the write lock."""
        while True:
            try:
                return step()
            except StoreBusy:
                if self.locked_since is None:
                    self.locked_since = time.monotonic()
                    why = f"waiting for the write lock on {self.path}, held by another process"
                    log.warning("%s", why)
                    if on_wait is not None:
                        on_wait(why)
                time.sleep(START_RETRY)

    def _prove_writable(self) -> None:
        """Write, commit and fsync one row: a read-only file or a full disk shows here, before
        READY, not at the first trigger."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            self._conn.execute(
                "INSERT INTO meta (key, value) VALUES ('last_start', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(now_ms()),),
            )
            self._conn.execute("COMMIT")
        except StoreError:
            with contextlib.suppress(StoreError):
                self._conn.execute("ROLLBACK")
            raise

    def watch(self, path: Path, fd: int) -> None:
        """Check that ``path`` is still the file open as ``fd`` (see :meth:`check_files`)."""
        self._watched.append((path, fd, _file_id(fd)))

    # -- schema -------------------------------------------------------------------------

    def _migrate(self) -> None:
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}; this nerved knows up to "
                f"{SCHEMA_VERSION} (was it written by a newer release?)"
            )
        for number in range(version + 1, SCHEMA_VERSION + 1):
            script = _MIGRATIONS[number - 1]
            self._conn.executescript(
                f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;"
            )

    @property
    def schema_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    # -- the batch ----------------------------------------------------------------------

    def acquire(self) -> bool:
        """Hold the write lock; False, at once, while another process holds it.

        The master's loop asks this at the start of every turn (its gate): a turn that got
        True can write without ever meeting a busy database.
        """
        if self._in_tx:
            return True
        try:
            self._acquire_or_raise()
        except StoreBusy:
            if self.locked_since is None:
                self.locked_since = time.monotonic()
                log.warning(
                    "%s is locked by another process; nerved waits (only reads are served)",
                    self.path,
                )
            return False
        if self.locked_since is not None:
            log.warning(
                "%s: got the write lock back after %.1fs",
                self.path, time.monotonic() - self.locked_since,
            )  # fmt: skip
            self.locked_since = None
        return True

    def release(self) -> None:
        """Let go of the write lock, if nothing is written under it (else: commit first).

        The next write or :meth:`acquire` takes it again.
        """
        if self._wrote:
            raise RuntimeError("release() with an uncommitted batch")
        if self._in_tx:
            self._conn.execute("COMMIT")
            self._in_tx = False

    def _acquire_or_raise(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")
        self._in_tx = True

    def _begin(self) -> None:
        if not self._in_tx and not self.acquire():
            raise StoreBusy(f"{self.path}: locked by another process")
        self._wrote = True

    @property
    def dirty(self) -> bool:
        return self._wrote or bool(self._on_commit)

    def after_commit(
        self, on_commit: CommitCallback, on_abort: AbortCallback | None = None
    ) -> None:
        """Run ``on_commit`` once everything written so far is durable.

        If nothing is pending, the callback still waits for the end of the turn, so callers
        never have to care whether their own write was the one that opened the batch.
        """
        self._on_commit.append(on_commit)
        if on_abort is not None:
            self._on_abort.append(on_abort)

    def commit(self) -> None:
        """Make the batch durable, then run its callbacks, and take the write lock again.

        On failure (a full disk, an I/O error, logs.db gone from its path), roll back, abort
        the callbacks (nothing of the batch is acknowledged) and raise StoreError.
        """
        callbacks, aborts = self._on_commit, self._on_abort
        self._on_commit, self._on_abort = [], []
        if self._wrote:
            try:
                self._check_linked()
                self._conn.execute("COMMIT")
            except StoreError as exc:
                self._rollback()
                for abort in aborts:
                    abort(exc)
                raise StoreError(f"commit failed: {exc}") from exc
            self._in_tx = self._wrote = False
            self.commits += 1
            self._since_checkpoint += 1
            self.last_commit = time.monotonic()
            self.acquire()  # at once: the instant without the lock is all another writer gets
        for callback in callbacks:
            callback()

    def check_files(self) -> None:
        """Raise StoreError if logs.db (or a watched file) is no longer the file opened at
        its path: the daemon calls this every second."""
        for path, _fd, identity in self._watched:
            try:
                now = _file_id(path)
            except OSError as exc:
                now, why = None, exc.strerror or str(exc)
            else:
                why = "it is another file now"
            if now != identity:
                raise _gone(path, why)

    def _check_linked(self) -> None:
        """At every commit, cheaply (fstat): raise StoreError if a watched file was unlinked
        (deleted, or replaced by a rename), so that nothing is acknowledged into it."""
        for path, fd, _identity in self._watched:
            if os.fstat(fd).st_nlink == 0:
                raise _gone(path, "deleted")

    def abandon(self, exc: BaseException) -> None:
        """Roll the batch back and abort its callbacks: for work done in a batch of its own
        (:meth:`commit` first) whose failure must not stop the daemon (retention)."""
        aborts = self._on_abort
        self._on_commit, self._on_abort = [], []
        self._rollback()
        for abort in aborts:
            abort(exc)

    def _rollback(self) -> None:
        if self._in_tx:
            with contextlib.suppress(StoreError):
                self._conn.execute("ROLLBACK")
            self._in_tx = self._wrote = False

    def checkpoint(self) -> bool:
        """Copy the WAL into the database if there is anything new; False if there was not.

        PASSIVE: never waits for readers (an operator's sqlite3 shell), just does what it can.
        A checkpoint cannot run inside a transaction, so the (empty) one that holds the
        write lock ends first; the next turn takes the lock again.
        """
        if self._wrote or not self._since_checkpoint:
            return False
        self.release()
        self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        self._since_checkpoint = 0
        return True

    def close(self) -> None:
        """Close, dropping a batch nobody committed: nothing of it was acknowledged yet."""
        self._rollback()
        self._on_commit, self._on_abort = [], []
        self._close_files()

    def _close_files(self) -> None:
        """SQLite's connections first, then our descriptor of logs.db (see __init__)."""
        if hasattr(self, "committed"):
            self.committed.close()
        self._conn.close()
        if self._db_fd >= 0:
            os.close(self._db_fd)
            self._db_fd = -1

    # -- writes -------------------------------------------------------------------------

    def append_log(
        self, source: str, type: str, ref_id: str | None, payload: Any, ts: int | None = None
    ) -> int:
        self._begin()
        cur = self._conn.execute(
            "INSERT INTO logs (source, type, ref_id, payload, ts) VALUES (?, ?, ?, ?, ?)",
            (source, type, ref_id, None if payload is None else dumps(payload), ts or now_ms()),
        )
        return int(cur.lastrowid or 0)

    def create_run(
        self,
        run_id: str,
        workflow: str,
        transition: Transition,
        trigger_payload: Any,
        *,
        payload_json: str | None = None,
        reason: str | None = None,
        retry_of: str | None = None,
        ts: int | None = None,
    ) -> RunRecord:
        """Insert a new run in the transition's status, with the log entry recording it.

        ``payload_json`` is ``trigger_payload`` as :func:`dumps` encodes it, when the caller
        has it (it checked the payload on admission): it is stored as it is, not encoded again.
        """
        if not transition.creates:
            raise ValueError(f"{transition.name} does not create a run")
        ts = ts or now_ms()
        status = transition.target
        if payload_json is None and trigger_payload is not None:
            payload_json = dumps(trigger_payload)
        self._begin()
        cur = self._conn.execute(
            "INSERT INTO workflow_runs (run_id, workflow, status, created_at, updated_at,"
            " trigger_payload, error, retry_of) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (run_id, workflow, status, ts, ts, payload_json, reason, retry_of),
        )
        self._conn.execute(
            "INSERT INTO logs (source, type, ref_id, payload, ts) VALUES ('workflow', ?, ?, ?, ?)",
            (status, run_id, payload_json if reason is None else dumps(reason), ts),
        )
        return RunRecord(
            run_id, workflow, status, ts, ts, trigger_payload, 0, reason, 0, retry_of,
            int(cur.lastrowid or 0),
        )  # fmt: skip

    def transition_run(
        self,
        run_id: str,
        transition: Transition,
        *,
        payload_json: str | None = None,
        error: str | None = None,
        ts: int | None = None,
    ) -> bool:
        """Apply a labelled transition if the run is in one of its source statuses.

        The log entry holds ``payload_json`` (encoded JSON, stored as it is: a dispatched run's
        trigger payload) or else ``error``. Returns False, writing nothing, when the guard
        does not hold (the run moved on already): the caller lost a race it must not win twice.
        """
        if transition.creates:
            raise ValueError(f"{transition.name} creates a run; use create_run")
        ts = ts or now_ms()
        sources = sorted(transition.sources)
        marks = ",".join("?" * len(sources))
        logged_json = payload_json
        if logged_json is None and error is not None:
            logged_json = dumps(error)  # may raise: before any write
        self._begin()
        cur = self._conn.execute(
            f"UPDATE workflow_runs SET status = ?, updated_at = ?, error = COALESCE(?, error)"
            f" WHERE run_id = ? AND status IN ({marks})",
            (transition.target, ts, error, run_id, *sources),
        )
        if cur.rowcount != 1:
            return False
        self._conn.execute(
            "INSERT INTO logs (source, type, ref_id, payload, ts) VALUES ('workflow', ?, ?, ?, ?)",
            (transition.target, run_id, logged_json, ts),
        )
        return True

    def record_step(self, run_id: str, record_json: str, ts: int | None = None) -> bool:
        """Append a step and count it, only while the run is started.

        ``record_json`` is the step ``{"role", "prompt", "event"}`` already encoded: the
        caller checks it, and what it adds to the run's history, before anything is written.
        """
        ts = ts or now_ms()
        self._begin()
        cur = self._conn.execute(
            "UPDATE workflow_runs SET steps = steps + 1, updated_at = ?"
            " WHERE run_id = ? AND status = 'started'",
            (ts, run_id),
        )
        if cur.rowcount != 1:
            return False
        self._conn.execute(
            "INSERT INTO logs (source, type, ref_id, payload, ts)"
            " VALUES ('workflow', 'step_complete', ?, ?, ?)",
            (run_id, record_json, ts),
        )
        return True

    def count_attempt(self, run_id: str) -> int:
        """Count one more worker lost under a started run; returns the new count."""
        self._begin()
        row = self._conn.execute(
            "UPDATE workflow_runs SET attempts = attempts + 1"
            " WHERE run_id = ? AND status = 'started' RETURNING attempts",
            (run_id,),
        ).fetchone()
        return int(row[0]) if row else 0

    def prune_runs(self, *, older_than: int | None, keep: int | None, limit: int) -> int:
        """Delete up to ``limit`` final runs, with their log entries, oldest first.

        A final run goes when it was last updated before ``older_than`` (ms) or when it is
        not among the ``keep`` newest final runs. Active runs are never touched.
        """
        if older_than is None and keep is None:
            return 0
        final = "status NOT IN ('queued', 'started')"
        reasons: list[str] = []
        args: list[Any] = []
        if older_than is not None:
            reasons.append("updated_at < ?")
            args.append(older_than)
        if keep is not None:
            reasons.append(
                f"seq <= (SELECT seq FROM workflow_runs WHERE {final}"
                " ORDER BY seq DESC LIMIT 1 OFFSET ?)"
            )
            args.append(keep)
        victims = [
            row[0]
            for row in self._conn.execute(
                f"SELECT run_id FROM workflow_runs WHERE {final} AND ({' OR '.join(reasons)})"
                " ORDER BY seq LIMIT ?",
                (*args, limit),
            )
        ]
        if not victims:
            return 0
        marks = ",".join("?" * len(victims))
        self._begin()
        self._conn.execute(
            f"DELETE FROM logs WHERE source = 'workflow' AND ref_id IN ({marks})", victims
        )
        self._conn.execute(f"DELETE FROM workflow_runs WHERE run_id IN ({marks})", victims)
        return len(victims)

    def prune_sense_logs(self, *, older_than: int, limit: int) -> int:
        """Delete up to ``limit`` sense entries (signals, errors, log lines) older than a time."""
        self._begin()
        cur = self._conn.execute(
            "DELETE FROM logs WHERE id IN (SELECT id FROM logs WHERE source = 'sense'"
            " AND ts < ? ORDER BY id LIMIT ?)",
            (older_than, limit),
        )
        return cur.rowcount

    def set_meta(self, key: str, value: str) -> None:
        self._begin()
        self._conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # -- reads of the engine ---------------------------------------------------------

    def active_runs(self) -> list[RunRecord]:
        """Every queued or started run, oldest first: the order recovery must keep.

        Each with its ``history`` size, counted in SQL, so that a run too large to resume is
        known before its steps are read. (The unary ``+`` keeps SQLite on the ``ref_id``
        index: left to itself it picks ``(source, type)`` and scans every step of every run.)
        """
        marks = ",".join("?" * len(ACTIVE))
        rows = self._conn.execute(
            f"SELECT {_RUN_COLUMNS},"
            " COALESCE(LENGTH(CAST(trigger_payload AS BLOB)), 0)"
            " + (SELECT COALESCE(SUM(LENGTH(CAST(payload AS BLOB))), 0) FROM logs"
            "    WHERE ref_id = workflow_runs.run_id AND +source = 'workflow'"
            "    AND +type = 'step_complete')"
            f" FROM workflow_runs WHERE status IN ({marks}) ORDER BY seq",
            tuple(sorted(ACTIVE)),
        ).fetchall()
        return [_run_from_row(r, history=r[11]) for r in rows]
