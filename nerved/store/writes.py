"""The writes of logs.db: runs created and moved by labelled transitions, steps, attempts,
log entries, retention's deletes; and the one read that belongs to the engine alone.

Run statuses change only through :class:`~nerved.states.Transition`s, applied as guarded
``UPDATE ... WHERE status IN (...)`` statements together with the log entry that records
them, in the same transaction (RFC-002 §6.2). Every write joins the batch of the current
turn (:meth:`nerved.store.sqlite.Store.commit`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nerved.states import Transition
from nerved.store.connection import Connection
from nerved.store.reads import ACTIVE_SQL, RUN_COLUMNS, RUN_WIDTH, run_from_row
from nerved.store.records import RunRecord, dumps, now_ms


class Writes:
    """The writes, over the store's own connection; mixed into :class:`~nerved.store.sqlite.Store`,
    which opens the batch (``_begin``: takes the write lock, or raises StoreBusy)."""

    _conn: Connection
    _begin: Callable[[], None]  # the Store's: opens the batch before a write

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
        not among the ``keep`` newest final runs. Active runs (nerved.states.ACTIVE) are
        never touched: every other status is final, whichever a later release adds.
        """
        if older_than is None and keep is None:
            return 0
        final = f"NOT {ACTIVE_SQL}"
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
        """Every active run (nerved.states.ACTIVE), oldest first: the order recovery must
        keep; found through the partial index ``workflow_runs_active``.

        Each with its ``history`` size, counted in SQL, so that a run too large to resume is
        known before its steps are read. (The unary ``+`` keeps SQLite on the ``ref_id``
        index: left to itself it picks ``(source, type)`` and scans every step of every run.)
        """
        rows = self._conn.execute(
            f"SELECT {RUN_COLUMNS},"
            " COALESCE(LENGTH(CAST(trigger_payload AS BLOB)), 0)"
            " + (SELECT COALESCE(SUM(LENGTH(CAST(payload AS BLOB))), 0) FROM logs"
            "    WHERE ref_id = workflow_runs.run_id AND +source = 'workflow'"
            "    AND +type = 'step_complete')"
            f" FROM workflow_runs WHERE {ACTIVE_SQL} ORDER BY seq"
        ).fetchall()
        return [run_from_row(r, history=r[RUN_WIDTH]) for r in rows]
