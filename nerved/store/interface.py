"""What the master needs from a store: the interface any backend implements.

Everything durable in nerve goes through a store, so that another backend can replace
SQLite by implementing this narrow interface (:class:`Storage`; the SQLite one is
:class:`nerved.store.sqlite.Store`, and ``tests/store/test_contract.py`` is what any backend
must pass). Only the master opens it: workers are forked from it, and no backend's state
may cross a fork (workers that read the logs ask the master over their channel).

Writes are *batched*: each write joins the batch of the current turn of the master loop,
and the loop calls :meth:`Storage.commit` once at the end of the turn. Whoever needs to act
only once a write is durable (acknowledging a trigger, telling a worker to go on)
registers that action with :meth:`Storage.after_commit`. That gives group commit for free:
many workers' events share one sync to disk, and no acknowledgement ever runs ahead of
its data.

Run statuses change only through :class:`~nerved.states.Transition`s, applied as guarded
updates (only while the run is in one of the transition's sources) together with the log
entry that records them, in the same batch (RFC-002 §6.2).

A leaf: it imports no backend, so the engine can be typed against it alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from nerved.states import RunStatus, Transition
from nerved.store.records import (
    ActiveRecord,
    Firing,
    HostRecord,
    LogEntry,
    QueueCounts,
    RunRecord,
)

CommitCallback = Callable[[], None]
AbortCallback = Callable[[BaseException], None]


class Reader(Protocol):
    """The queries: of the engine (they see its open batch) or of clients (they see only
    what is committed: :attr:`Storage.committed`)."""

    def firings(self) -> dict[str, Firing]:
        """The last firing of each cron reflex of this host recorded (:meth:`Storage.
        record_firing`), by its ``reflex`` (a store several hosts share keeps each host's:
        its reflexes are its own)."""
        ...

    def get_meta(self, key: str) -> str | None: ...

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
        """Up to ``limit`` entries (at most MAX_QUERY_LIMIT), oldest first: after
        ``after_id`` or from ``since`` when given (paging forward), else the newest (before
        ``before_id``: paging back); never more payload than ``wire.RESULT_BUDGET`` (at
        least one entry). A payload that does not decode is an :class:`Unreadable`."""
        ...

    def last_log_id(self) -> int: ...

    def get_run(self, run_id: str) -> RunRecord | None: ...

    def find_runs(self, prefix: str, limit: int = 2) -> list[RunRecord]:
        """Runs whose id starts with ``prefix`` (literally: no wildcards), by id."""
        ...

    def list_runs(
        self,
        *,
        statuses: Iterable[RunStatus] | None = None,
        workflow: str | None = None,
        host: str | None = None,
        limit: int | None = 100,
    ) -> list[RunRecord]:
        """Newest first; ``trigger_payload`` is not read (None). ``host``: only the runs
        whose ``host`` is that (a run with none, as every run of a store a single host
        holds, is no host's)."""
        ...

    def run_by_key(self, workflow: str, key: str) -> RunRecord | None:
        """The run of ``workflow`` created with idempotency key ``key`` (``create_run``), in
        whatever status, ``trigger_payload`` read; None when no kept run of that workflow has
        it (never one of another workflow; a pruned run's key is free). Raises nothing but
        StoreError."""
        ...

    def run_steps_page(self, run_id: str, after_id: int = 0) -> tuple[list[LogEntry], bool]:
        """One run's ``step_complete`` and ``input`` entries (``source = 'workflow'``) after
        ``after_id``, in id order, a page of them, and whether more follow: what resuming it
        replays (each payload carries the ``event``). No log lines, no ``step_failed``."""
        ...

    def run_history_page(self, run_id: str, after_id: int = 0) -> tuple[list[LogEntry], bool]:
        """One run's entries (``source = 'workflow'``) after ``after_id``, a page of them,
        and whether more follow."""
        ...

    def run_history(
        self,
        run_id: str,
        *,
        after_id: int | None = None,
        before_id: int | None = None,
        limit: int = 100,
    ) -> tuple[list[LogEntry], int, bool]:
        """A page of one run's entries (``source = 'workflow'``), oldest first: up to
        ``limit`` (at most MAX_QUERY_LIMIT) after ``after_id`` when given, else the newest
        ``limit`` (before ``before_id`` if given); never more payload than
        ``wire.RESULT_BUDGET`` (at least one entry), the newest left out when it cuts. With
        it, the number of the run's entries before the page's first entry (counted in SQL,
        not read), and whether any entry of the run follows its last. ``workflow.inspect``
        answers it."""
        ...

    def pending_signals(
        self, run_id: str, name: str | None = None, limit: int = 1000
    ) -> list[LogEntry]:
        """The run's ``signal`` entries (``{"name", "payload"}``) that none of its ``input``
        entries delivered (an input's ``signal`` field is the id of the entry it delivers),
        oldest first, at most ``limit`` (at most MAX_QUERY_LIMIT); with ``name``, only the
        signals of that name. An entry whose payload does not decode is skipped."""
        ...

    def signalled_runs(self) -> set[str]:
        """The ids of the runs that have a pending signal (:meth:`pending_signals` not
        empty), in one query: recovery asks it once, not once per waiting run."""
        ...

    def count_runs(self, host: str | None = None) -> dict[tuple[str, RunStatus], int]:
        """How many runs, by (workflow, status); with ``host``, of those :meth:`list_runs`
        with that ``host`` lists."""
        ...


class Leasing(Protocol):
    """Hosts' leases on a store several hosts may share (PostgreSQL: nerved.store.postgres.
    leases; issue 15). Times are ms by the store's clock."""

    def claim_lease(
        self, host_id: str, instance: str, pid: int, version: str, lease_ms: int, site: str = ""
    ) -> int:
        """Take ``host_id``'s lease for ``lease_ms``, committed at once; its new epoch.
        ``instance``: the nerved's own token (its state directory's), and ``site``, where it
        runs (machine boot, state directory), so that only its own restart takes a live
        lease over. StoreError
        if the store will not serve this host now (this host id's lease is live, held from
        another state directory or another machine)."""
        ...

    def renew_lease(
        self, host_id: str, epoch: int, lease_ms: int, serves: Sequence[str] = ()
    ) -> bool:
        """Extend it, in the turn's batch, saying which ``placement: any`` workflows the
        host ``serves`` now; False if ``epoch`` is no longer the host's."""
        ...

    def release_lease(self, host_id: str, epoch: int) -> None:
        """End it now, in the turn's batch (a clean stop)."""
        ...

    def hosts(self) -> list[HostRecord]:
        """Every host that used the store, with its lease, as committed."""
        ...

    # The queue of ``placement: any`` runs that every host claims from, and the takeover of
    # a lapsed host's (nerved.store.postgres.queue; SPEC v2 §9).

    def queue_counts(self, workflow: str, concurrency: int, max_queue: int) -> QueueCounts:
        """The runs of the ``any`` workflow over every host that admission weighs a new one
        against, in the batch (exact: no other host writes meanwhile)."""
        ...

    def orphans(self, workflows: Sequence[str]) -> list[str]:
        """Those of ``workflows`` with queued ``any`` runs no live host serves, as committed."""
        ...

    def claimable(self, wanted: Mapping[str, int]) -> list[str]:
        """Those of the ``any`` workflows ``wanted`` (name: concurrency) with a queued run
        and a free slot, as committed (one read however many)."""
        ...

    def claim_runs(self, workflow: str, concurrency: int) -> list[ActiveRecord]:
        """Claim, in the batch, the oldest queued runs of the ``any`` workflow that its free
        slots (of ``concurrency`` over every host) and this host's share allow: each is
        ``started`` on this host. Fenced by the lease: StoreError once it was taken."""
        ...

    def oldest_queued(self, workflow: str) -> str | None:
        """The oldest queued run of the ``any`` workflow, locked in the batch (an evict's
        victim); None: none free."""
        ...

    def hold_writes(self) -> None:
        """Take the hosts' write lock in the batch now: what the batch reads from here on
        is as every host committed it, and stays so to its commit (no other host writes
        meanwhile): a decision read from a run is still true when written."""
        ...

    def fence_lapsed(self, host: str) -> bool:
        """Fence ``host`` (its epoch moved on, in the batch) if its lease has lapsed; whether
        it did: another host may then change its runs (it writes nothing more)."""
        ...

    def take_over(self, serves: Sequence[str]) -> list[tuple[str, list[ActiveRecord]]]:
        """Take over, in the batch, the started and waiting runs of the workflows in
        ``serves`` that hosts whose lease lapsed left: (host, its runs now this host's)."""
        ...


class Storage(Reader, Protocol):
    """The master's store: batched writes, the batch's lock and files, and the engine's reads.

    Its own queries see the batch of the current turn; :attr:`committed` sees only what
    is durable.
    """

    host_id: str | None
    """The host whose runs it writes and recovers, on a store several hosts share (set when
    the host takes its lease); None for one a single host holds (SQLite)."""

    @property
    def where(self) -> str:
        """Where it keeps its data, named in messages to the operator: logs.db's path, or a
        database's URL without its password."""
        ...

    @property
    def leasing(self) -> Leasing | None:
        """Hosts' leases, for a store several hosts may share; None (SQLite) for one that
        a single host holds (its write lock)."""
        ...

    @property
    def files(self) -> tuple[Path, ...]:
        """The local files it keeps its data in (their sizes are a metric); () for none."""
        ...

    @property
    def committed(self) -> Reader:
        """The queries of clients: what is durable and nothing else."""
        ...

    @property
    def commits(self) -> int: ...

    commit_observer: Callable[[float], None] | None
    """Told the seconds each commit took (its checks and the COMMIT, not its callbacks):
    the metrics' histogram (nerved.master.metrics), None by default."""

    @property
    def last_commit(self) -> float:
        """``time.monotonic()`` of the last commit."""
        ...

    @property
    def locked_since(self) -> float | None:
        """Since when (monotonic) another process holds the write lock, or None."""
        ...

    @property
    def dirty(self) -> bool:
        """Something was written, or a callback registered, since the last commit."""
        ...

    # -- the batch ----------------------------------------------------------------------

    def acquire(self) -> bool:
        """Hold the write lock; False, at once, while another process holds it."""
        ...

    def release(self) -> None:
        """Let go of the write lock (RuntimeError with an uncommitted batch)."""
        ...

    def after_commit(
        self, on_commit: CommitCallback, on_abort: AbortCallback | None = None
    ) -> None:
        """Run ``on_commit`` once everything written so far is durable (at the next commit,
        even if nothing is written); ``on_abort`` if that commit fails instead."""
        ...

    def commit(self) -> None:
        """Make the batch durable, then run its callbacks in order; on failure roll back,
        abort the callbacks and raise StoreError."""
        ...

    def abandon(self, exc: BaseException) -> None:
        """Roll the batch back and abort its callbacks."""
        ...

    def checkpoint(self) -> bool:
        """Idle-time housekeeping; False if there was nothing to do."""
        ...

    def shrink(self) -> None:
        """Give back what memory it can (caches), before the master forks; never raises."""
        ...

    def check_files(self) -> None:
        """Raise StoreError if its files (or a watched one) are gone from under it."""
        ...

    def watch(self, path: Path, fd: int) -> None:
        """Also check that ``path`` is still the file open as ``fd``."""
        ...

    def close(self) -> None:
        """Close, dropping a batch nobody committed."""
        ...

    # -- writes ---------------------------------------------------------------------------

    def append_log(
        self, source: str, type: str, ref_id: str | None, payload: Any, ts: int | None = None
    ) -> int:
        """Append an entry; its id, which grows with every entry."""
        ...

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
        idempotency_key: str | None = None,
        placement: str = "local",
        ts: int | None = None,
    ) -> RunRecord:
        """Insert a new run in a creating transition's status, with its log entry.

        ``placement``: ``any`` for a run any host of a shared store may claim (a queued one
        carries no host then); the row's ``host`` is the store's ``host_id`` otherwise.

        With ``idempotency_key`` (a string), the row keeps it (``RunRecord.idempotency_key``)
        and a ``key`` entry ``{"key": K}`` follows the creating entry, in the same batch (the
        creating entry keeps the trigger payload). ValueError, writing nothing, when a run of
        ``workflow`` has that key already; a run deleted by :meth:`prune_runs` frees it."""
        ...

    def transition_run(
        self,
        run_id: str,
        transition: Transition,
        *,
        payload_json: str | None = None,
        error: str | None = None,
        ts: int | None = None,
    ) -> bool:
        """Apply a labelled transition, with its log entry, if the run is in one of its
        sources; False, writing nothing, if it is not.

        The entry (type: the target status) holds ``payload_json`` as it is, else ``error``
        encoded; the row's ``error`` becomes ``error`` when given. ``tries`` and ``retry_at``
        do not change. CANCEL: ``payload_json`` ``{"reason", "uid"}`` and ``error``
        ``records.cancelled_error(reason, uid)``."""
        ...

    def record_step(self, run_id: str, record_json: str, ts: int | None = None) -> bool:
        """Append a ``step_complete`` entry (``record_json``: ``{role, prompt, event}``
        encoded, stored as it is) and count it (``steps`` + 1), only while the run is started;
        the step in flight is done: ``tries`` 0, ``retry_at`` None; ``updated_at`` = ``ts``
        (ms, default now). False, writing nothing, when the run is not started."""
        ...

    def record_failure(
        self, run_id: str, record_json: str, retry_at: int | None, ts: int | None = None
    ) -> bool:
        """Append a ``step_failed`` entry, one failed try of the step in flight
        (``record_json``: ``{role, prompt, error, try, retryAt}`` encoded, stored as it is),
        only while the run is started: ``tries`` + 1, ``retry_at`` = ``retry_at`` (ms since
        the epoch when the next try is due; None: no more tries), ``updated_at`` = ``ts`` (ms,
        default now). False, writing nothing, when the run is not started."""
        ...

    def record_input(self, run_id: str, event_json: str, ts: int | None = None) -> bool:
        """Append an ``input`` entry, an event handed to the moderator that no role returned
        (``event_json``: the event encoded; the payload text is
        ``records.input_payload(event_json)``, ``{"event":<event_json>}``), only while the run
        is started: ``tries`` 0, ``retry_at`` None, ``updated_at`` = ``ts`` (ms, default now).
        ``steps`` does not change. False, writing nothing, when the run is not started."""
        ...

    def record_wait(
        self,
        run_id: str,
        record_json: str,
        wait_for: str | None,
        wake_at: int | None,
        ts: int | None = None,
    ) -> bool:
        """Park a started run (``Transition.WAIT``): status ``waiting``, ``wait_for`` (the
        signal's name; None: a sleep) and ``wake_at`` (ms since the epoch; None: no deadline)
        set, ``tries`` 0, ``retry_at`` None, and a ``waiting`` entry holding ``record_json``
        as it is. False, writing nothing, when the run is not started."""
        ...

    def record_wake(
        self, run_id: str, event_json: str, signal: int | None = None, ts: int | None = None
    ) -> bool:
        """End a waiting run's wait (``Transition.WAKE``): status ``started``, ``wait_for``
        and ``wake_at`` None, and an ``input`` entry, ``records.input_payload(event_json,
        signal)`` (``signal``: the id of the ``signal`` entry this input delivers, so that it
        is pending no more). False, writing nothing, when the run is not waiting."""
        ...

    def copy_history(self, from_run: str, to_run: str, steps: int, ts: int | None = None) -> int:
        """Give ``to_run`` (a run just created, with no history of its own) ``from_run``'s
        history up to and including its ``steps``-th ``step_complete``: copies of those steps
        and of the ``input`` entries before it, and of the inputs after it up to the next
        step whose event is not a ``role_failed`` (what the world sent the run after that
        step, a signal, a wait's timeout, a wake, is kept; the failure it is retried for is
        not); nothing for 0. In order, as new entries of ``to_run`` stamped ``ts`` (ms,
        default now), payload texts identical; ``to_run.steps`` becomes ``steps``. Returns
        the UTF-8 bytes of the payloads copied.

        ValueError, writing nothing: ``steps`` < 0; ``from_run`` unknown or with fewer than
        ``steps`` steps; ``to_run`` unknown, the same run, or with a ``step_complete``,
        ``input`` or ``step_failed`` entry already (its ``steps`` must stay what its entries
        say)."""
        ...

    def count_attempt(self, run_id: str) -> int:
        """Count one more worker lost under a started run; the new count (0 if not started)."""
        ...

    def prune_runs(self, *, older_than: int | None, keep: int | None, limit: int) -> int:
        """Delete up to ``limit`` final runs (every status not in nerved.states.ACTIVE), with
        their entries, oldest first: those updated before ``older_than`` (ms) or not among
        the ``keep`` newest final runs. Returns how many went."""
        ...

    def prune_sense_logs(self, *, older_than: int, limit: int) -> int:
        """Delete up to ``limit`` sense entries older than ``older_than``."""
        ...

    def set_meta(self, key: str, value: str) -> None: ...

    def record_firing(self, firing: Firing) -> None:
        """Keep ``firing`` as the last of its reflex, in place of the one before."""
        ...

    def forget_firings(self, keep: Iterable[str]) -> int:
        """Delete the firings of every reflex not in ``keep`` (reflexes no longer
        configured); how many went."""
        ...

    # -- reads of the engine --------------------------------------------------------------

    def active_runs(self, run_ids: Sequence[str] | None = None) -> list[ActiveRecord]:
        """Every active run (nerved.states.ACTIVE), oldest first, each with its ``history``:
        the UTF-8 bytes of its stored trigger payload and of its ``step_complete`` and
        ``input`` payloads (what a resume reads). On a store several hosts share, this
        host's (not the queued ``placement: any`` runs: those are claimed). ``run_ids``:
        those of these runs that are active."""
        ...
