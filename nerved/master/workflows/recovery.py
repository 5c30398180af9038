"""Recovery: what becomes of each run logs.db holds as active when nerved starts.

Decided from the stored run and its workflow's settings alone, so that the rule is read (and
tested) in one place; the workflow manager applies it (:meth:`WorkflowManager.recover`):

- a run of a workflow no longer configured ends: queued and waiting ones ``dropped``
  (WITHDRAW), started ones ``crashed``;
- a run whose stored history cannot be resumed (a trigger payload that cannot be read back
  or sent, a history over :data:`wire.MAX_HISTORY`) fails with the reason (UNRESUMABLE);
- a queued run is queued again, in its order;
- a waiting run waits again (whatever its workflow's overflow: it holds no thread to lose),
  its deadline armed again;
- a started run of an ``overflow: drop`` workflow ends ``crashed`` and a new run takes its
  payload (its thread is not resumed: that is what ``drop`` means);
- any other started run is resumed from its logged steps.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from nerved import wire
from nerved.config import Overflow, WorkflowConfig
from nerved.master.workflows.runs import unresumable
from nerved.states import RunStatus, Transition
from nerved.store import StoredRun, Unreadable


class Fate(enum.Enum):
    END = "ended"  # its workflow is not configured
    FAIL = "failed"  # it cannot be resumed
    QUEUE = "queued"
    RESTART = "restarted"  # overflow: drop
    RESUME = "resumed"
    WAIT = "waiting"  # it waits again, for what it waited for


@dataclass(frozen=True, slots=True)
class Recovery:
    fate: Fate
    payload_json: str | None = None  # its trigger payload, encoded again (QUEUE, RESTART, RESUME)
    transition: Transition | None = None  # how it ends (END, FAIL)
    reason: str | None = None  # why it ends (END, FAIL)


def recovery_of(record: StoredRun, config: WorkflowConfig | None) -> Recovery:
    """What becomes of an active ``record`` whose workflow has ``config`` (None: the
    workflow is not configured)."""
    if config is None:
        idle = record.status in (RunStatus.QUEUED, RunStatus.WAITING)
        transition = Transition.WITHDRAW if idle else Transition.CRASH
        return Recovery(Fate.END, None, transition, f"workflow {record.workflow} is not configured")
    try:
        payload_json = resumable_payload(record)
    except wire.Invalid as exc:
        return Recovery(Fate.FAIL, None, Transition.UNRESUMABLE, unresumable(exc))
    if record.status is RunStatus.QUEUED:
        return Recovery(Fate.QUEUE, payload_json)
    if record.status is RunStatus.WAITING:
        return Recovery(Fate.WAIT, payload_json)
    if config.overflow is Overflow.DROP:
        return Recovery(Fate.RESTART, payload_json)
    return Recovery(Fate.RESUME, payload_json)


def resumable_payload(record: StoredRun) -> str | None:
    """A recovered run's trigger payload, encoded again (None: none); raises wire.Invalid,
    saying why, for a run that cannot be resumed: a payload that cannot be read back or sent
    to a worker, or a history too large for a resume."""
    payload = record.trigger_payload
    if isinstance(payload, Unreadable):
        raise wire.Invalid(f"its trigger payload cannot be read back: {payload.reason}")
    if record.history > wire.MAX_HISTORY:
        raise wire.Invalid(
            f"its history is {wire.size_text(record.history)}; a resume carries at most"
            f" {wire.size_text(wire.MAX_HISTORY)}"
        )
    try:
        return None if payload is None else wire.dumps(payload)
    except wire.Invalid as exc:
        raise wire.Invalid(f"its trigger payload cannot be sent: {exc}") from None
