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
    COMPLETED = "completed"
    FAILED = "failed"
    CRASHED = "crashed"
    DROPPED = "dropped"

    @property
    def is_active(self) -> bool:
        return self in ACTIVE

    @property
    def is_final(self) -> bool:
        return self not in ACTIVE


ACTIVE: frozenset[RunStatus] = frozenset({RunStatus.QUEUED, RunStatus.STARTED})
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
        frozenset({RunStatus.QUEUED}),
        RunStatus.DROPPED,
    )
    COMPLETE = ("the moderator returned None", frozenset({RunStatus.STARTED}), RunStatus.COMPLETED)
    FAIL = (
        "a role, the moderator or an event broke a rule",
        frozenset({RunStatus.STARTED}),
        RunStatus.FAILED,
    )
    CRASH = ("its worker died under it", frozenset({RunStatus.STARTED}), RunStatus.CRASHED)
    UNRESUMABLE = (
        "its stored history can no longer be resumed",
        frozenset({RunStatus.QUEUED, RunStatus.STARTED}),
        RunStatus.FAILED,
    )

    def __init__(self, label: str, sources: frozenset[RunStatus], target: RunStatus) -> None:
        self.label = label
        self.sources = sources
        self.target = target

    @property
    def creates(self) -> bool:
        return not self.sources
