"""The queries of logs.db, over one connection: the store's own, or its committed view."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from typing import Any, Final

from nerved import wire
from nerved.states import ACTIVE, RunStatus
from nerved.store.records import (
    MAX_QUERY_LIMIT,
    Firing,
    LogEntry,
    RunRecord,
    Unreadable,
    loads,
)
from nerved.store.refs import REF_KEY, ref_key, turned
from nerved.store.sql import Connection

RUN_COLUMNS: Final = (
    "run_id, workflow, status, created_at, updated_at, trigger_payload, steps, error, "
    "attempts, retry_of, seq, tries, retry_at, idempotency_key, wait_for, wake_at, host, placement"
)
_LISTED_COLUMNS: Final = RUN_COLUMNS.replace("trigger_payload", "NULL")
RUN_WIDTH: Final = RUN_COLUMNS.count(",") + 1  # a column added after them is at this index


def _in(column: str, values: Iterable[str]) -> str:
    """``column IN ('a', 'b')``: SQL literals of nerve's own names (no quote in them)."""
    return f"{column} IN ({', '.join(repr(str(v)) for v in values)})"


ACTIVE_SQL: Final = _in("status", sorted(ACTIVE))
"""``status IN ('queued', 'started', 'waiting')``: the active runs (nerved.states.ACTIVE) as the
partial index ``workflow_runs_active`` spells them. SQLite uses a partial index only for a
WHERE that is written as its own (literals, in its order), not for bound parameters."""

HISTORY_TYPES: Final = ("step_complete", "input")
"""The entries of a run that a resume replays: each carries an ``event``."""
HISTORY_SQL: Final = _in("type", HISTORY_TYPES)
"""``type IN ('step_complete', 'input')``."""


_STATUSES: Final = {str(status): status for status in RunStatus}


def status_of(text: str) -> RunStatus:
    """A stored status, looked up rather than parsed (recovery reads 10,000 before READY=1);
    ValueError, naming it, for one nerve does not know."""
    return _STATUSES.get(text) or RunStatus(text)


def run_from_row(row: Sequence[Any], history: int = 0) -> RunRecord:
    """A run from its ``RUN_COLUMNS``, the fields in order."""
    status = status_of(row[2])
    return RunRecord(
        row[0], row[1], status, row[3], row[4], loads(row[5]), row[6], row[7], row[8], row[9],
        row[10], history, row[11], row[12], row[13], row[14], row[15], row[16], row[17],
    )  # fmt: skip


def entry_from_row(row: Sequence[Any]) -> LogEntry:
    return LogEntry(row[0], row[1], row[2], row[3], loads(row[4]), row[5])


def _cap(limit: int | None) -> int:
    """At most MAX_QUERY_LIMIT rows; SQLite would read a negative LIMIT as no limit at all."""
    if limit is None or limit < 0:
        return MAX_QUERY_LIMIT
    return min(limit, MAX_QUERY_LIMIT)


def _first_id_since(conn: Connection, ts: int) -> int:
    """The first entry at or after ``ts``, by bisecting ids (they grow with time).

    Entries are appended with the master's clock, so ts is non-decreasing in id unless the
    wall clock was stepped back; then the boundary is approximate, never an error.
    """
    lo, hi = conn.execute(  # one aggregate a query: SQLite seeks each, where MIN and MAX
        "SELECT COALESCE((SELECT MIN(id) FROM logs), 0), COALESCE((SELECT MAX(id) FROM logs), 0)"
    ).fetchone()  # together scan the whole of an index
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


