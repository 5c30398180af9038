"""Recovery: what becomes of each run stored as active when nerved starts, by the rule alone.

Through a real nerved, tests/master/test_daemon_lifecycle.py and test_fault_injection.py kill
the daemon under running threads; here is the rule they rely on, one case per fate.
"""

from __future__ import annotations

import pytest

from nerved import wire
from nerved.config import Overflow, WorkflowConfig
from nerved.master.workflows.recovery import Fate, Recovery, recovery_of
from nerved.states import RunStatus, Transition
from nerved.store import RunRecord, Unreadable


def record(status: RunStatus, payload: object = None, history: int = 0) -> RunRecord:
    return RunRecord("r1", "w", status, 0, 0, payload, 2, None, 1, None, 1, history)


def config(overflow: Overflow) -> WorkflowConfig:
    return WorkflowConfig("w", 1, overflow, 10, 1000, 1000, 100, 3, 1)


@pytest.mark.parametrize(
    ("status", "transition"),
    [(RunStatus.QUEUED, Transition.WITHDRAW), (RunStatus.STARTED, Transition.CRASH)],
)
def test_a_run_of_a_workflow_no_longer_configured_ends(status, transition):
    assert recovery_of(record(status), None) == Recovery(
        Fate.END, None, transition, "workflow w is not configured"
    )


@pytest.mark.parametrize(
    ("status", "overflow", "fate"),
    [
        (RunStatus.QUEUED, Overflow.QUEUE, Fate.QUEUE),
        (RunStatus.STARTED, Overflow.QUEUE, Fate.RESUME),
        (RunStatus.STARTED, Overflow.DROP, Fate.RESTART),
    ],
)
def test_a_run_of_a_configured_workflow_recovers(status, overflow, fate):
    got = recovery_of(record(status, {"k": [1, 2]}), config(overflow))
    assert got == Recovery(fate, wire.dumps({"k": [1, 2]}))


@pytest.mark.parametrize(
    ("payload", "history", "why"),
    [
        (Unreadable("not JSON", 9), 0, "its trigger payload cannot be read back: not JSON"),
        (None, wire.MAX_HISTORY + 1, "its history is"),
    ],
)
def test_a_run_that_cannot_be_resumed_fails_with_the_reason(payload, history, why):
    got = recovery_of(record(RunStatus.STARTED, payload, history), config(Overflow.QUEUE))
    assert (got.fate, got.transition) == (Fate.FAIL, Transition.UNRESUMABLE)
    assert got.reason is not None and why in got.reason
