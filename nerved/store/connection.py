"""The sqlite3 connections: the connect hook, and wrappers whose every error is a StoreError.

The only place (with :mod:`nerved.store.sqlite`'s use of it) where sqlite3 is imported:
an error of SQLite becomes a one-line :class:`~nerved.store.errors.StoreError` naming the
file (:class:`~nerved.store.errors.StoreBusy` when another process holds the lock).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from nerved.store.errors import StoreBusy, StoreError
from nerved.store.sql import Rows

PAGE_SIZE: Final = 1024
"""The page size of a new logs.db (SQLite's default: 4096; a file keeps the size it was
made with). A commit rewrites every page it touches (a run's row, the logs' right edge,
each index's), whole, into the WAL: with 1 KiB pages W writes 10.5 KB of WAL per run
instead of 25.9 (``python -m bench.profile``, issue 14, 2026-11-30), so the disk takes 60 %
fewer bytes and checkpoints come less often, and the master's page cache holds fewer bytes
per page it needs (the tree's RSS 0.3 MB less). Latency is the same within this VM's noise
(one run at a time, 3 x 1,000 runs each: p50 2.19-2.37 ms against 2.13-2.29), and so are
``python -m bench.scale``'s queries (a 2,000-step inspect's default page 0.7 ms slower, well
within its target)."""
AUTOCHECKPOINT_BYTES: Final = 32 * 2**20  # of WAL before SQLite checkpoints on its own
BUSY_TIMEOUT_MS: Final = 10  # SQLite's own wait for a lock: short, never a stall
CACHE_KIB: Final = 512
"""Each connection's page cache, in KiB (SQLite's default: 2000). It fills with every page
read or written until it is full, so the master held 2 MB of logs.db in memory once the file
outgrew that: about 1.5 MB of W's process tree (issue 14), for no measurable gain. A page
it does not hold is read again from the OS's cache; the hot pages (the b-trees' upper levels,
the right edge of the logs) fit in it, and ``python -m bench.scale`` (100,000 runs,
1,000,000 entries, 245 MiB) answers as fast with it as with 2 MB (2026-11-30)."""


def is_busy(exc: sqlite3.Error) -> bool:
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in (
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
    )


def store_error(path: Path, exc: sqlite3.Error) -> StoreError:
    kind = StoreBusy if is_busy(exc) else StoreError
    return kind(f"{path}: {exc}")


class Connection:
    """The one sqlite3 connection, every error of which is a StoreError (busy: StoreBusy)."""

    __slots__ = ("_conn", "path")

    reads_ahead = False  # sqlite3 steps through a result a row at a time

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Rows[Path]:
        try:
            return Rows(self._conn.execute(sql, params), sqlite3.Error, store_error, self.path)
        except sqlite3.Error as exc:
            raise store_error(self.path, exc) from exc

    def executescript(self, script: str) -> None:
        try:
            self._conn.executescript(script)
        except sqlite3.Error as exc:
            raise store_error(self.path, exc) from exc

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()


def connect(path: Path, synchronous: str = "FULL") -> Connection:
    """The connect hook: every connection nerve opens gets its pragmas here and nowhere else."""
    try:
        raw = sqlite3.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        raise store_error(path, exc) from exc
    conn = Connection(raw, path)
    conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # before anything is written: a new file
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode != "wal":
        raise StoreError(f"{path}: cannot switch to WAL mode (got {mode!r})")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("PRAGMA journal_size_limit = 67108864")
    # Checkpoints copy the WAL into the database and fsync it: a stall of milliseconds. The
    # master runs them when it is idle (Store.checkpoint); this is only the backstop.
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.execute(f"PRAGMA wal_autocheckpoint = {AUTOCHECKPOINT_BYTES // page}")
    # Never wait long for a lock: the master's loop must not stall (see "The write lock").
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
    return conn


def connect_reader(path: Path) -> Connection:
    """A read-only connection (``mode=ro``, ``query_only``) for the queries of clients."""
    uri = f"{path.absolute().as_uri()}?mode=ro"
    try:
        raw = sqlite3.connect(uri, uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise store_error(path, exc) from exc
    conn = Connection(raw, path)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA query_only = ON")
    conn.execute("PRAGMA temp_store = MEMORY")
    conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")  # emptied by every write anyway
    return conn
