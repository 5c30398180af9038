"""The PostgreSQL store: the master's two connections, the batch, and its commit.

:class:`PgStore` is to a PostgreSQL database what :class:`nerved.store.sqlite.Store` is to
logs.db, and keeps the same rules (:mod:`nerved.store.interface`):

- **The batch.** The master's connection opens a transaction at the first statement of a
  turn; the turn's writes join it, and :meth:`PgStore.commit` commits it once at the end of
  the turn (group commit; PostgreSQL's ``synchronous_commit`` makes the COMMIT durable when
  it returns: nerve does not lower it). The callbacks (the acknowledgements) run after.
- **A refused write leaves the rest of the batch.** PostgreSQL aborts a whole transaction at
  its first error, where SQLite drops the failed statement alone; so a write that the data
  can refuse (a new run whose id or idempotency key is taken) runs under a savepoint, and
  one refused is rolled back to it (the batch's first needs none: before it, the
  transaction holds nothing worth keeping). Any other write failing is the database
  failing: the batch is lost, its commit fails, and nothing of it was acknowledged.
- **The committed view** is a second connection in autocommit: each query sees what is
  committed, and durable, when it runs.
- **No write lock.** Other processes may write the database (several hosts: issue 15);
  every status change is a guarded ``UPDATE … WHERE status …`` already. :meth:`acquire`
  is always True.
- **Bounds.** Every statement has a timeout (:mod:`.connection`); one that meets it, or a
  database gone, is a StoreError: the daemon stops and a restart recovers (EX_TEMPFAIL:
  systemd starts it again), as for a failed disk under SQLite.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from nerved.store.batch import Batch
from nerved.store.errors import StoreError
from nerved.store.interface import Leasing
from nerved.store.postgres import leases, queue
from nerved.store.postgres.connection import Connection, Refused, connect, display
from nerved.store.postgres.schema import migrate, schema_version
from nerved.store.reads import Reads
from nerved.store.records import ActiveRecord, HostRecord, QueueCounts, RunRecord, now_ms
from nerved.store.writes import Writes

if TYPE_CHECKING:
    from nerved.store.interface import Storage

log = logging.getLogger(__name__)

START_RETRY: Final = 1.0  # seconds between two tries to reach the database at start
CLOCKS_AGREE: Final = 1_000  # ms of difference between a host's clock and the database's
WRITE_LOCK: Final = 0x6E657262  # "nerb": pg_advisory_xact_lock's key, the hosts' write lock


class PgStore(Batch, Writes, Reads):
    """The master's connections to a PostgreSQL database: batched writes, the engine's reads
    (they see the batch), and :attr:`committed`, the clients' view."""

    _conn: Connection
    FIRING_KEY = "host, reflex"  # cron_firings' key (schema 6): each host's reflexes

    def __init__(self, url: str, *, on_wait: Callable[[str], None] | None = None) -> None:
        """Connect (retrying while the database cannot be reached: ``on_wait`` hears why,
        once), migrate, and prove the database writable. Raises StoreError for what a retry
        cannot mend: a refused login, a newer schema."""
        self.url = url
        self.where = display(url)
        self.files: tuple[Path, ...] = ()
        Batch.__init__(self)
        self.locked_since: float | None = None
        self._fence: tuple[str, int] | None = None  # the lease held: (host id, epoch)
        self._fenced: StoreError | None = None  # the fence failed: no batch commits again
        self._conn = self._reach(on_wait)
        try:
            migrate(self._conn)
            self._prove_writable()
            self._reader = connect(url, autocommit=True)
            self.committed = Reads(self._reader)
        except BaseException:
            self._conn.close()
            raise

    def _reach(self, on_wait: Callable[[str], None] | None) -> Connection:
        told = False
        while True:
            try:
                return connect(self.url, autocommit=False)
            except Refused:
                raise
            except StoreError as exc:
                if not told:
                    told = True
                    log.warning("cannot reach the store yet (%s); retrying", exc)
                    if on_wait is not None:
                        on_wait(f"waiting for {exc}")
                time.sleep(START_RETRY)

    def _prove_writable(self) -> None:
        self._conn.execute(
            "INSERT INTO meta (key, value) VALUES ('last_start', ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(now_ms()),),
        )
        self._conn.commit()

    @property
    def schema_version(self) -> int:
        version = schema_version(self._conn)
        self._end_reads()
        return version

    # -- the batch ----------------------------------------------------------------------

    def acquire(self) -> bool:
        """Always True: there is no write lock to take (see the module's doc)."""
        return True

    def release(self) -> None:
        """End a transaction that only read (RuntimeError with an uncommitted batch)."""
        if self._wrote:
            raise RuntimeError("release() with an uncommitted batch")
        self._end_reads()

    def _end_reads(self) -> None:
        """Close a transaction the engine's reads opened: its snapshot and locks go."""
        if not self._wrote and self._conn.in_transaction:
            self._conn.rollback()

    def commit(self) -> None:
        """:meth:`Batch.commit`, then no read's transaction left open to the next turn (the
        callbacks run after the commit, and may read). Between two turns the connection is
        idle, and idle in a transaction it would hold its locks and be ended by the server
        (:data:`~.connection.IDLE_IN_TRANSACTION_MS`). What a callback writes waits for the
        next turn's commit (the store's contract), a second at most: the loop's longest
        wait (nerved.loop.Loop.run_once)."""
        Batch.commit(self)
        self._end_reads()

    def _begin(self) -> None:
        """Before each write: the batch's first checks the fence (:meth:`_check_fence`)."""
        if not self._wrote:
            self._wrote = True
            self._check_fence()

    def _commit_batch(self) -> None:
        if self._fenced is not None:  # whoever caught it, nothing of this batch is kept
            raise self._fenced
        self._conn.commit()

    def _nothing_written(self) -> None:
        self._end_reads()

    def _check_fence(self) -> None:
        """At the batch's first write: take the hosts' write lock, and check that this host
        holds its lease at its epoch still (StoreError, and no batch commits again, if not).

        **The write lock** (:data:`WRITE_LOCK`, a transaction-level advisory lock, held to
        the commit) makes the batches of all hosts on the database follow one another: each
        commits before the next writes its first row. So log entries are committed in the
        order of their ids, whichever host wrote them (a follower of ``logs.query``'s
        ``afterId`` misses none: without it, an id taken by one host and committed after a
        greater one of another's would be passed over); and, every batch taking it first,
        no batch ever waits for another holding a row it wants (no deadlock). A host stopped
        in the middle of its batch holds it until the server ends that session
        (:data:`~.connection.IDLE_IN_TRANSACTION_MS`).

        **The fence**: the host's row, locked FOR SHARE to the commit. Another nerved taking
        the lease anew, or a host taking this one's runs over once it lapsed (either moves the
        epoch on, :data:`leases.HELD`), waits for this commit, and every batch after it fails
        here. So a nerved whose lease was taken, or lapsed while it was stalled (SIGSTOP, a
        long pause), writes nothing more, not only from its next renewal."""
        if self._fence is None:  # no lease (the store's own tests): the write lock alone
            self._conn.execute("SELECT pg_advisory_xact_lock(?)", (WRITE_LOCK,))
            return
        host_id, epoch = self._fence
        held = self._conn.execute(
            f"SELECT pg_advisory_xact_lock(?) FROM hosts WHERE {leases.HELD} FOR SHARE",
            (WRITE_LOCK, host_id, epoch),
        ).fetchone()
        if held is None:
            self._fenced = StoreError(
                f"host {host_id}'s lease was taken anew or its runs taken over (epoch"
                f" {epoch}): this one writes nothing more"
            )
            raise self._fenced

    def _rollback(self) -> None:
        self._conn.rollback()
        self._wrote = False

    def create_run(self, *args: Any, **kwargs: Any) -> RunRecord:
        """:meth:`Writes.create_run`, the one write the data can refuse (a run id or an
        idempotency key taken: a unique index), under a savepoint so that a refusal leaves
        the batch as it was (the batch's first needs none: before it, the transaction holds
        nothing worth keeping). The other writes are guarded updates, appends and upserts
        no data of nerve's makes fail: one that fails all the same (a timeout, the database
        gone) fails the batch, and its commit then fails.

        The batch's write lock is taken first (:meth:`_begin`), so that its check of the
        idempotency key sees every run another host committed with it: two hosts given one
        key at once make one run, the second host's trigger answered with the first's."""
        if not self._wrote:
            try:
                self._begin()
                return Writes.create_run(self, *args, **kwargs)
            except (StoreError, ValueError):  # refused: the batch as it was (none)
                self._rollback()
                raise
        self._conn.execute("SAVEPOINT nerve_write")
        try:
            run = Writes.create_run(self, *args, **kwargs)
        except StoreError:
            self._conn.execute("ROLLBACK TO SAVEPOINT nerve_write")
            self._conn.execute("RELEASE SAVEPOINT nerve_write")
            raise
        self._conn.execute("RELEASE SAVEPOINT nerve_write")
        return run

    def run_by_key(self, workflow: str, key: str) -> RunRecord | None:
        """:meth:`Reads.run_by_key` under the batch's write lock (a trigger with a key
        looks before it writes: another host's run with that key, committed, is found)."""
        self._begin()
        return Reads.run_by_key(self, workflow, key)

    # -- hosts' leases (nerved.store.postgres.leases) -------------------------------------

    @property
    def leasing(self) -> Leasing:
        return self

    def claim_lease(
        self, host_id: str, instance: str, pid: int, version: str, lease_ms: int, site: str = ""
    ) -> int:
        if self._wrote:
            raise RuntimeError("claim_lease() with an uncommitted batch")
        try:
            epoch = leases.claim(self._conn, host_id, instance, pid, version, lease_ms, site)
        except StoreError:
            self._rollback()
            raise
        self._fence, self.host_id = (host_id, epoch), host_id
        self.committed.host_id = host_id
        return epoch

    def renew_lease(
        self, host_id: str, epoch: int, lease_ms: int, serves: Sequence[str] = ()
    ) -> bool:
        self._begin()
        return leases.renew(self._conn, host_id, epoch, lease_ms, serves)

    def release_lease(self, host_id: str, epoch: int) -> None:
        self._begin()
        leases.release(self._conn, host_id, epoch)

    def hosts(self) -> list[HostRecord]:
        return leases.hosts(self._reader)

    # -- the queue of ``any`` runs, and takeover (nerved.store.postgres.queue) -----------

    def queue_counts(self, workflow: str, concurrency: int, max_queue: int) -> QueueCounts:
        if self.host_id is None:
            raise RuntimeError("no lease taken: claim_lease() first")
        self._begin()  # the write lock: the counts are exact
        return queue.counts(self._conn, self.host_id, workflow, concurrency, max_queue)

    def orphans(self, workflows: Sequence[str]) -> list[str]:
        return queue.orphans(self._reader, workflows)

    def claimable(self, wanted: Mapping[str, int]) -> list[str]:
        return queue.claimable(self._reader, wanted)

    def claim_runs(self, workflow: str, concurrency: int) -> list[ActiveRecord]:
        if self.host_id is None:
            return []
        self._begin()  # the fence and the write lock first (see _check_fence)
        claimed = queue.claim(self._conn, self.host_id, workflow, concurrency)
        return self.active_runs(claimed) if claimed else []

    def oldest_queued(self, workflow: str) -> str | None:
        self._begin()  # the fence before the row lock (see _check_fence)
        return queue.oldest_queued(self._conn, workflow)

    def hold_writes(self) -> None:
        self._begin()

    def fence_lapsed(self, host: str) -> bool:
        self._begin()
        return queue.fence_lapsed(self._conn, host)

    def take_over(self, serves: Sequence[str]) -> list[tuple[str, list[ActiveRecord]]]:
        if self.host_id is None:
            return []
        taken = []
        for host in queue.lapsed(self._reader, self.host_id, serves):
            self._begin()
            run_ids = queue.take_over(self._conn, self.host_id, host, serves)
            if run_ids:
                taken.append((host, self.active_runs(run_ids)))
        return taken

    # -- retention on a database several hosts share ------------------------------------

    def _by_the_databases_clock(self, older_than: int) -> int:
        """``older_than`` (ms, by this host's clock) by the database's, when the two differ
        by more than :data:`CLOCKS_AGREE`: a host whose clock is ahead must not prune what
        is young by every other host's. (Within it they agree: a time given is kept as it
        is, to the millisecond.)"""
        skew = int(self._conn.execute("SELECT nerve_now_ms()").fetchone()[0]) - now_ms()
        return older_than + skew if abs(skew) > CLOCKS_AGREE else older_than

    def prune_runs(self, *, older_than: int | None, keep: int | None, limit: int) -> int:
        """:meth:`Writes.prune_runs`, the age by the database's clock."""
        if older_than is not None:
            older_than = self._by_the_databases_clock(older_than)
        return Writes.prune_runs(self, older_than=older_than, keep=keep, limit=limit)

    def prune_sense_logs(self, *, older_than: int, limit: int) -> int:
        """:meth:`Writes.prune_sense_logs` of this host's senses alone (their entries are
        ``<name>@<host>``: senses are each host's, and so are their settings), the age by
        the database's clock."""
        if self.host_id is None:
            return Writes.prune_sense_logs(self, older_than=older_than, limit=limit)
        older_than = self._by_the_databases_clock(older_than)
        self._begin()
        cur = self._conn.execute(
            "DELETE FROM logs WHERE id IN (SELECT id FROM logs WHERE source = 'sense'"
            " AND ts < ? AND right(ref_id, ?) = ? ORDER BY id LIMIT ?)",
            (older_than, len(self.host_id) + 1, "@" + self.host_id, limit),
        )
        return cur.rowcount

    def checkpoint(self) -> bool:
        """PostgreSQL checkpoints on its own: nothing to do."""
        return False

    def shrink(self) -> None:
        """Nothing to give back: psycopg keeps no page cache."""

    def close(self) -> None:
        """Close, dropping a batch nobody committed: nothing of it was acknowledged yet."""
        self._rollback()
        self._on_commit, self._on_abort = [], []
        if hasattr(self, "committed"):
            self.committed.close()
        self._conn.close()


if TYPE_CHECKING:

    def _satisfies_the_interface(store: PgStore) -> Storage:
        """mypy checks here that the PostgreSQL backend is a :class:`Storage`."""
        return store
