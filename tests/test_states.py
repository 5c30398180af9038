"""Tests for nerved.states: the run statuses and the labelled transitions between them.

The store enforces these transitions with guarded UPDATEs, the engine names every move it
makes by them, and nervectl shows the statuses, so the table itself must be sound: no move
out of a final status, creation only by the moves that create, and every final status
actually reachable (SPEC section 5, RFC-002 section 6).
"""

from __future__ import annotations

from collections import deque

import pytest

from nerved.states import ACTIVE, FINAL, RunStatus, Transition

SPEC_STATUSES = {"queued", "started", "waiting", "completed", "failed", "crashed", "dropped",
                 "cancelled"}  # fmt: skip
CREATING = [t for t in Transition if t.creates]
MOVING = [t for t in Transition if not t.creates]


def reachable_statuses() -> set[RunStatus]:
    """Every status a run can be in: creation targets, then closure under the moves."""
    seen = {t.target for t in CREATING}
    todo = deque(seen)
    while todo:
        status = todo.popleft()
        for t in MOVING:
            if status in t.sources and t.target not in seen:
                seen.add(t.target)
                todo.append(t.target)
    return seen


# -- statuses ----------------------------------------------------------------------------


def test_statuses_are_the_ones_the_spec_names() -> None:
    """They are written to logs.db and shown to operators: their spelling is a contract."""
    assert {s.value for s in RunStatus} == SPEC_STATUSES
    assert all(str(s) == s.value for s in RunStatus)


def test_active_and_final_partition_the_statuses() -> None:
    assert set(RunStatus) == ACTIVE | FINAL
    assert not ACTIVE & FINAL
    assert {RunStatus.QUEUED, RunStatus.STARTED, RunStatus.WAITING} == ACTIVE


@pytest.mark.parametrize("status", list(RunStatus))
def test_is_active_and_is_final_agree_with_the_sets(status: RunStatus) -> None:
    assert status.is_active == (status in ACTIVE)
    assert status.is_final == (status in FINAL)
    assert status.is_active != status.is_final


# -- transitions -------------------------------------------------------------------------


def test_no_two_transitions_alias() -> None:
    """Enum members with equal values silently become aliases; each label must stay its own."""
    assert list(Transition.__members__.values()) == list(Transition)
    assert len({t.label for t in Transition}) == len(Transition)
    assert all(t.label.strip() for t in Transition)


def test_creating_transitions_are_enqueue_start_and_reject() -> None:
    """A trigger ends up queued, started or dropped (SPEC section 5): nothing else creates."""
    assert {t: t.target for t in CREATING} == {
        Transition.ENQUEUE: RunStatus.QUEUED,
        Transition.START: RunStatus.STARTED,
        Transition.REJECT: RunStatus.DROPPED,
    }


@pytest.mark.parametrize("transition", CREATING, ids=lambda t: t.name)
def test_creating_transitions_have_no_sources(transition: Transition) -> None:
    assert transition.creates
    assert transition.sources == frozenset()


@pytest.mark.parametrize("transition", MOVING, ids=lambda t: t.name)
def test_moves_start_only_from_active_statuses(transition: Transition) -> None:
    """A final status is final: no transition may leave one."""
    assert transition.sources
    assert transition.sources <= ACTIVE
    assert all(isinstance(s, RunStatus) for s in transition.sources)


@pytest.mark.parametrize("transition", list(Transition), ids=lambda t: t.name)
def test_targets_are_statuses_other_than_the_sources(transition: Transition) -> None:
    """A self-loop would make the guarded UPDATE succeed twice and log a move twice."""
    assert isinstance(transition.target, RunStatus)
    assert transition.target not in transition.sources


@pytest.mark.parametrize("status", sorted(FINAL), ids=str)
def test_every_final_status_is_reachable_from_an_active_one(status: RunStatus) -> None:
    """A final status no move leads to would be dead vocabulary in logs and in nervectl."""
    assert any(t.target is status and t.sources & ACTIVE for t in MOVING)


def test_cancel_ends_any_active_run_and_give_up_fails_a_started_one() -> None:
    """An operator may cancel a run waiting for a slot as well as one in flight; giving up
    after a role's last try is a failure of a run that was running, and final."""
    assert Transition.CANCEL.sources == ACTIVE
    assert Transition.CANCEL.target is RunStatus.CANCELLED
    assert RunStatus.CANCELLED.is_final
    assert Transition.GIVE_UP.sources == {RunStatus.STARTED}
    assert Transition.GIVE_UP.target is RunStatus.FAILED
    assert [t for t in Transition if t.target is RunStatus.CANCELLED] == [Transition.CANCEL]


def test_every_status_is_reachable_from_creation() -> None:
    assert reachable_statuses() == set(RunStatus)


def test_a_queued_run_can_start() -> None:
    """Queued runs must eventually get a slot: DISPATCH is the only way out other than drop."""
    assert [t for t in MOVING if RunStatus.QUEUED in t.sources and t.target.is_active] == [
        Transition.DISPATCH
    ]


def test_every_worker_state_is_reached_and_left_by_a_labelled_move():
    from nerved.states import WorkerMove, WorkerState

    targets = {move.target for move in WorkerMove}
    sources = {state for move in WorkerMove for state in move.sources}
    # DRAINING is a state of a process told to stop, never of its unit.
    assert targets == set(WorkerState) - {WorkerState.DRAINING}
    assert sources == set(WorkerState) - {WorkerState.GONE, WorkerState.DRAINING}
    assert all(move.label and move.sources for move in WorkerMove)
    # Only a change of code ends FATAL; only RETIRE reaches GONE, from any live state.
    assert [m for m in WorkerMove if WorkerState.FATAL in m.sources] == [
        WorkerMove.CODE_CHANGED,
        WorkerMove.RETIRE,
    ]
    assert [m for m in WorkerMove if m.target is WorkerState.GONE] == [WorkerMove.RETIRE]
