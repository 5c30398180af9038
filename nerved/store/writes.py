"""The writes of logs.db: runs created and moved by labelled transitions, steps, failed tries
and inputs, attempts, log entries, a history copied, retention's deletes; and the one read
that belongs to the engine alone.

Run statuses change only through :class:`~nerved.states.Transition`s, applied as guarded
``UPDATE ... WHERE status IN (...)`` statements together with the log entry that records
them, in the same transaction (RFC-002 §6.2). Every write joins the batch of the current
turn (:meth:`nerved.store.sqlite.Store.commit`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from nerved.states import RunStatus, Transition
from nerved.store.reads import (
    ACTIVE_SQL,
    HISTORY_SQL,
    RUN_COLUMNS,
    status_of,
)
from nerved.store.records import (
    ActiveRecord,
    Firing,
    RunRecord,
    dumps,
    input_payload,
    loads,
    now_ms,
)
from nerved.store.refs import REF_KEY, ref_key, turned
from nerved.store.sql import Connection

# RUN_COLUMNS split where ActiveRecord has its ``history`` (after ``seq``).
_BEFORE_HISTORY, _AFTER_HISTORY = (
    ", ".join(part) for part in (RUN_COLUMNS.split(", ")[:11], RUN_COLUMNS.split(", ")[11:])
)

# A run's entries of some types, on the ``logs_ref`` index (the unary ``+``, see
# :meth:`Writes.active_runs`), given ref_key(run id): its steps; what a resume replays; all
# that makes a history.
_STEPS_OF = f"{REF_KEY} = ? AND +source = 'workflow' AND +type = 'step_complete'"
_HISTORY_OF = f"{REF_KEY} = ? AND +source = 'workflow' AND +{HISTORY_SQL}"
_KEPT = (
    "(id <= ? OR (id < COALESCE(?, id + 1) AND id > ? AND type = 'input' AND json_valid(payload)"
    " AND json_extract(payload, '$.event.type') IS DISTINCT FROM 'role_failed'))"
)
"""What a retry from step K copies (``copy_history``): the entries up to the K-th step, and
the inputs after it, up to the next step, that the world sent (a signal, a wait's timeout, a
wake), not the ``role_failed`` of the failure it is retried for."""
_OWN_RUNS = " AND (host = ? OR (host IS NULL AND placement = 'local'))"
"""A shared store's active runs that are this host's (one parameter: its id): those it
drives, and ``local`` ones of a release before hosts; not queued ``any`` runs (claimed)."""
_ANY_HISTORY_OF = (
    f"{REF_KEY} = ? AND +source = 'workflow' AND +type IN ('step_complete', 'input', 'step_failed')"
)


class Writes:
    """The writes, over the store's own connection; mixed into :class:`~nerved.store.sqlite.Store`,
    which opens the batch (``_begin``: takes the write lock, or raises StoreBusy)."""

    _conn: Connection
    _begin: Callable[[], None]  # the Store's: opens the batch before a write
    FIRING_KEY = "reflex"  # cron_firings' key, ON CONFLICT's target (PostgreSQL: host, reflex)
    host_id: str | None = None  # this host, on a shared store (its lease taken); else None

    # -- writes -------------------------------------------------------------------------

    def append_log(
        self, source: str, type: str, ref_id: str | None, payload: Any, ts: int | None = None
    ) -> int:
        self._begin()
        row = self._conn.execute(
            "INSERT INTO logs (source, type, ref_id, payload, ts) VALUES (?, ?, ?, ?, ?)"
            " RETURNING id",
            (source, type, ref_id, None if payload is None else dumps(payload), ts or now_ms()),
        ).fetchone()
        return int(row[0])

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
        """Insert a new run in the transition's status, with the log entry recording it.

        ``placement``: ``any`` for a run any host of a shared store may claim (SPEC v2 §9):
        queued, it carries no host (:attr:`host_id` otherwise).

        ``payload_json`` is ``trigger_payload`` as :func:`dumps` encodes it, when the caller
        has it (it checked the payload on admission): it is stored as it is, not encoded again.
        With an ``idempotency_key``, a ``key`` entry ``{"key": K}`` follows the creating one
        (that one keeps the trigger payload), so that the row's key is derived from the logs;
        ValueError, writing nothing, when a run of ``workflow`` has that key already (the
        unique index ``workflow_runs_key`` holds it too, whoever writes).
        """
        if not transition.creates:
            raise ValueError(f"{transition.name} does not create a run")
        ts = ts or now_ms()
        status = transition.target
        if payload_json is None and trigger_payload is not None:
            payload_json = dumps(trigger_payload)
        key_json = None
        if idempotency_key is not None:
            key_json = dumps({"key": idempotency_key})  # may raise: before any write
            holder = self._conn.execute(
                "SELECT run_id FROM workflow_runs"
                " WHERE workflow = ? AND idempotency_key = ? AND idempotency_key IS NOT NULL",
                (workflow, idempotency_key),
            ).fetchone()
            if holder is not None:
                raise ValueError(
                    f"run {holder[0]} of workflow {workflow!r} has that idempotency key already"
                )
        host = None if placement == "any" and status is RunStatus.QUEUED else self.host_id
        self._begin()
        seq = self._conn.execute(
            "INSERT INTO workflow_runs (run_id, workflow, status, created_at, updated_at,"
            " trigger_payload, error, retry_of, idempotency_key, host, placement)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING seq",
            (
                run_id,
                workflow,
                status,
                ts,
                ts,
                payload_json,
                reason,
                retry_of,
                idempotency_key,
                host,
                placement,
            ),
        ).fetchone()[0]
        self._conn.execute(
            "INSERT INTO logs (source, type, ref_id, payload, ts) VALUES ('workflow', ?, ?, ?, ?)",
            (status, run_id, payload_json if reason is None else dumps(reason), ts),
        )
        if key_json is not None:
            self._conn.execute(
                "INSERT INTO logs (source, type, ref_id, payload, ts)"
                " VALUES ('workflow', 'key', ?, ?, ?)",
                (run_id, key_json, ts),
            )
        return RunRecord(
            run_id, workflow, status, ts, ts, trigger_payload, 0, reason, 0, retry_of,
            int(seq), idempotency_key=idempotency_key, host=host, placement=placement,
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
        A move to a final status drops a pending retry (``retry_at`` NULL): none will come;
        ``wait_for`` and ``wake_at`` are NULL but in ``waiting``.
        """
        if transition.creates:
            raise ValueError(f"{transition.name} creates a run; use create_run")
        ts = ts or now_ms()
        sources = sorted(transition.sources)
        marks = ",".join("?" * len(sources))
        waits = transition.target is RunStatus.WAITING
        logged_json = payload_json
        if logged_json is None and error is not None:
            logged_json = dumps(error)  # may raise: before any write
        self._begin()
        cur = self._conn.execute(
            f"UPDATE workflow_runs SET status = ?, updated_at = ?, error = COALESCE(?, error),"
            f" retry_at = CASE WHEN ? THEN NULL ELSE retry_at END,"
            f" wait_for = CASE WHEN ? THEN wait_for END,"
            f" wake_at = CASE WHEN ? THEN wake_at END"
            f" WHERE run_id = ? AND status IN ({marks})",
            (
                transition.target,
                ts,
                error,
                transition.target.is_final,
                *[waits] * 2,
                run_id,
                *sources,
            ),
        )
        if cur.rowcount != 1:
            return False
        self._conn.execute(
            "INSERT INTO logs (source, type, ref_id, payload, ts) VALUES ('workflow', ?, ?, ?, ?)",
            (transition.target, run_id, logged_json, ts),
        )
        return True

    def record_step(self, run_id: str, record_json: str, ts: int | None = None) -> bool:
        """Append a step and count it, only while the run is started; the step in flight is
        done, so its failed tries are forgotten (``tries`` 0, ``retry_at`` NULL).

        ``record_json`` is the step ``{"role", "prompt", "event"}`` already encoded: the
        caller checks it, and what it adds to the run's history, before anything is written.
        """
        return self._guarded_append(
            run_id,
            "steps = steps + 1, tries = 0, retry_at = NULL",
            (),
            "step_complete",
            record_json,
            ts,
        )

    def record_failure(
        self, run_id: str, record_json: str, retry_at: int | None, ts: int | None = None
    ) -> bool:
        """Count a failed try of the step in flight, only while the run is started.

        ``tries`` goes up by one and ``retry_at`` (ms since the epoch, None: no more tries)
        is set; ``record_json``, ``{role, prompt, error, try, retryAt}`` already encoded, is
        appended as a ``step_failed`` entry as it is.
        """
        return self._guarded_append(
            run_id, "tries = tries + 1, retry_at = ?", (retry_at,), "step_failed", record_json, ts
        )

    def record_input(self, run_id: str, event_json: str, ts: int | None = None) -> bool:
        """Append an ``input`` entry, an event handed to the moderator that no role returned,
        only while the run is started; the step in flight is over (``tries`` 0, ``retry_at``
        NULL). ``event_json`` is the event already encoded; the payload is
        :func:`~nerved.store.records.input_payload` of it."""
        return self._guarded_append(
            run_id, "tries = 0, retry_at = NULL", (), "input", input_payload(event_json), ts
        )

    def record_wait(
        self,
        run_id: str,
        record_json: str,
        wait_for: str | None,
        wake_at: int | None,
        ts: int | None = None,
    ) -> bool:
        """Park a started run (Transition.WAIT): ``waiting``, for the signal ``wait_for``
        (None: a sleep) until ``wake_at`` (ms; None: no deadline), with its ``waiting`` entry
        (``record_json``: ``{wait, timeout, sleep, until}`` already encoded, stored as it is).
        False, writing nothing, when the run is not started."""
        return self._guarded_append(
            run_id,
            "status = 'waiting', wait_for = ?, wake_at = ?, tries = 0, retry_at = NULL",
            (wait_for, wake_at),
            "waiting",
            record_json,
            ts,
        )

    def record_wake(
        self, run_id: str, event_json: str, signal: int | None = None, ts: int | None = None
    ) -> bool:
        """End a waiting run's wait (Transition.WAKE): ``started`` again, and the event that
        ended it appended as an ``input`` entry (:func:`input_payload` of ``event_json``, with
        ``signal``: the id of the ``signal`` entry it delivers). False, writing nothing, when
        the run is not waiting."""
        return self._guarded_append(
            run_id,
            "status = 'started', wait_for = NULL, wake_at = NULL",
            (),
            "input",
            input_payload(event_json, signal),
            ts,
            status="waiting",
        )

    def _guarded_append(
        self,
        run_id: str,
        changes: str,
        args: tuple[Any, ...],
        type: str,
        payload_json: str,
        ts: int | None,
        status: str = "started",
    ) -> bool:
        """Change the row of a run in ``status`` (``changes``, an SQL SET list with ``args``)
        and append its entry, both with ``ts``; False, writing nothing, if it is not in it."""
        ts = ts or now_ms()
        self._begin()
        cur = self._conn.execute(
            f"UPDATE workflow_runs SET {changes}, updated_at = ? WHERE run_id = ? AND status = ?",
            (*args, ts, run_id, status),
        )
        if cur.rowcount != 1:
            return False
        self._conn.execute(
            "INSERT INTO logs (source, type, ref_id, payload, ts) VALUES ('workflow', ?, ?, ?, ?)",
            (type, run_id, payload_json, ts),
        )
        return True

    def copy_history(self, from_run: str, to_run: str, steps: int, ts: int | None = None) -> int:
        """Give ``to_run`` the history of ``from_run`` up to its ``steps``-th step: copies of
        its ``step_complete`` entries up to that one, of its ``input`` entries before it, and
        of the inputs after it (up to the next step) but a ``role_failed`` (:data:`_KEPT`;
        none of it for 0), in order, payloads as they are, stamped ``ts``; ``to_run.steps``
        becomes ``steps``. Returns the bytes (UTF-8) of the payloads copied.

        ValueError, writing nothing, when ``steps`` is negative, ``from_run`` is unknown or
        has fewer steps, or ``to_run`` is unknown, is ``from_run``, or has a history of its own
        (a step, an input or a failed try): its ``steps`` must stay what its entries say.
        """
        if steps < 0:
            raise ValueError(f"cannot copy {steps} steps")
        if from_run == to_run:
            raise ValueError(f"cannot copy the history of run {from_run!r} into itself")
        found = self._conn.execute("SELECT 1 FROM workflow_runs WHERE run_id = ?", (from_run,))
        if found.fetchone() is None:
            raise ValueError(f"no run {from_run!r}")
        own = self._conn.execute(
            f"SELECT EXISTS (SELECT 1 FROM logs WHERE {_ANY_HISTORY_OF}) FROM workflow_runs"
            " WHERE run_id = ?",
            (ref_key(to_run), to_run),
        ).fetchone()
        if own is None:
            raise ValueError(f"no run {to_run!r}")
        if own[0]:
            raise ValueError(f"run {to_run!r} has a history of its own")
        if steps == 0:
            return 0
        last = self._conn.execute(
            f"SELECT id FROM logs WHERE {_STEPS_OF} ORDER BY id LIMIT 1 OFFSET ?",
            (ref_key(from_run), steps - 1),
        ).fetchone()
        if last is None:
            raise ValueError(f"run {from_run!r} has fewer than {steps} steps")
        following = self._conn.execute(
            f"SELECT id FROM logs WHERE {_STEPS_OF} AND id > ? ORDER BY id LIMIT 1",
            (ref_key(from_run), last[0]),
        ).fetchone()
        upto = (following[0] if following else None, last[0])  # the inputs before the next step
        ts = ts or now_ms()
        self._begin()
        size = self._conn.execute(
            "SELECT COALESCE(SUM(LENGTH(CAST(payload AS BLOB))), 0) FROM logs"
            f" WHERE {_HISTORY_OF} AND {_KEPT}",
            (ref_key(from_run), last[0], *upto),
        ).fetchone()[0]
        self._conn.execute(
            "INSERT INTO logs (source, type, ref_id, payload, ts)"
            f" SELECT 'workflow', type, ?, payload, ? FROM logs WHERE {_HISTORY_OF} AND {_KEPT}"
            " ORDER BY id",
            (to_run, ts, ref_key(from_run), last[0], *upto),
        )
        self._conn.execute(
            "UPDATE workflow_runs SET steps = ?, updated_at = ? WHERE run_id = ?",
            (steps, ts, to_run),
        )
        return int(size)

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
            f"DELETE FROM logs WHERE source = 'workflow' AND {REF_KEY} IN ({marks})",
            [ref_key(victim) for victim in victims],
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

    def record_firing(self, firing: Firing) -> None:
        self._begin()
        row = (firing.scheduled_at, firing.fired_at, firing.run_id, firing.note)
        self._conn.execute(
            "INSERT INTO cron_firings (host, reflex, scheduled_at, fired_at, run_id, note)"
            f" VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT ({self.FIRING_KEY}) DO UPDATE SET"
            " scheduled_at = excluded.scheduled_at, fired_at = excluded.fired_at,"
            " run_id = excluded.run_id, note = excluded.note",
            (self.host_id or "", firing.reflex, *row),
        )

    def forget_firings(self, keep: Iterable[str]) -> int:
        kept, host = set(keep), self.host_id or ""
        rows = self._conn.execute(
            "SELECT reflex FROM cron_firings WHERE host = ?", (host,)
        ).fetchall()
        gone = [row[0] for row in rows if row[0] not in kept]
        for reflex in gone:
            self._begin()
            self._conn.execute(
                "DELETE FROM cron_firings WHERE host = ? AND reflex = ?", (host, reflex)
            )
        return len(gone)

    # -- reads of the engine ---------------------------------------------------------

    def active_runs(self, run_ids: Sequence[str] | None = None) -> list[ActiveRecord]:
        """Every active run (nerved.states.ACTIVE), oldest first: the order recovery must
        keep; found through the partial index ``workflow_runs_active``. On a store several
        hosts share (:attr:`host_id` set), this host's alone: those it drives, and none of
        the ``any`` runs still queued (claimed, not recovered: nerved.store.postgres.queue).

        Each with its ``history`` size (trigger payload, steps and inputs), counted in SQL,
        so that a run too large to resume is known before its entries are read. (The unary
        ``+`` keeps SQLite on the ``logs_ref`` index: left to itself it picks ``(source,
        type)`` and scans every step of every run.) The columns come in ActiveRecord's order.

        ``run_ids``: those runs alone, if active (runs this host has just claimed or taken
        over from another: nerved.store.postgres.queue).
        """
        where, params = ACTIVE_SQL, tuple(run_ids or ())
        if run_ids is not None:
            if not run_ids:
                return []
            where += f" AND run_id IN ({','.join('?' * len(run_ids))})"
        elif self.host_id is not None:
            where, params = where + _OWN_RUNS, (self.host_id,)
        rows = self._conn.execute(
            f"SELECT {_BEFORE_HISTORY},"
            " COALESCE(LENGTH(CAST(trigger_payload AS BLOB)), 0)"
            " + (SELECT COALESCE(SUM(LENGTH(CAST(payload AS BLOB))), 0) FROM logs"
            f"    WHERE {REF_KEY} = {turned('run_id')}"
            "     AND +source = 'workflow'"
            f"   AND +{HISTORY_SQL}),"
            f" {_AFTER_HISTORY} FROM workflow_runs WHERE {where} ORDER BY seq",
            params,
        ).fetchall()
        make = ActiveRecord._make
        return [make((r[0], r[1], status_of(r[2]), r[3], r[4], loads(r[5]), *r[6:])) for r in rows]
