"""Run statuses and the transitions between them.

A leaf module (it imports nothing from nerve) so that the store, the engine, the control
commands and nervectl all agree on one vocabulary. Every transition the engine makes is
named here with a label; the store enforces it with a guarded UPDATE, so a transition that
is not in this table can never reach logs.db.
"""

from __future__ import annotations

import enum


class RunStatus(enum.StrEnum):
    QUEUED = "queued"
    STARTED = "started"
    WAITING = "waiting"  # its moderator waits for a signal or a time: a slot, no worker
    COMPLETED = "completed"
    FAILED = "failed"
    CRASHED = "crashed"
    DROPPED = "dropped"
    CANCELLED = "cancelled"

    @property
    def is_active(self) -> bool:
        return self in ACTIVE

    @property
    def is_final(self) -> bool:
        return self not in ACTIVE


ACTIVE: frozenset[RunStatus] = frozenset({RunStatus.QUEUED, RunStatus.STARTED, RunStatus.WAITING})
FINAL: frozenset[RunStatus] = frozenset(RunStatus) - ACTIVE


_NEW: frozenset[RunStatus] = frozenset()  # the source of the moves that create a run


class Transition(enum.Enum):
    """Every labelled move of a run: (label, from-statuses, to-status).

    ``from`` is empty for the moves that create a run.
    """

    ENQUEUE = ("a trigger found every slot busy", _NEW, RunStatus.QUEUED)
    START = ("a trigger found a free slot", _NEW, RunStatus.STARTED)
    REJECT = (
        "a trigger found every slot busy under overflow: drop",
        _NEW,
        RunStatus.DROPPED,
    )
    DISPATCH = (
        "a slot freed for the oldest queued run",
        frozenset({RunStatus.QUEUED}),
        RunStatus.STARTED,
    )
    EVICT = (
        "the queue was full and this was its oldest run",
        frozenset({RunStatus.QUEUED}),
        RunStatus.DROPPED,
    )
    WITHDRAW = (
        "its workflow was removed while it waited",
        frozenset({RunStatus.QUEUED, RunStatus.WAITING}),
        RunStatus.DROPPED,
    )
    COMPLETE = ("the moderator returned None", frozenset({RunStatus.STARTED}), RunStatus.COMPLETED)
    FAIL = (
        "a role, the moderator or an event broke a rule",
        frozenset({RunStatus.STARTED, RunStatus.WAITING}),
        RunStatus.FAILED,
    )
    CRASH = ("its worker died under it", frozenset({RunStatus.STARTED}), RunStatus.CRASHED)
    UNRESUMABLE = (
        "its stored history can no longer be resumed",
        frozenset({RunStatus.QUEUED, RunStatus.STARTED, RunStatus.WAITING}),
        RunStatus.FAILED,
    )
    CANCEL = (
        "an operator cancelled it",
        frozenset({RunStatus.QUEUED, RunStatus.STARTED, RunStatus.WAITING}),
        RunStatus.CANCELLED,
    )
    WAIT = (
        "its moderator waits for a signal, or sleeps",
        frozenset({RunStatus.STARTED}),
        RunStatus.WAITING,
    )
    WAKE = (
        "its wait ended: the signal came, or its deadline passed",
        frozenset({RunStatus.WAITING}),
        RunStatus.STARTED,
    )
    GIVE_UP = (
        "its role failed its last try, under onError: fail",
        frozenset({RunStatus.STARTED}),
        RunStatus.FAILED,
    )

    def __init__(self, label: str, sources: frozenset[RunStatus], target: RunStatus) -> None:
        self.label = label
        self.sources = sources
        self.target = target

    @property
    def creates(self) -> bool:
        return not self.sources


class WorkerState(enum.StrEnum):
    """Where a supervised unit (a sense group, a workflow) stands with its worker.

    The states of :class:`nerved.master.supervisor.Supervisor`, after supervisor's process
    states: a unit has at most one *current* worker, the one new work goes to; a worker told
    to stop is ``draining`` (a state of that process, not of its unit) until it is reaped.
    """

    IDLE = "idle"  # no worker, and none needed now (a workflow with nothing to run)
    SPAWNING = "spawning"  # forked, importing its code; not ready yet
    READY = "ready"  # imported its code: work goes to it
    DRAINING = "draining"  # told to stop: finishing what it holds, killed at its deadline
    BACKOFF = "backoff"  # its worker died, or could not be forked: a successor after a delay
    FATAL = "fatal"  # its workers kept dying before doing any work: none until its code changes
    GONE = "gone"  # removed by a reload, or nerved is stopping: never forked again


_ANY_LIVE: frozenset[WorkerState] = frozenset(WorkerState) - {
    WorkerState.GONE,
    WorkerState.DRAINING,
}


class WorkerMove(enum.Enum):
    """Every labelled move of a supervised unit: (label, from-states, to-state)."""

    SPAWN = (
        "a worker was needed, and forked",
        frozenset({WorkerState.IDLE}),
        WorkerState.SPAWNING,
    )
    FORK_FAILED = (
        "no process could be forked (a pids limit, no memory)",
        frozenset({WorkerState.IDLE}),
        WorkerState.BACKOFF,
    )
    READY = ("it imported its code", frozenset({WorkerState.SPAWNING}), WorkerState.READY)
    DIED = (
        "it died: a successor after the backoff",
        frozenset({WorkerState.SPAWNING, WorkerState.READY}),
        WorkerState.BACKOFF,
    )
    GIVE_UP = (
        "its workers died too many times in a row before doing any work",
        frozenset({WorkerState.SPAWNING, WorkerState.READY}),
        WorkerState.FATAL,
    )
    BACKOFF_OVER = (
        "its backoff is over: a worker may be forked again",
        frozenset({WorkerState.BACKOFF}),
        WorkerState.IDLE,
    )
    DRAIN = (
        "its worker was told to stop (idle, or its code changed): it drains",
        frozenset({WorkerState.SPAWNING, WorkerState.READY}),
        WorkerState.IDLE,
    )
    CODE_CHANGED = (
        "a reload changed its code or memoryMax: it may be tried again",
        frozenset({WorkerState.FATAL}),
        WorkerState.IDLE,
    )
    RETIRE = ("removed by a reload, or nerved stops", _ANY_LIVE, WorkerState.GONE)

    def __init__(self, label: str, sources: frozenset[WorkerState], target: WorkerState) -> None:
        self.label = label
        self.sources = sources
        self.target = target
