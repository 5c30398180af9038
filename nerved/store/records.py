"""What the store hands out: log entries, runs, and a payload that does not decode.

A leaf (no sqlite3, no backend): the user API (``ctx.logs.query`` returns
:class:`LogEntry`), the workers and the control commands import it without the store's
backend, and every backend returns these same records.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from nerved import wire
from nerved.states import RunStatus

MAX_QUERY_LIMIT: Final = wire.MAX_QUERY_LIMIT


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


def loads(text: str | None) -> Any:
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
    """Bytes of its stored trigger payload, step records and inputs, what a resume reads and
    sends; counted by :meth:`Store.active_runs` only (0 from the other reads)."""
    tries: int = 0
    """Failed tries of the step in flight (``step_failed`` entries since its last step or
    input); 0 when none failed."""
    retry_at: int | None = None
    """When the next try of the step in flight is due (ms since the epoch); None when no
    try is pending."""
    idempotency_key: str | None = None
    """The key it was triggered with (``workflow.trigger``'s ``idempotencyKey``): no other
    kept run of its workflow has it. None: triggered without one."""
    wait_for: str | None = None
    """The signal a ``waiting`` run waits for; None: it sleeps, or it does not wait."""
    wake_at: int | None = None
    """When a ``waiting`` run's wait ends (ms since the epoch): its deadline, or the end of
    its sleep; None: it waits for a signal alone, or it does not wait."""
    host: str | None = None
    """The host that drives it, on a store several hosts share (SPEC v2 §9): the one that
    triggered a ``local`` run, the last to claim or take over an ``any`` one. None: a store
    one host holds (SQLite), or an ``any`` run no host has claimed yet."""
    placement: str = "local"
    """Its workflow's ``placement`` when it was triggered: ``local`` or ``any``."""

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
            "tries": self.tries,
            "retryAt": self.retry_at,
            "idempotencyKey": self.idempotency_key,
            "waitFor": self.wait_for,
            "wakeAt": self.wake_at,
            "host": self.host,
            "placement": self.placement,
        }


class ActiveRecord(NamedTuple):
    """An active run as recovery reads it (:meth:`Storage.active_runs`): a
    :class:`RunRecord`'s fields, with its ``history`` counted. A tuple, because recovery
    reads 10,000 of them before READY=1 and a frozen dataclass takes ten times as long to
    build (each field set through ``object.__setattr__``)."""

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
    history: int
    tries: int
    retry_at: int | None
    idempotency_key: str | None
    wait_for: str | None
    wake_at: int | None
    host: str | None
    placement: str


StoredRun = RunRecord | ActiveRecord
"""A run as a store hands it out, whichever read (recovery's rule reads either)."""


@dataclass(frozen=True, slots=True)
class Firing:
    """The last firing of a cron reflex, kept so that ``catchUp`` and the schedule's listing
    survive a restart (nerved.master.cron). ``reflex`` is the reflex's identity there."""

    reflex: str
    scheduled_at: int
    """The firing it was: when the schedule said (ms since the epoch)."""
    fired_at: int
    """When nerved handled it (ms): later than ``scheduled_at`` for a catch-up at start."""
    run_id: str | None = None
    """The run it started (a workflow reflex), or None."""
    note: str | None = None
    """What became of it, when no run says: ``missed`` (nerved was down and the reflex does
    not catch up), ``computed`` (a sense's), or why the trigger was refused."""


def cancelled_error(reason: str | None, uid: int | None) -> str:
    """A cancelled run's ``error``, from its ``cancelled`` entry's ``{reason, uid}``: who
    cancelled it and why, as an operator reads it in a list.

    ``cancelled by uid 0``, ``cancelled by uid 0: <reason>``; with no uid (not asked over
    the socket) ``cancelled``, ``cancelled: <reason>``. An empty reason is no reason.
    """
    who = "cancelled" if uid is None else f"cancelled by uid {uid}"
    return f"{who}: {reason}" if reason else who


def input_payload(event_json: str, signal: int | None = None) -> str:
    """The payload text of an ``input`` entry, ``{"event":<event>}``, around the event's JSON
    text as it is (not decoded and encoded again), compact as :func:`dumps` writes; with
    ``signal``, the id of the ``signal`` entry it delivers: ``{"event":<event>,"signal":ID}``.

    What :meth:`nerved.store.interface.Storage.record_input` stores: its length is what the
    entry adds to the run's history.
    """
    tail = "}" if signal is None else f',"signal":{int(signal)}}}'
    return '{"event":' + event_json + tail


class QueueCounts(NamedTuple):
    """The runs of a ``placement: any`` workflow over every host, counted under the hosts'
    write lock (nerved.store.postgres.queue.counts): what admission weighs a new run
    against. Counts are capped where admission compares them with no more."""

    live: int  # started or waiting, over every host (at most the concurrency)
    mine: int  # of those, this host's (at most the concurrency)
    queued: int  # queued, no host yet (at most maxQueue)
    share: int  # this host's share of the slots: concurrency / live hosts serving it, rounded up


class HostRecord(NamedTuple):
    """A host's row, as ``status`` shows it: ms by the database's clock."""

    host_id: str
    epoch: int
    lease_until: int
    renewed_at: int
    started_at: int
    pid: int
    version: str
    now: int  # the database's clock when read

    @property
    def live(self) -> bool:
        return self.lease_until > self.now

    def to_wire(self, own: str, since_read_ms: int = 0) -> dict[str, object]:
        """``status``'s entry; ``since_read_ms``: how long ago the row was read (ages and
        liveness are as of now)."""
        now = self.now + since_read_ms
        return {
            "host": self.host_id,
            "self": self.host_id == own,
            "leaseAgeMs": now - self.renewed_at,
            "live": self.lease_until > now,
            "pid": self.pid,
            "version": self.version,
            "startedAt": self.started_at,
        }
