"""The SQLite backend of the store: logs.db opened, its write lock, and the batch.

:class:`Store` is the master's connection to logs.db. It satisfies
:class:`nerved.store.interface.Storage` (its reads are :mod:`nerved.store.reads`, its
writes :mod:`nerved.store.writes`, the schema :mod:`nerved.store.schema`); this module
opens the file, holds the write lock and keeps the batch of the current turn.

**The write lock.** The master holds logs.db's write lock (an open ``BEGIN IMMEDIATE``) from
one commit to the next, so other processes may read the file (WAL) but not write it while
nerved runs. Should one take the lock all the same (in the instant between a commit and the
next ``BEGIN``), :meth:`Store.acquire` says so without waiting, and the master's loop runs
only what does not write until it has the lock back (nerved.loop, "the gate"): contention
costs a pause, never a crash or a blocked loop. At start the store waits for the lock.

**Failures.** Every SQLite error becomes a one-line :class:`StoreError` naming the file. At
each commit the store also checks that ``logs.db`` (and any file it was told to watch, such
as the state directory's lock) is still the file it opened: a state directory deleted under
a running daemon must stop it, not have it acknowledge work into an unlinked file.

**Its files.** logs.db and its ``-wal``/``-shm``/``-journal`` are opened first by nerve
itself (never through a symbolic link, never a file with a second hard link, created 0600,
group and other permissions taken off: nerved.modes.prepare_db), and the file SQLite then
opens by path is compared with that descriptor: a link in the state directory cannot aim
nerved's writes at another file of the host.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeVar

from nerved import modes
from nerved.store.batch import Batch
from nerved.store.connection import Connection, connect, connect_reader
from nerved.store.errors import StoreBusy, StoreError
from nerved.store.reads import Reads
from nerved.store.records import now_ms
from nerved.store.schema import migrate, user_version
from nerved.store.watched import file_id
from nerved.store.writes import Writes

if TYPE_CHECKING:
    from nerved.store.interface import Storage

log = logging.getLogger(__name__)
T = TypeVar("T")

START_RETRY: Final = 0.1  # seconds between two tries for the write lock at start


class Store(Batch, Writes, Reads):
    """The master's connection to logs.db: batched writes, and the reads the engine makes.

    Its queries see the batch of the current turn. Queries for clients go through
    :attr:`committed` instead, a second, read-only connection that sees what is durable and
    nothing else: a client never reads what a crash could take back, and a query that meets
    a damaged page fails alone, where the same error inside the write transaction would
    poison the whole batch (SQLite refuses every later statement of it).
    """

    _conn: Connection  # SQLite's own (the queries need only nerved.store.sql's shape)

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
        self.where = str(path)
        self.files = (path, path.with_name(f"{path.name}-wal"))
        self.leasing = None  # one host: the write lock is its lease
        Batch.__init__(self)
        self._in_tx = False  # we hold the write lock: a BEGIN IMMEDIATE is open
        self.locked_since: float | None = None  # monotonic: another process took the lock
        self._since_checkpoint = 0
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{path.parent}: {exc.strerror or exc}") from exc
        # Our own descriptor of logs.db, opened first (never through a link, created 0600:
        # nerved.modes.prepare_db), then compared with the file SQLite opened by its path,
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
            self._conn = self._at_start(lambda: connect(path, synchronous), on_wait)
        except BaseException:
            os.close(self._db_fd)
            raise
        try:
            identity = file_id(self._db_fd)
            st = os.lstat(path)
            if (st.st_dev, st.st_ino) != identity:
                raise StoreError(f"{path} was replaced while nerved opened it")
            self._watched.add(path, self._db_fd, identity)
            self._at_start(self._migrate, on_wait)
            self._at_start(self._prove_writable, on_wait)
            self._at_start(self._acquire_or_raise, on_wait)
            self.committed = Reads(connect_reader(path))
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

    # -- schema -------------------------------------------------------------------------

    def _migrate(self) -> None:
        migrate(self._conn, self.path)

    @property
    def schema_version(self) -> int:
        return user_version(self._conn)

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

    def _commit_batch(self) -> None:
        self._conn.execute("COMMIT")
        self._in_tx = False
        self._since_checkpoint += 1

    def _committed(self) -> None:
        self.acquire()  # at once: the instant without the lock is all another writer gets

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

    def shrink(self) -> None:
        """Empty both connections' page caches (``PRAGMA shrink_memory``; the pages of an
        open batch stay), before a fork: a cache fills up to its cap (CACHE_KIB), a forked
        worker's RSS would count it again, and the worker never reads it. The master's
        next queries read those pages again, from the OS's cache. A failure is left for the
        next statement to report: a cache is not worth stopping for."""
        for conn in (self._conn, self.committed._conn):
            with contextlib.suppress(StoreError):
                conn.execute("PRAGMA shrink_memory")

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


if TYPE_CHECKING:

    def _satisfies_the_interface(store: Store) -> Storage:
        """mypy checks here that the SQLite backend is a :class:`Storage`."""
        return store