def query_page(
    conn: Connection,
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

    A run's entries are read on the ``logs_ref`` index (the unary ``+``): a run has few, and
    on ``(source, type)`` SQLite would walk that type's entries of every run to find them.
    """
    where: list[str] = []
    args: list[Any] = []
    run = "+" if source == "workflow" and ref_id is not None else ""
    for column, value in ((f"{run}source", source), (f"{run}type", type), (REF_KEY, ref_id)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(ref_key(value) if column is REF_KEY else value)
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
    if conn.reads_ahead:
        entries, more = _sized_page(conn, where, args, n, forward)
    else:
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


def _sized_page(
    conn: Connection, where: list[str], args: list[Any], n: int, forward: bool
) -> tuple[list[LogEntry], bool]:
    """:func:`query_page`'s page over a connection that reads a whole result before its
    first row (``reads_ahead``: psycopg's): the sizes of the LIMIT's payloads first, then only
    the rows :func:`_read_page` takes, so that a page of 10,000 entries of 1 MiB each does not
    bring 10 GB into the master to answer 4 MiB."""
    order = "ASC" if forward else "DESC"
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    sizes = conn.execute(
        f"SELECT id, COALESCE(LENGTH(CAST(payload AS BLOB)), 0) FROM logs {clause}"
        f" ORDER BY id {order} LIMIT ?",
        (*args, n + 1),
    ).fetchall()
    taken: list[int] = []
    room = wire.RESULT_BUDGET
    for row_id, size in sizes:  # _read_page's rule, on the sizes alone
        if len(taken) == n or (taken and size > room):
            break
        room -= size
        taken.append(int(row_id))
    if not taken:
        return [], False
    bounded = " AND ".join([*where, "id >= ? AND id <= ?"])
    rows = conn.execute(
        f"SELECT id, source, type, ref_id, payload, ts FROM logs WHERE {bounded}"
        f" ORDER BY id {order}",
        (*args, min(taken), max(taken)),
    ).fetchall()
    entries, _ = _read_page(rows, len(taken))
    return entries, len(taken) < len(sizes)


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
            payload = loads(text)
        entries.append(LogEntry(row[0], row[1], row[2], row[3], payload, row[5]))
    return entries, False


def _run_where(
    statuses: Iterable[RunStatus] | None, workflow: str | None, host: str | None
) -> tuple[str, list[Any]] | None:
    """The WHERE clause (empty for none) of the runs :meth:`Reads.list_runs` selects, and
    its parameters; None when no run can match (no status wanted: PostgreSQL refuses an
    empty IN list).

    Statuses that are all active are also written as :data:`ACTIVE_SQL`, the predicate of the
    partial indexes (SQLite's ``workflow_runs_active``; PostgreSQL's ``workflow_runs_host``,
    which a host's active runs, the default listing with ``--host``, are read on): neither
    planner proves a partial index's predicate from bound parameters.
    """
    where: list[str] = []
    args: list[Any] = []
    if statuses is not None:
        wanted = sorted(set(statuses))
        if not wanted:
            return None
        if set(wanted) <= ACTIVE:
            where.append(ACTIVE_SQL)
        where.append(f"status IN ({','.join('?' * len(wanted))})")
        args.extend(wanted)
    if workflow is not None:
        where.append("workflow = ?")
        args.append(workflow)
    if host is not None:
        where.append("host = ?")  # NULL (SQLite's runs, a queued any run) is no host's
        args.append(host)
    return (f"WHERE {' AND '.join(where)}" if where else ""), args


class Reads:
    """The queries, over one connection: the store's own, or :attr:`Store.committed`."""

    _conn: Connection

    host_id: str | None = None
    """The host whose cron firings :meth:`firings` reads, on a store several hosts share;
    None for one a single host holds."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def firings(self) -> dict[str, Firing]:
        """This host's cron firings (a shared store keeps each host's: its reflexes are its
        own), by reflex."""
        rows = self._conn.execute(
            "SELECT reflex, scheduled_at, fired_at, run_id, note FROM cron_firings WHERE host = ?",
            (self.host_id or "",),
        ).fetchall()
        return {r[0]: Firing(r[0], r[1], r[2], r[3], r[4]) for r in rows}

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
        entries, _ = query_page(
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
            f"SELECT {RUN_COLUMNS} FROM workflow_runs WHERE run_id = ?", (run_id,)
        ).fetchone()
        return None if row is None else run_from_row(row)

    def find_runs(self, prefix: str, limit: int = 2) -> list[RunRecord]:
        """Runs whose id starts with ``prefix`` (an index range scan, not LIKE)."""
        rows = self._conn.execute(
            f"SELECT {RUN_COLUMNS} FROM workflow_runs WHERE run_id >= ? AND run_id < ?"
            " ORDER BY run_id LIMIT ?",
            (prefix, prefix + "\U0010ffff", limit),
        ).fetchall()
        return [run_from_row(r) for r in rows]

    def list_runs(
        self,
        *,
        statuses: Iterable[RunStatus] | None = None,
        workflow: str | None = None,
        host: str | None = None,
        limit: int | None = 100,
    ) -> list[RunRecord]:
        """Newest first, as an operator reads a list; ``trigger_payload`` is not read (None).

        A list never shows payloads: reading up to 10,000 of them (a MiB each) only to drop
        them would stall the loop. ``host``: only the runs whose ``host`` is that (none on a
        store a single host holds, whose runs have no host).
        """
        where = _run_where(statuses, workflow, host)
        if where is None:
            return []
        clause, args = where
        n = _cap(limit)
        rows = self._conn.execute(
            f"SELECT {_LISTED_COLUMNS} FROM workflow_runs {clause} ORDER BY seq DESC LIMIT ?",
            (*args, n),
        ).fetchall()
        return [run_from_row(r) for r in rows]

    def run_by_key(self, workflow: str, key: str) -> RunRecord | None:
        """The kept run of ``workflow`` triggered with idempotency key ``key``, if any (on
        the unique partial index ``workflow_runs_key``)."""
        row = self._conn.execute(
            f"SELECT {RUN_COLUMNS} FROM workflow_runs"
            " WHERE workflow = ? AND idempotency_key = ? AND idempotency_key IS NOT NULL",
            (workflow, key),
        ).fetchone()
        return None if row is None else run_from_row(row)

    def run_steps_page(self, run_id: str, after_id: int = 0) -> tuple[list[LogEntry], bool]:
        """One run's ``step_complete`` and ``input`` entries after ``after_id``, in id order,
        a page of them (:func:`_read_page`), and whether more follow: what resuming it
        replays (not its log lines or failed tries, however many).

        (The unary ``+`` keeps SQLite on the ``logs_ref`` index: see ``Writes.active_runs``.)
        """
        with contextlib.closing(
            self._conn.execute(
                "SELECT id, source, type, ref_id, payload, ts FROM logs"
                f" WHERE {REF_KEY} = ? AND id > ? AND +source = 'workflow' AND +{HISTORY_SQL}"
                " ORDER BY id LIMIT ?",
                (ref_key(run_id), after_id, MAX_QUERY_LIMIT + 1),
            )
        ) as rows:
            return _read_page(rows, MAX_QUERY_LIMIT)

    def run_history_page(self, run_id: str, after_id: int = 0) -> tuple[list[LogEntry], bool]:
        """One run's entries after ``after_id``, oldest first, as many as one answer carries
        (:func:`_read_page`), and whether more follow: ``workflow.inspect`` pages on them."""
        return query_page(
            self._conn, source="workflow", ref_id=run_id, after_id=after_id, limit=None
        )

    def run_history(
        self,
        run_id: str,
        *,
        after_id: int | None = None,
        before_id: int | None = None,
        limit: int = 100,
    ) -> tuple[list[LogEntry], int, bool]:
        """A page of one run's entries, oldest first: the first ``limit`` after ``after_id``
        when given, else the newest ``limit`` (before ``before_id`` if given), read from the
        oldest of them on (:func:`_read_page`: a page cut by the payload budget leaves out
        its newest). Also the number of the run's entries before the page's first, and
        whether one follows its last (past ``before_id`` too): both from the ``logs_ref``
        index, whatever the run's length. The bounds of an empty page are its params'.
        """
        n = max(1, _cap(limit))
        key = ref_key(run_id)
        if after_id is None:
            # The newest n: where they begin, reading n ids back on the index.
            row = self._conn.execute(
                f"SELECT id FROM logs WHERE {REF_KEY} = ? AND id < ? AND +source = 'workflow'"
                " ORDER BY id DESC LIMIT 1 OFFSET ?",
                (key, wire.MAX_INTEGER if before_id is None else before_id, n - 1),
            ).fetchone()
            after_id = 0 if row is None else int(row[0]) - 1
        entries, _ = query_page(
            self._conn,
            source="workflow",
            ref_id=run_id,
            after_id=after_id,
            before_id=before_id,
            limit=n,
        )
        # An empty page's bounds are after_id's (never after_id + 1: it may be 2**63 - 1).
        below, first = ("<", entries[0].id) if entries else ("<=", after_id)
        last = entries[-1].id if entries else after_id
        earlier = self._conn.execute(
            f"SELECT COUNT(*) FROM logs WHERE {REF_KEY} = ? AND id {below} ?"
            " AND +source = 'workflow'",
            (key, first),
        ).fetchone()[0]
        later = self._conn.execute(
            f"SELECT 1 FROM logs WHERE {REF_KEY} = ? AND id > ? AND +source = 'workflow' LIMIT 1",
            (key, last),
        ).fetchone()
        return entries, int(earlier), later is not None

    def pending_signals(
        self, run_id: str, name: str | None = None, limit: int = MAX_QUERY_LIMIT
    ) -> list[LogEntry]:
        """The run's ``signal`` entries that no ``input`` entry of it delivered (its
        ``signal`` field names the entry's id), oldest first, up to ``limit``; only those
        named ``name`` when given. A payload that is not JSON is neither a delivery nor a
        signal of any name (``json_valid``: ``json_extract`` would raise on it)."""
        key = ref_key(run_id)
        # Most runs were never signalled: one pass over the run's entries says so, before the
        # query below reads all its inputs as well (SQLite makes the NOT IN list up front).
        if not self._conn.execute(
            f"SELECT 1 FROM logs WHERE {REF_KEY} = ? AND +source = 'workflow'"
            " AND +type = 'signal' LIMIT 1",
            (key,),
        ).fetchone():
            return []
        named = "" if name is None else " AND json_extract(payload, '$.name') = ?"
        with contextlib.closing(
            self._conn.execute(
                "SELECT id, source, type, ref_id, payload, ts FROM logs"
                f" WHERE {REF_KEY} = ? AND +source = 'workflow' AND +type = 'signal'"
                f" AND json_valid(payload){named}"
                " AND id NOT IN (SELECT CAST(json_extract(payload, '$.signal') AS BIGINT) FROM logs"
                f"   WHERE {REF_KEY} = ? AND +source = 'workflow' AND +type = 'input'"
                "   AND json_valid(payload) AND json_extract(payload, '$.signal') IS NOT NULL)"
                " ORDER BY id LIMIT ?",
                (key, *(() if name is None else (name,)), key, _cap(limit)),
            )
        ) as rows:
            return [entry_from_row(row) for row in rows]

    def signalled_runs(self) -> set[str]:
        """The runs with a pending signal (see :meth:`pending_signals`), in one query on the
        ``(source, type)`` index: what recovery asks instead of once per waiting run."""
        # Each signal is looked for among its own run's inputs (on the ``logs_ref`` index), not
        # among every input of the database: PostgreSQL's json_valid and json_extract cost a
        # subtransaction a call, and at a million inputs the query met its statement timeout,
        # failing recovery at every start. An input delivers only its own run's signals (a
        # retry's copies name the old run's, which the old run's own input delivered).
        rows = self._conn.execute(
            "SELECT DISTINCT s.ref_id FROM logs AS s WHERE s.source = 'workflow'"
            " AND s.type = 'signal' AND json_valid(s.payload) AND NOT EXISTS"
            f"  (SELECT 1 FROM logs WHERE {REF_KEY} = {turned('s.ref_id')}"
            "   AND +source = 'workflow' AND +type = 'input' AND json_valid(payload)"
            "   AND CAST(json_extract(payload, '$.signal') AS BIGINT) = s.id)"
        )
        return {str(row[0]) for row in rows}

    def count_runs(self, host: str | None = None) -> dict[tuple[str, RunStatus], int]:
        """The runs by workflow and status; with ``host``, only those whose ``host`` is that
        (:meth:`list_runs`'s filter: ``workflow.count`` counts what ``workflow.list`` lists)."""
        clause, args = _run_where(None, None, host) or ("", [])
        rows = self._conn.execute(
            f"SELECT workflow, status, COUNT(*) FROM workflow_runs {clause}"
            " GROUP BY workflow, status",
            args,
        ).fetchall()
        return {(r[0], RunStatus(r[1])): int(r[2]) for r in rows}
