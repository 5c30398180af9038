"""The store's contract: what any backend of nerved.store.Storage must do, run against each
of them (the ``backend`` fixture, conftest.py).

The daemon relies on these and on nothing else of a backend: the batch (nothing is visible
to the committed view, or acknowledged, before the commit; ``after_commit`` callbacks run in
order after it, or are aborted with it), admission (``create_run``), guarded transitions
that write nothing when they lose a race, steps and attempts counted only while a run is
started, the queries and pages the control protocol serves, retention's deletes, and what a
store opened again finds: everything committed, nothing else.

Tests of one backend's own machinery (SQLite's files, pragmas, write lock, damaged pages)
are beside this file (test_sqlite.py).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from store_support import (
    BUDGET,
    CREATING,
    KIB,
    MIB,
    MOVING,
    Backend,
    Model,
    as_run,
    failure,
    fill,
    history,
    make_run,
    move,
    random_operations,
    role_failed,
    step,
)

from nerved import wire
from nerved.states import ACTIVE, RunStatus, Transition
from nerved.store import (
    MAX_QUERY_LIMIT,
    Firing,
    LogEntry,
    Reader,
    RunRecord,
    Storage,
    StoreError,
    Unreadable,
    now_ms,
)
from nerved.store.records import cancelled_error, input_payload

REPO = Path(__file__).resolve().parents[2]


# -- the batch -------------------------------------------------------------------------


def test_writes_are_invisible_to_the_committed_view_until_commit(store: Storage) -> None:
    """Readers never see half a turn; the store's own reads do see its open batch."""
    store.create_run("r1", "wf", Transition.START, {"a": 1})
    store.append_log("sense", "signal", "disk", {"v": 3})
    store.set_meta("k", "v")

    assert store.get_run("r1") is not None
    assert store.get_meta("k") == "v"
    assert store.last_log_id() == 2
    assert store.dirty
    view = store.committed
    assert view.list_runs() == [] and view.get_run("r1") is None
    assert view.query_logs() == [] and view.last_log_id() == 0
    assert view.get_meta("k") is None

    store.commit()
    assert not store.dirty
    assert store.commits == 1
    assert [r.run_id for r in view.list_runs()] == ["r1"]
    assert [e.type for e in view.query_logs()] == ["started", "signal"]
    assert view.get_meta("k") == "v"


def test_after_commit_runs_in_order_only_after_the_commit(store: Storage) -> None:
    """An acknowledgement must never run ahead of its data (SPEC section 5)."""
    seen: list[tuple[str, int]] = []

    def visible_runs() -> int:
        return len(store.committed.list_runs())

    store.create_run("r1", "wf", Transition.START, None)
    store.after_commit(lambda: seen.append(("first", visible_runs())))
    store.create_run("r2", "wf", Transition.START, None)
    store.after_commit(lambda: seen.append(("second", visible_runs())))
    store.after_commit(lambda: seen.append(("third", visible_runs())), lambda exc: None)
    assert seen == []

    store.commit()
    assert seen == [("first", 2), ("second", 2), ("third", 2)]

    store.commit()  # callbacks run once
    assert len(seen) == 3


def test_after_commit_runs_when_nothing_was_written(store: Storage) -> None:
    """Callers must not care whether their own write opened the batch."""
    seen: list[str] = []
    store.after_commit(lambda: seen.append("a"))
    store.after_commit(lambda: seen.append("b"))
    assert store.dirty
    assert seen == []

    store.commit()
    assert seen == ["a", "b"]
    assert store.commits == 0  # there was no transaction to commit
    assert not store.dirty


def test_after_commit_registered_by_a_callback_waits_for_the_next_commit(store: Storage) -> None:
    seen: list[str] = []

    def first() -> None:
        seen.append("first")
        store.append_log("test", "note", None, None)
        store.after_commit(lambda: seen.append("later"))

    store.after_commit(first)
    store.commit()
    assert seen == ["first"]
    assert store.dirty
    store.commit()
    assert seen == ["first", "later"]


def test_failing_commit_rolls_back_aborts_and_raises(store: Storage, backend: Backend) -> None:
    """COMMIT really fails: nothing of the batch may survive, no acknowledgement may run,
    and whoever waited is told why."""
    store.create_run("kept", "wf", Transition.START, None)
    store.commit()
    backend.poison(store)

    committed: list[str] = []
    aborted: list[BaseException] = []
    store.create_run("r1", "wf", Transition.START, {"a": 1})
    store.after_commit(lambda: committed.append("r1"), aborted.append)
    store.append_log("test", "poison", None, None)
    store.after_commit(lambda: committed.append("poison"), aborted.append)
    store.after_commit(lambda: committed.append("no abort callback"))

    with pytest.raises(StoreError, match="commit failed") as info:
        store.commit()

    assert committed == []
    assert len(aborted) == 2
    assert all(isinstance(exc, StoreError) for exc in aborted)
    assert info.value.__cause__ is aborted[0] is aborted[1]
    assert not store.dirty
    assert store.get_run("r1") is None
    assert [r.run_id for r in store.list_runs()] == ["kept"]
    assert [r.run_id for r in store.committed.list_runs()] == ["kept"]
    assert len(store.committed.query_logs()) == 1

    # The store is usable again, and the aborted callbacks are not carried over.
    store.create_run("r2", "wf", Transition.START, None)
    store.after_commit(lambda: committed.append("r2"))
    store.commit()
    assert committed == ["r2"]
    assert len(store.committed.list_runs()) == 2


def test_abandon_rolls_the_batch_back_and_aborts_its_callbacks(store: Storage) -> None:
    """What retention does with a batch of its own that failed: nothing of it stays, its
    waiters hear why, and the store goes on."""
    store.create_run("kept", "wf", Transition.START, None)
    store.commit()
    committed: list[str] = []
    aborted: list[BaseException] = []
    store.create_run("r1", "wf", Transition.START, None)
    store.after_commit(lambda: committed.append("r1"), aborted.append)
    why = StoreError("damaged")
    store.abandon(why)
    assert aborted == [why] and committed == []
    assert not store.dirty
    assert store.get_run("r1") is None
    store.commit()
    assert committed == []
    assert [r.run_id for r in store.list_runs()] == ["kept"]
    store.create_run("r2", "wf", Transition.START, None)
    store.commit()
    assert [r.run_id for r in store.committed.list_runs()] == ["r2", "kept"]


def test_release_refuses_an_uncommitted_batch(store: Storage) -> None:
    """The write lock is let go only between batches; the next write takes it again."""
    assert store.acquire() is True
    store.release()
    store.release()  # twice is fine
    store.append_log("test", "a", None, None)
    with pytest.raises(RuntimeError):
        store.release()
    store.commit()
    store.release()
    assert store.acquire() is True
    assert [e.type for e in store.committed.query_logs()] == ["a"]


def test_shrink_before_a_fork_keeps_the_open_batch_and_what_was_committed(
    store: Storage, backend: Backend
) -> None:
    """The master lets the caches go before each fork, whenever in a turn it forks."""
    store.create_run("r1", "wf", Transition.START, {"a": 1})
    store.commit()
    store.create_run("r2", "wf", Transition.START, {"b": 2})
    store.shrink()
    store.shrink()
    assert store.dirty and store.get_run("r2") is not None
    assert [r.run_id for r in store.committed.list_runs()] == ["r1"]
    store.commit()
    store.shrink()
    assert sorted(r.run_id for r in store.committed.list_runs()) == ["r1", "r2"]
    store.close()
    again = backend.open()
    assert sorted(r.run_id for r in again.list_runs()) == ["r1", "r2"]
    again.close()


def test_a_failed_statement_keeps_the_rest_of_the_batch(store: Storage) -> None:
    """A duplicate run id is refused without its log entry; the batch's other writes stay."""
    store.create_run("r1", "wf", Transition.START, None)
    store.commit()
    store.append_log("test", "before", None, None)
    with pytest.raises(StoreError):
        store.create_run("r1", "wf", Transition.ENQUEUE, None)
    store.commit()
    assert [e.type for e in store.query_logs()] == ["started", "before"]
    run = store.get_run("r1")
    assert run is not None and run.status is RunStatus.STARTED


# -- admission: create_run -------------------------------------------------------------


@pytest.mark.parametrize(
    ("transition", "status"),
    [
        (Transition.START, RunStatus.STARTED),
        (Transition.ENQUEUE, RunStatus.QUEUED),
    ],
    ids=lambda v: v.name if isinstance(v, Transition) else str(v),
)
def test_create_run_logs_the_trigger_payload(
    store: Storage, transition: Transition, status: RunStatus
) -> None:
    payload = {"path": "/var", "n": [1, 2.5, None], "ü": "ß"}
    record = store.create_run("r1", "wf", transition, payload, retry_of="r0", ts=1_000)
    store.commit()

    assert record == store.get_run("r1") == store.committed.get_run("r1")
    assert record.status is status
    assert (record.created_at, record.updated_at) == (1_000, 1_000)
    assert (record.steps, record.attempts, record.error) == (0, 0, None)
    assert record.trigger_payload == payload
    assert record.retry_of == "r0"
    assert record.workflow == "wf"

    [entry] = history(store, "r1")
    assert (entry.source, entry.type, entry.ref_id) == ("workflow", status.value, "r1")
    assert entry.payload == payload
    assert entry.ts == 1_000
    assert store.committed.query_logs() == [entry]


def test_create_run_reject_logs_the_reason_and_keeps_the_payload(store: Storage) -> None:
    """A dropped trigger is acknowledged too, so its payload must be stored (SPEC section 5),
    while the log entry says why it was dropped (SPEC section 6)."""
    record = store.create_run(
        "r1", "wf", Transition.REJECT, {"a": 1}, reason="every slot busy (overflow: drop)"
    )
    store.commit()
    run = store.get_run("r1")
    assert run == record
    assert run is not None
    assert run.status is RunStatus.DROPPED
    assert run.trigger_payload == {"a": 1}
    assert run.error == "every slot busy (overflow: drop)"
    [entry] = history(store, "r1")
    assert entry.type == "dropped"
    assert entry.payload == "every slot busy (overflow: drop)"
    assert store.active_runs() == []


def test_create_run_without_payload(store: Storage) -> None:
    store.create_run("r1", "wf", Transition.START, None)
    store.commit()
    run = store.get_run("r1")
    assert run is not None and run.trigger_payload is None
    assert history(store, "r1")[0].payload is None


def test_create_run_seq_follows_creation_order(store: Storage) -> None:
    seqs = [store.create_run(f"r{i}", "wf", Transition.ENQUEUE, None).seq for i in range(3)]
    store.commit()
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 3
    assert [r.seq for r in reversed(store.list_runs())] == seqs


# -- idempotency keys (issue 12) ---------------------------------------------------------


@pytest.mark.parametrize("transition", CREATING, ids=lambda t: t.name)
def test_create_run_with_a_key_keeps_it_and_logs_it_after_the_creating_entry(
    store: Storage, transition: Transition
) -> None:
    """The creating entry keeps what it holds (the payload, or a dropped run's reason); the
    key has an entry of its own right after it, in the same batch, with the same time."""
    reason = "queue full" if transition is Transition.REJECT else None
    record = store.create_run(
        "r1", "wf", transition, {"a": 1}, reason=reason, idempotency_key="k-1", ts=1_000
    )
    assert record.idempotency_key == "k-1"
    assert store.run_by_key("wf", "k-1") == record  # the engine's view sees the batch
    assert store.committed.run_by_key("wf", "k-1") is None
    store.commit()
    assert store.committed.run_by_key("wf", "k-1") == record == store.get_run("r1")
    created, key = history(store, "r1")
    assert created.type == transition.target.value
    assert created.payload == (reason if reason is not None else {"a": 1})
    assert (key.source, key.type, key.ref_id, key.payload, key.ts) == (
        "workflow", "key", "r1", {"key": "k-1"}, 1_000,
    )  # fmt: skip
    assert record.to_wire()["idempotencyKey"] == "k-1"


def test_create_run_without_a_key_logs_no_key_entry(store: Storage) -> None:
    record = store.create_run("r1", "wf", Transition.START, None)
    store.commit()
    assert record.idempotency_key is None
    assert [e.type for e in history(store, "r1")] == ["started"]
    assert record.to_wire()["idempotencyKey"] is None


def test_a_key_taken_in_its_workflow_is_refused_and_nothing_written(store: Storage) -> None:
    """Whatever the holder's status; in the same batch or a committed one."""
    store.create_run("r1", "wf", Transition.START, None, idempotency_key="k")
    with pytest.raises(ValueError, match="r1"):
        store.create_run("r2", "wf", Transition.START, None, idempotency_key="k")
    assert store.get_run("r2") is None and history(store, "r2") == []
    assert store.transition_run("r1", Transition.COMPLETE)
    store.commit()
    with pytest.raises(ValueError, match="r1"):
        store.create_run("r3", "wf", Transition.REJECT, None, reason="x", idempotency_key="k")
    assert not store.dirty
    assert store.get_run("r3") is None


def test_a_key_belongs_to_one_workflow_and_runs_without_keys_are_many(store: Storage) -> None:
    one = store.create_run("r1", "wf", Transition.START, None, idempotency_key="k")
    other = store.create_run("r2", "other", Transition.START, None, idempotency_key="k")
    store.create_run("r3", "wf", Transition.START, None)
    store.create_run("r4", "wf", Transition.START, None)
    store.commit()
    assert store.committed.run_by_key("wf", "k") == one
    assert store.committed.run_by_key("other", "k") == other
    assert store.committed.run_by_key("third", "k") is None
    assert store.run_by_key("wf", "K") is None  # keys are compared as they are
    assert store.run_by_key("wf", "") is None


def test_a_key_survives_transitions_and_steps(store: Storage) -> None:
    store.create_run("r1", "wf", Transition.ENQUEUE, None, idempotency_key="k")
    assert store.transition_run("r1", Transition.DISPATCH)
    assert store.record_step("r1", step("a", None, {"n": 1}))
    assert store.transition_run("r1", Transition.FAIL, error="boom")
    store.commit()
    run = store.committed.run_by_key("wf", "k")
    assert run is not None and (run.run_id, run.status, run.steps) == ("r1", RunStatus.FAILED, 1)
    assert [r.idempotency_key for r in store.list_runs()] == ["k"]


def test_a_pruned_run_frees_its_key(store: Storage) -> None:
    store.create_run("r1", "wf", Transition.START, None, idempotency_key="k", ts=1_000)
    assert store.transition_run("r1", Transition.COMPLETE, ts=1_000)
    store.commit()
    assert store.prune_runs(older_than=2_000, keep=None, limit=10) == 1
    assert store.run_by_key("wf", "k") is None
    again = store.create_run("r2", "wf", Transition.START, None, idempotency_key="k")
    store.commit()
    assert store.committed.run_by_key("wf", "k") == again
    assert store.committed.query_logs(ref_id="r1") == []


def test_a_key_is_kept_across_reopening(backend: Backend) -> None:
    store = backend.open()
    store.create_run("r1", "wf", Transition.START, {"p": 1}, idempotency_key="ü-key")
    store.commit()
    store.close()
    store = backend.open()
    try:
        run = store.run_by_key("wf", "ü-key")
        assert run is not None and run.run_id == "r1" and run.trigger_payload == {"p": 1}
        assert [r.idempotency_key for r in store.active_runs()] == ["ü-key"]
        with pytest.raises(ValueError):
            store.create_run("r2", "wf", Transition.START, None, idempotency_key="ü-key")
    finally:
        store.close()


# -- cron firings ------------------------------------------------------------------------


def test_a_firing_replaces_its_reflexes_last_and_survives_reopening(backend: Backend) -> None:
    store = backend.open()
    assert store.firings() == {}
    store.record_firing(Firing("workflow:w 0 3 * * * host", 1_000, 1_001, run_id="r1"))
    store.record_firing(Firing("sense:s * * * * * UTC", 2_000, 2_000, note="computed"))
    assert store.committed.firings() == {}  # the batch is not durable yet
    store.commit()
    store.record_firing(Firing("workflow:w 0 3 * * * host", 5_000, 9_000, note="missed"))
    store.commit()
    store.close()
    store = backend.open()
    try:
        assert store.committed.firings() == {
            "workflow:w 0 3 * * * host": Firing("workflow:w 0 3 * * * host", 5_000, 9_000,
                                                note="missed"),
            "sense:s * * * * * UTC": Firing("sense:s * * * * * UTC", 2_000, 2_000,
                                            note="computed"),
        }  # fmt: skip
    finally:
        store.close()


def test_forget_firings_keeps_only_the_reflexes_named(store: Storage) -> None:
    for name in ("a", "b", "c"):
        store.record_firing(Firing(name, 1, 1))
    assert store.forget_firings(["b", "x"]) == 2
    store.commit()
    assert list(store.committed.firings()) == ["b"]
    assert store.forget_firings(["b"]) == 0


@pytest.mark.parametrize("transition", MOVING, ids=lambda t: t.name)
def test_create_run_refuses_non_creating_transitions(
    store: Storage, transition: Transition
) -> None:
    with pytest.raises(ValueError):
        store.create_run("r1", "wf", transition, None)
    assert not store.dirty
    assert store.get_run("r1") is None


@pytest.mark.parametrize("transition", CREATING, ids=lambda t: t.name)
def test_transition_run_refuses_creating_transitions(
    store: Storage, transition: Transition
) -> None:
    make_run(store, "r1", RunStatus.QUEUED)
    store.commit()
    with pytest.raises(ValueError):
        store.transition_run("r1", transition)
    assert not store.dirty
    assert len(history(store, "r1")) == 1


@pytest.mark.parametrize("payload", [float("nan"), object()], ids=["nan", "object"])
def test_create_run_with_unencodable_payload_writes_nothing(store: Storage, payload: Any) -> None:
    with pytest.raises((ValueError, TypeError)):
        store.create_run("r1", "wf", Transition.START, {"x": payload})
    store.commit()
    assert store.get_run("r1") is None
    assert store.last_log_id() == 0


# -- guarded transitions: transition_run -----------------------------------------------

LEGAL = [(t, s) for t in MOVING for s in sorted(t.sources)]
ILLEGAL = [(t, s) for t in MOVING for s in RunStatus if s not in t.sources]


def pair_id(value: Any) -> str:
    return value.name if isinstance(value, Transition) else f"from-{value}"


@pytest.mark.parametrize(("transition", "source"), LEGAL, ids=pair_id)
def test_every_legal_transition_works(
    store: Storage, transition: Transition, source: RunStatus
) -> None:
    make_run(store, "r1", source)
    store.commit()
    before = history(store, "r1")
    before_run = store.get_run("r1")
    assert before_run is not None

    assert store.transition_run("r1", transition, ts=5_000)
    store.commit()

    run = store.get_run("r1")
    assert run is not None
    assert run.status is transition.target
    assert run.updated_at == 5_000
    assert run.created_at == before_run.created_at
    after = history(store, "r1")
    assert after[:-1] == before
    assert (after[-1].type, after[-1].ts) == (transition.target.value, 5_000)


@pytest.mark.parametrize(("transition", "source"), ILLEGAL, ids=pair_id)
def test_illegal_transition_is_refused_and_writes_nothing(
    store: Storage, transition: Transition, source: RunStatus
) -> None:
    """The guard is what makes a lost race harmless: no status change, no log entry."""
    make_run(store, "r1", source)
    store.commit()
    before_run = store.get_run("r1")
    before_logs = store.committed.last_log_id()

    assert store.transition_run("r1", transition, error="should not stick") is False
    assert store.get_run("r1") == before_run
    store.commit()
    assert store.get_run("r1") == before_run
    assert store.committed.last_log_id() == before_logs


@pytest.mark.parametrize(
    ("status", "transition"),
    [
        (RunStatus.QUEUED, Transition.COMPLETE),
        (RunStatus.COMPLETED, Transition.DISPATCH),
        (RunStatus.COMPLETED, Transition.COMPLETE),
        (RunStatus.DROPPED, Transition.CRASH),
    ],
    ids=["complete-queued", "dispatch-completed", "second-complete", "crash-dropped"],
)
def test_named_lost_races(store: Storage, status: RunStatus, transition: Transition) -> None:
    make_run(store, "r1", status)
    store.commit()
    n = len(history(store, "r1"))
    assert not store.transition_run("r1", transition)
    assert len(history(store, "r1")) == n


def test_transition_of_unknown_run_is_refused(store: Storage) -> None:
    assert not store.transition_run("nope", Transition.COMPLETE)
    store.commit()
    assert store.last_log_id() == 0
    assert store.get_run("nope") is None


def test_error_is_stored_and_logged(store: Storage) -> None:
    make_run(store, "r1", RunStatus.STARTED)
    assert store.transition_run("r1", Transition.FAIL, error="role 'a' raised KeyError")
    store.commit()
    run = store.get_run("r1")
    assert run is not None and run.error == "role 'a' raised KeyError"
    assert history(store, "r1")[-1].payload == "role 'a' raised KeyError"


def test_payload_is_logged_in_preference_to_error(store: Storage) -> None:
    make_run(store, "r1", RunStatus.STARTED)
    assert store.transition_run("r1", Transition.CRASH, payload_json='{"exit":-9}', error="killed")
    store.commit()
    run = store.get_run("r1")
    assert run is not None and run.error == "killed"
    assert history(store, "r1")[-1].payload == {"exit": -9}


def test_dispatch_logs_the_trigger_payload_given(store: Storage) -> None:
    """``started`` entries carry the trigger payload (SPEC section 6), dispatched or not."""
    store.create_run("r1", "wf", Transition.ENQUEUE, {"a": 1})
    assert store.transition_run("r1", Transition.DISPATCH, payload_json='{"a":1}')
    store.commit()
    assert [(e.type, e.payload) for e in history(store, "r1")] == [
        ("queued", {"a": 1}),
        ("started", {"a": 1}),
    ]


def test_transition_without_error_keeps_none(store: Storage) -> None:
    make_run(store, "r1", RunStatus.STARTED)
    assert store.transition_run("r1", Transition.COMPLETE)
    store.commit()
    run = store.get_run("r1")
    assert run is not None and run.error is None
    assert history(store, "r1")[-1].payload is None


def test_updated_at_defaults_to_now(store: Storage) -> None:
    store.create_run("r1", "wf", Transition.START, None, ts=1_000)
    before = now_ms()
    assert store.transition_run("r1", Transition.COMPLETE)
    run = store.get_run("r1")
    assert run is not None
    assert run.created_at == 1_000
    assert before <= run.updated_at <= now_ms()
    assert history(store, "r1")[-1].ts == run.updated_at


def test_unencodable_transition_error_writes_nothing(store: Storage) -> None:
    make_run(store, "r1", RunStatus.STARTED)
    store.commit()
    with pytest.raises(wire.Invalid):
        store.transition_run("r1", Transition.FAIL, error="lone \ud800")
    store.commit()
    run = store.get_run("r1")
    assert run is not None and run.status is RunStatus.STARTED
    assert [e.type for e in history(store, "r1")] == ["started"]


# -- steps and attempts: record_step, count_attempt ------------------------------------


def test_record_step_appends_and_counts(store: Storage) -> None:
    make_run(store, "r1", RunStatus.STARTED)
    assert store.record_step("r1", step("planner", {"q": "why"}, {"answer": 42}), ts=7_000)
    assert store.record_step("r1", step("doer", "go", ["done"]), ts=8_000)
    store.commit()

    run = store.get_run("r1")
    assert run is not None
    assert run.steps == 2
    assert run.updated_at == 8_000
    steps = [e for e in history(store, "r1") if e.type == "step_complete"]
    assert [(e.payload, e.ts, e.source, e.ref_id) for e in steps] == [
        (
            {"role": "planner", "prompt": {"q": "why"}, "event": {"answer": 42}},
            7_000,
            "workflow",
            "r1",
        ),
        ({"role": "doer", "prompt": "go", "event": ["done"]}, 8_000, "workflow", "r1"),
    ]


@pytest.mark.parametrize("status", sorted(set(RunStatus) - {RunStatus.STARTED}), ids=str)
def test_record_step_only_while_started(store: Storage, status: RunStatus) -> None:
    make_run(store, "r1", status)
    store.commit()
    before = store.get_run("r1")
    n = store.last_log_id()
    assert store.record_step("r1", step("role", None, {"e": 1})) is False
    store.commit()
    assert store.get_run("r1") == before
    assert store.last_log_id() == n


def test_record_step_of_unknown_run(store: Storage) -> None:
    assert store.record_step("nope", step("role", None, None)) is False
    store.commit()
    assert store.last_log_id() == 0


def test_count_attempt_increments_while_started(store: Storage) -> None:
    make_run(store, "r1", RunStatus.STARTED)
    assert [store.count_attempt("r1") for _ in range(3)] == [1, 2, 3]
    store.commit()
    run = store.get_run("r1")
    assert run is not None and run.attempts == 3
    assert [e.type for e in history(store, "r1")] == ["started"]


@pytest.mark.parametrize("status", sorted(set(RunStatus) - {RunStatus.STARTED}), ids=str)
def test_count_attempt_is_zero_unless_started(store: Storage, status: RunStatus) -> None:
    make_run(store, "r1", status)
    store.commit()
    assert store.count_attempt("r1") == 0
    store.commit()
    run = store.get_run("r1")
    assert run is not None and run.attempts == 0


def test_count_attempt_of_unknown_run(store: Storage) -> None:
    assert store.count_attempt("nope") == 0


# -- failed tries and inputs: record_failure, record_input ---------------------------------

NOT_STARTED = sorted(set(RunStatus) - {RunStatus.STARTED})


def tries_of(store: Reader, run_id: str) -> tuple[int, int | None]:
    run = store.get_run(run_id)
    assert run is not None
    return run.tries, run.retry_at


def test_record_failure_counts_tries_and_logs_the_record_as_it_is(store: Storage) -> None:
    make_run(store, "r1", RunStatus.STARTED)
    assert store.record_step("r1", step("a", None, {"n": 1}))
    first = failure("b", "ValueError: x", 1, 5_000, prompt={"p": 1})
    assert store.record_failure("r1", first, 5_000, ts=4_000)
    assert tries_of(store, "r1") == (1, 5_000)
    last = failure("b", "ValueError: y", 2, None)
    assert store.record_failure("r1", last, None, ts=6_000)
    store.commit()

    run = store.committed.get_run("r1")
    assert run is not None
    assert (run.tries, run.retry_at, run.updated_at, run.steps) == (2, None, 6_000, 1)
    failed = [e for e in history(store, "r1") if e.type == "step_failed"]
    assert [(e.payload, e.ts) for e in failed] == [
        (wire.loads(first), 4_000),
        (wire.loads(last), 6_000),
    ]
    assert failed[0].payload == {
        "role": "b", "prompt": {"p": 1}, "error": "ValueError: x", "try": 1, "retryAt": 5_000,
    }  # fmt: skip


def test_record_step_forgets_the_failed_tries(store: Storage) -> None:
    """A step done is the end of its failed tries: the next step starts at try 1."""
    make_run(store, "r1", RunStatus.STARTED)
    assert store.record_failure("r1", failure("a", "e", 1, 5_000), 5_000)
    assert store.record_failure("r1", failure("a", "e", 2, 9_000), 9_000)
    assert store.record_step("r1", step("a", None, "ok"), ts=10_000)
    store.commit()
    run = store.get_run("r1")
    assert run is not None
    assert (run.tries, run.retry_at, run.steps, run.updated_at) == (0, None, 1, 10_000)


def test_a_final_transition_drops_a_pending_retry(store: Storage) -> None:
    """A run cancelled (or failed) while it waits for its next try shows no next try: none
    will come. Its failed tries stay counted, as its history says."""
    make_run(store, "r1", RunStatus.STARTED)
    assert store.record_failure("r1", failure("a", "e", 1, 5_000), 5_000)
    assert store.transition_run("r1", Transition.CANCEL, payload_json='{"reason":null,"uid":0}',
                                error="cancelled by uid 0")  # fmt: skip
    store.commit()
    assert tries_of(store.committed, "r1") == (1, None)


def test_record_input_logs_the_event_and_forgets_the_failed_tries(store: Storage) -> None:
    make_run(store, "r1", RunStatus.STARTED)
    assert store.record_failure("r1", failure("a", "e", 1, 5_000), 5_000)
    event = role_failed("a", "e", 1)
    assert store.record_input("r1", event, ts=7_000)
    store.commit()
    run = store.get_run("r1")
    assert run is not None
    assert (run.tries, run.retry_at, run.steps, run.updated_at) == (0, None, 0, 7_000)
    entry = history(store, "r1")[-1]
    assert (entry.type, entry.source, entry.ts) == ("input", "workflow", 7_000)
    assert entry.payload == {"event": wire.loads(event)}
    # The payload is the event's text as given, wrapped: what the run's history counts.
    assert store.active_runs()[0].history == len('{"run":"r1"}') + len(input_payload(event))


def test_input_payload_wraps_the_events_text_as_it_is() -> None:
    assert input_payload('{"type": "x",  "n": 1}') == '{"event":{"type": "x",  "n": 1}}'
    assert wire.loads(input_payload('"é"')) == {"event": "é"}


@pytest.mark.parametrize("status", NOT_STARTED, ids=str)
@pytest.mark.parametrize("write", ["record_failure", "record_input"])
def test_failures_and_inputs_only_while_started(
    store: Storage, status: RunStatus, write: str
) -> None:
    """Guarded as steps are: a run that moved on (cancelled, failed, ...) takes no more."""
    make_run(store, "r1", status)
    store.commit()
    before = store.get_run("r1")
    n = store.last_log_id()
    if write == "record_failure":
        assert store.record_failure("r1", failure("a", "e", 1, 5_000), 5_000) is False
    else:
        assert store.record_input("r1", role_failed("a", "e", 1)) is False
    assert store.get_run("r1") == before
    store.commit()
    assert store.get_run("r1") == before
    assert store.last_log_id() == n


# -- waits and signals: record_wait, record_wake, pending_signals (issue 12) ---------------


def waiting_record(wait: str | None, until: int | None) -> str:
    """A ``waiting`` entry as the engine hands it to record_wait."""
    return wire.dumps({"wait": wait, "timeout": None, "until": until})


def signal(store: Storage, run_id: str, name: str, payload: Any = None) -> int:
    """A signal as the engine logs it (``workflow.signal``): its entry's id."""
    return store.append_log("workflow", "signal", run_id, {"name": name, "payload": payload})


def test_record_wait_parks_a_started_run_with_its_deadline(store: Storage) -> None:
    make_run(store, "r1", RunStatus.STARTED)
    assert store.record_failure("r1", failure("a", "e", 1, 5_000), 5_000)
    record = waiting_record("approve", 9_000)
    assert store.record_wait("r1", record, "approve", 9_000, ts=4_000)
    store.commit()
    run = store.committed.get_run("r1")
    assert run is not None
    assert (run.status, run.wait_for, run.wake_at) == (RunStatus.WAITING, "approve", 9_000)
    assert (run.tries, run.retry_at, run.updated_at) == (0, None, 4_000)
    assert run.to_wire()["waitFor"] == "approve" and run.to_wire()["wakeAt"] == 9_000
    entry = history(store, "r1")[-1]
    assert (entry.type, entry.payload, entry.ts) == ("waiting", wire.loads(record), 4_000)
    # A waiting run is active: recovery finds it, with its wait.
    (active,) = store.active_runs()
    assert (active.run_id, active.status, active.wait_for, active.wake_at) == (
        "r1", RunStatus.WAITING, "approve", 9_000,
    )  # fmt: skip


def test_record_wake_ends_the_wait_with_its_input(store: Storage) -> None:
    make_run(store, "r1", RunStatus.STARTED)
    assert store.record_wait("r1", waiting_record(None, 9_000), None, 9_000)
    assert store.record_wake("r1", '{"type":"wake"}', ts=9_001)
    store.commit()
    run = store.get_run("r1")
    assert run is not None
    assert (run.status, run.wait_for, run.wake_at, run.updated_at) == (
        RunStatus.STARTED, None, None, 9_001,
    )  # fmt: skip
    entry = history(store, "r1")[-1]
    assert (entry.type, entry.payload) == ("input", {"event": {"type": "wake"}})
    assert store.active_runs()[0].history == len('{"run":"r1"}') + len('{"event":{"type":"wake"}}')


@pytest.mark.parametrize("status", sorted(set(RunStatus) - {RunStatus.WAITING}), ids=str)
def test_only_a_waiting_run_wakes(store: Storage, status: RunStatus) -> None:
    make_run(store, "r1", status)
    store.commit()
    before, n = store.get_run("r1"), store.last_log_id()
    assert store.record_wake("r1", '{"type":"wake"}') is False
    store.commit()
    assert (store.get_run("r1"), store.last_log_id()) == (before, n)


@pytest.mark.parametrize("status", NOT_STARTED, ids=str)
def test_only_a_started_run_waits(store: Storage, status: RunStatus) -> None:
    make_run(store, "r1", status)
    store.commit()
    before, n = store.get_run("r1"), store.last_log_id()
    assert store.record_wait("r1", waiting_record("x", None), "x", None) is False
    store.commit()
    assert (store.get_run("r1"), store.last_log_id()) == (before, n)


def test_a_final_transition_drops_the_wait(store: Storage) -> None:
    make_run(store, "r1", RunStatus.STARTED)
    assert store.record_wait("r1", waiting_record("x", 9_000), "x", 9_000)
    assert move(store, "r1", Transition.CANCEL)
    store.commit()
    run = store.committed.get_run("r1")
    assert run is not None
    assert (run.status, run.wait_for, run.wake_at) == (RunStatus.CANCELLED, None, None)
    assert store.active_runs() == []


def test_pending_signals_are_those_no_input_delivered_in_arrival_order(store: Storage) -> None:
    make_run(store, "r1", RunStatus.STARTED)
    make_run(store, "r2", RunStatus.STARTED)
    first = signal(store, "r1", "approve", {"by": "ann"})
    other = signal(store, "r1", "note", 1)
    second = signal(store, "r1", "approve", {"by": "bob"})
    signal(store, "r2", "approve", "not r1's")
    assert [e.id for e in store.pending_signals("r1")] == [first, other, second]
    assert [e.id for e in store.pending_signals("r1", "approve")] == [first, second]
    assert store.pending_signals("r1", "approve", limit=1)[0].payload == {
        "name": "approve", "payload": {"by": "ann"},
    }  # fmt: skip
    assert store.record_wait("r1", waiting_record("approve", None), "approve", None)
    event = wire.dumps({"type": "signal", "name": "approve", "payload": {"by": "ann"}})
    assert store.record_wake("r1", event, first)
    assert history(store, "r1")[-1].payload == {"event": wire.loads(event), "signal": first}
    store.commit()
    assert [e.id for e in store.committed.pending_signals("r1")] == [other, second]
    assert [e.id for e in store.pending_signals("r1", "approve")] == [second]
    assert store.pending_signals("r1", "nothing") == []
    assert [e.id for e in store.pending_signals("r2")] == [first + 3]


def test_signalled_runs_are_those_with_a_pending_signal(store: Storage) -> None:
    for run_id in ("r1", "r2", "r3"):
        make_run(store, run_id, RunStatus.STARTED)
    taken = signal(store, "r1", "go")
    signal(store, "r2", "go")
    assert store.signalled_runs() == {"r1", "r2"}
    assert store.record_wait("r1", waiting_record("go", None), "go", None)
    assert store.record_wake("r1", '{"type":"signal","name":"go","payload":null}', taken)
    store.commit()
    assert store.committed.signalled_runs() == {"r2"}
    assert set().union(*[{e.ref_id} for r in ("r1", "r2", "r3")
                         for e in store.pending_signals(r)]) == {"r2"}  # fmt: skip


def test_a_copied_delivery_does_not_consume_the_new_runs_signals(store: Storage) -> None:
    """A retry from a step copies the old run's inputs, each naming the old run's signal
    entry: the new run's own signals stay pending."""
    make_run(store, "old", RunStatus.STARTED)
    delivered = signal(store, "old", "go")
    assert store.record_wait("old", waiting_record("go", None), "go", None)
    assert store.record_wake("old", '{"type":"signal","name":"go","payload":null}', delivered)
    assert store.record_step("old", step("a", None, {"n": 1}))
    assert move(store, "old", Transition.COMPLETE)
    store.create_run("new", "wf", Transition.START, None)
    store.copy_history("old", "new", 1)
    own = signal(store, "new", "go")
    store.commit()
    assert [e.id for e in store.pending_signals("new", "go")] == [own]


def test_a_signal_that_does_not_decode_is_not_pending(store: Storage) -> None:
    make_run(store, "r1", RunStatus.STARTED)
    good = signal(store, "r1", "go")
    store.commit()
    assert [e.id for e in store.pending_signals("r1")] == [good]


def test_failures_and_inputs_of_an_unknown_run(store: Storage) -> None:
    assert store.record_failure("nope", failure("a", "e", 1, None), None) is False
    assert store.record_input("nope", role_failed("a", "e", 1)) is False
    store.commit()
    assert store.last_log_id() == 0


def test_tries_survive_a_transition(store: Storage) -> None:
    """A run given up on keeps the count of the tries it had (transitions change only
    status, updated_at and error)."""
    make_run(store, "r1", RunStatus.STARTED)
    assert store.record_failure("r1", failure("a", "e", 1, None), None)
    assert move(store, "r1", Transition.GIVE_UP, reason="role 'a' failed 1 try")
    store.commit()
    run = store.get_run("r1")
    assert run is not None
    assert (run.status, run.error, run.tries) == (RunStatus.FAILED, "role 'a' failed 1 try", 1)


# -- cancelled runs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "uid", "error"),
    [
        (None, 0, "cancelled by uid 0"),
        ("not needed", 1000, "cancelled by uid 1000: not needed"),
        ("", 7, "cancelled by uid 7"),
        (None, None, "cancelled"),
        ("shutting the host down", None, "cancelled: shutting the host down"),
    ],
)
def test_cancelled_error_wording(reason: str | None, uid: int | None, error: str) -> None:
    assert cancelled_error(reason, uid) == error


@pytest.mark.parametrize("status", sorted(ACTIVE), ids=str)
def test_cancel_logs_reason_and_uid_and_stores_the_error(store: Storage, status: RunStatus) -> None:
    make_run(store, "r1", status)
    assert move(store, "r1", Transition.CANCEL, reason="not needed", uid=1000, ts=9_000)
    store.commit()
    run = store.get_run("r1")
    assert run is not None
    assert (run.status, run.error, run.updated_at) == (
        RunStatus.CANCELLED,
        "cancelled by uid 1000: not needed",
        9_000,
    )
    entry = history(store, "r1")[-1]
    assert (entry.type, entry.payload) == ("cancelled", {"reason": "not needed", "uid": 1000})
    assert store.active_runs() == []
    assert not move(store, "r1", Transition.CANCEL)  # once


# -- a history copied: copy_history --------------------------------------------------------


@pytest.fixture
def source(store: Storage) -> Storage:
    """Run ``src`` (started, 3 steps) with inputs before, between and after its steps, and
    entries that are not its history: a failed try, a log line, a resume; ``dst`` just
    created. All committed."""
    make_run(store, "src", RunStatus.STARTED)
    assert store.record_input("src", wire.dumps({"type": "signal", "n": 0}))
    assert store.record_step("src", step("a", {"q": "é"}, {"type": "x", "n": 1}))
    assert store.record_failure("src", failure("b", "e", 1, 5_000), 5_000)
    store.append_log("workflow", "log", "src", "a line")
    store.append_log("workflow", "resumed", "src", {"reason": "worker died", "attempt": 1})
    assert store.record_input("src", role_failed("b", "e", 1))
    assert store.record_step("src", step("c", None, {"type": "y", "n": 2}))
    assert store.record_step("src", step("a", None, {"type": "z", "n": 3}))
    assert store.record_input("src", wire.dumps({"type": "late"}))
    store.create_run("dst", "wf", Transition.START, {"retry": "src"}, retry_of="src", ts=1_000)
    store.commit()
    return store


def replayed(store: Reader, run_id: str) -> list[LogEntry]:
    entries: list[LogEntry] = []
    more = True
    while more:
        page, more = store.run_steps_page(run_id, entries[-1].id if entries else 0)
        entries += page
    return entries


def payload_bytes(entries: list[LogEntry]) -> int:
    return sum(len(wire.dumps(e.payload).encode()) for e in entries)


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_copy_history_copies_up_to_the_kth_step(source: Storage, steps: int) -> None:
    """The steps up to the K-th and the inputs before it, in order, as entries of the new
    run with the same payloads, and the inputs after it, up to the next step, but a
    role_failed (the failure a retry is for); no failed try, no log line."""
    original = replayed(source, "src")
    assert [e.type for e in original] == [
        "input", "step_complete", "input", "step_complete", "step_complete", "input",
    ]  # fmt: skip
    step_at = [i for i, e in enumerate(original) if e.type == "step_complete"]
    upto, following = step_at[steps - 1], [*step_at, len(original)][steps]
    after = [
        e for e in original[upto + 1 : following] if e.payload["event"]["type"] != "role_failed"
    ]
    wanted = original[: upto + 1] + after
    assert [e.payload["event"]["type"] for e in after] == {1: [], 2: [], 3: ["late"]}[steps]

    size = source.copy_history("src", "dst", steps, ts=8_000)
    source.commit()

    copies = replayed(source.committed, "dst")
    assert [(e.type, e.payload) for e in copies] == [(e.type, e.payload) for e in wanted]
    assert {(e.source, e.ref_id, e.ts) for e in copies} == {("workflow", "dst", 8_000)}
    assert min(e.id for e in copies) > max(e.id for e in original)
    assert size == payload_bytes(wanted)  # UTF-8 bytes: "é" counts 2
    run = source.committed.get_run("dst")
    assert run is not None
    assert (run.steps, run.updated_at, run.tries, run.status) == (
        steps, 8_000, 0, RunStatus.STARTED,
    )  # fmt: skip
    [active_dst] = [r for r in source.active_runs() if r.run_id == "dst"]
    assert active_dst.history == len('{"retry":"src"}') + size
    assert [e.type for e in history(source, "dst")] == ["started"] + [e.type for e in wanted]
    assert replayed(source, "src") == original  # the source is untouched


def test_copy_history_keeps_payload_texts_identical(store: Storage) -> None:
    """Copied as stored, not decoded and encoded again: the bytes counted are the same."""
    make_run(store, "src", RunStatus.STARTED)
    record = '{"role": "a",   "prompt": null, "event": {"b": 1, "a": 2.50}}'
    assert store.record_step("src", record)
    store.create_run("dst", "wf", Transition.START, None)
    assert store.copy_history("src", "dst", 1) == len(record)
    store.commit()
    [copy] = replayed(store, "dst")
    assert copy.payload == wire.loads(record)
    [active_dst] = [r for r in store.active_runs() if r.run_id == "dst"]
    assert active_dst.history == len(record)


def test_copy_history_of_no_steps_copies_nothing(source: Storage) -> None:
    n = source.last_log_id()
    assert source.copy_history("src", "dst", 0) == 0
    source.commit()
    assert source.last_log_id() == n
    run = source.get_run("dst")
    assert run is not None and run.steps == 0


@pytest.mark.parametrize(
    ("from_run", "to_run", "steps"),
    [
        ("src", "dst", 4),  # more steps than the run has
        ("src", "dst", -1),
        ("nope", "dst", 1),
        ("nope", "dst", 0),
        ("src", "nope", 1),
        ("src", "src", 1),
        ("dst", "src", 0),  # src has a history of its own
    ],
    ids=["too-many", "negative", "unknown-from", "unknown-from-0", "unknown-to", "itself",
         "into-a-history"],
)  # fmt: skip
def test_copy_history_refuses_and_writes_nothing(
    source: Storage, from_run: str, to_run: str, steps: int
) -> None:
    runs = runs_as_read(source)
    n = source.last_log_id()
    with pytest.raises(ValueError):
        source.copy_history(from_run, to_run, steps)
    assert not source.dirty
    source.commit()
    assert source.last_log_id() == n
    assert runs_as_read(source) == runs


def test_copy_history_refuses_a_run_with_failed_tries(source: Storage) -> None:
    """A failed try is history too: the new run's tries would say one thing, its entries
    another."""
    assert source.record_failure("dst", failure("a", "e", 1, None), None)
    source.commit()
    with pytest.raises(ValueError):
        source.copy_history("src", "dst", 1)


# -- what a resume replays: run_steps_page ---------------------------------------------------


def test_run_steps_page_is_steps_and_inputs_in_order(source: Storage) -> None:
    """What a resume sends, each with its ``event``: no failed try, log line or transition."""
    entries = replayed(source, "src")
    assert [e.id for e in entries] == sorted(e.id for e in entries)
    assert all("event" in e.payload for e in entries)
    assert [e.payload["event"].get("n") for e in entries] == [0, 1, None, 2, 3, None]
    page, more = source.run_steps_page("src", entries[2].id)
    assert (page, more) == (entries[3:], False)
    assert source.run_steps_page("nope") == ([], False)


def test_run_steps_page_pages_inputs_too(store: Storage) -> None:
    make_run(store, "r1", RunStatus.STARTED)
    for n in range(4):
        assert store.record_input("r1", wire.dumps({"n": n, "pad": "x" * (1500 * KIB)}))
    store.commit()
    first, more = store.run_steps_page("r1")
    assert more and 1 <= len(first) < 4
    assert [e.payload["event"]["n"] for e in replayed(store, "r1")] == [0, 1, 2, 3]


# -- queries and pages: query_logs, run_history_page -----------------------------------


LOG_ROWS: list[tuple[str, str, str | None, Any, int]] = [
    ("sense", "signal", "disk", {"used": 1}, 1_000),
    ("workflow", "started", "run-a", {}, 1_010),
    ("workflow", "log", "run-a", "hello", 1_020),
    ("sense", "error", "disk", "boom", 1_030),
    ("workflow", "started", "run-b", None, 1_040),
    ("workflow", "step_complete", "run-a", {"role": "x"}, 1_050),
    ("daemon", "reload", None, {"changed": []}, 1_050),
    ("sense", "signal", "run-a", 3, 1_060),
    ("workflow", "completed", "run-a", None, 1_070),
    ("workflow", "log", "run-b", "bye", 1_080),
]


@pytest.fixture
def logged(store: Storage) -> Storage:
    for row in LOG_ROWS:
        store.append_log(*row)
    store.commit()
    return store


def expected_ids(
    *,
    source: str | None = None,
    type: str | None = None,
    ref_id: str | None = None,
    since: int | None = None,
    after_id: int | None = None,
    before_id: int | None = None,
    limit: int | None = 100,
) -> list[int]:
    """The documented semantics over LOG_ROWS (ids are 1-based positions)."""
    ids = [
        i
        for i, (src, typ, ref, _, ts) in enumerate(LOG_ROWS, start=1)
        if (source is None or src == source)
        and (type is None or typ == type)
        and (ref_id is None or ref == ref_id)
        and (since is None or ts >= since)
        and (after_id is None or i > after_id)
        and (before_id is None or i < before_id)
    ]
    n = MAX_QUERY_LIMIT if limit is None else limit
    return ids[:n] if since is not None or after_id is not None else ids[-n:]


@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"source": "sense"},
        {"type": "log"},
        {"ref_id": "run-a"},
        {"source": "workflow", "ref_id": "run-a"},
        {"source": "workflow", "type": "started"},
        {"since": 1_050},
        {"since": 1_050, "source": "workflow"},
        {"after_id": 4},
        {"after_id": 4, "ref_id": "run-a"},
        {"after_id": 10},
        {"before_id": 6},
        {"before_id": 6, "source": "sense"},
        {"before_id": 1},
        {"after_id": 2, "before_id": 7},
        {"since": 1_020, "before_id": 9},
        {"source": "nobody"},
    ],
    ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()) or "all",
)
@pytest.mark.parametrize("limit", [None, 100, 3, 1])
def test_query_logs_filters(logged: Storage, filters: dict[str, Any], limit: int | None) -> None:
    entries = logged.query_logs(**filters, limit=limit)
    assert [e.id for e in entries] == expected_ids(**filters, limit=limit)


def test_query_logs_returns_the_newest_oldest_first(logged: Storage) -> None:
    """What ``nervectl logs`` shows by default: the tail, in reading order."""
    assert [e.id for e in logged.query_logs(limit=3)] == [8, 9, 10]


def test_query_logs_after_id_follows_from_the_oldest(logged: Storage) -> None:
    """What ``--follow`` needs: no entry skipped when more than ``limit`` arrived."""
    assert [e.id for e in logged.query_logs(after_id=2, limit=3)] == [3, 4, 5]


def test_query_logs_since_is_inclusive(logged: Storage) -> None:
    assert [e.ts for e in logged.query_logs(since=1_050)] == [1_050, 1_050, 1_060, 1_070, 1_080]


def test_query_logs_decodes_entries(logged: Storage) -> None:
    first, *_ = logged.query_logs(limit=None)
    assert first == LogEntry(1, "sense", "signal", "disk", {"used": 1}, 1_000)
    assert first.to_wire() == {
        "id": 1,
        "source": "sense",
        "type": "signal",
        "refId": "disk",
        "payload": {"used": 1},
        "ts": 1_000,
    }
    assert logged.query_logs(type="reload")[0].ref_id is None


def test_append_log_returns_ids_and_stamps_time(store: Storage) -> None:
    assert store.last_log_id() == 0
    first = store.append_log("test", "a", None, None)
    second = store.append_log("test", "b", None, [1])
    assert (first, second) == (1, 2)
    assert store.last_log_id() == 2
    entry = store.query_logs(type="b")[0]
    assert entry.ts > 1_600_000_000_000  # milliseconds since the epoch, not seconds
    assert entry.payload == [1]


@pytest.fixture
def big(store: Storage) -> Storage:
    """More entries than one query may return."""
    for i in range(MAX_QUERY_LIMIT + 5):
        store.append_log("test", "n", None, i, ts=1_000 + i)
    store.commit()
    return store


@pytest.mark.parametrize("limit", [None, MAX_QUERY_LIMIT, MAX_QUERY_LIMIT + 100])
def test_query_logs_limit_is_capped(big: Storage, limit: int | None) -> None:
    entries = big.query_logs(limit=limit)
    assert len(entries) == MAX_QUERY_LIMIT
    assert entries[-1].payload == MAX_QUERY_LIMIT + 4  # the newest ...
    assert entries[0].payload == 5  # ... oldest first
    following = big.query_logs(after_id=0, limit=limit)
    assert len(following) == MAX_QUERY_LIMIT
    assert following[0].payload == 0


def test_query_logs_negative_limit_is_still_capped(big: Storage) -> None:
    assert len(big.query_logs(limit=-1)) <= MAX_QUERY_LIMIT


def test_query_logs_pages_end_at_the_result_budget(store: Storage) -> None:
    """Six entries of 900 KiB: four fit in one answer; paging back and forward gets all."""
    ids = fill(store, [900 * KIB] * 6)
    newest = store.query_logs()
    assert [e.id for e in newest] == ids[2:]
    assert sum(len(e.payload) + 2 for e in newest) <= BUDGET
    assert [e.id for e in store.query_logs(before_id=newest[0].id)] == ids[:2]
    assert store.query_logs(before_id=ids[0]) == []

    assert [e.id for e in store.query_logs(after_id=0)] == ids[:4]
    assert [e.id for e in store.query_logs(after_id=ids[3])] == ids[4:]
    assert store.query_logs(after_id=ids[-1]) == []
    assert [e.id for e in store.query_logs(since=0, limit=2)] == ids[:2]


def test_query_logs_always_answers_at_least_one_entry(store: Storage) -> None:
    """Entries that fill the budget alone still come one per page: paging always advances."""
    ids = fill(store, [MIB, BUDGET, BUDGET, 10])
    assert [e.id for e in store.query_logs()] == ids[3:]
    assert [e.id for e in store.query_logs(before_id=ids[3])] == [ids[2]]
    assert [e.id for e in store.query_logs(before_id=ids[2])] == [ids[1]]
    assert [e.id for e in store.query_logs(after_id=0)] == [ids[0]]


def test_a_payload_larger_than_an_answer_comes_alone_unreadable(store: Storage) -> None:
    """Only an older release could have kept one; it costs its entry, never the answer."""
    ids = fill(store, [10, BUDGET + 1, 10])
    assert [e.id for e in store.query_logs()] == ids[2:]
    [huge] = store.query_logs(before_id=ids[2])
    assert huge.id == ids[1]
    assert isinstance(huge.payload, Unreadable)
    assert huge.to_wire()["payload"] is None
    assert huge.to_wire()["unreadable"] == "4.0 MiB stored, more than an answer carries (4.0 MiB)"
    assert [e.id for e in store.query_logs(after_id=0)] == ids[:1]


def test_query_logs_many_small_entries_stop_at_the_limit(store: Storage) -> None:
    ids = fill(store, [100] * 50)
    assert [e.id for e in store.query_logs(limit=20)] == ids[30:]
    assert [e.id for e in store.query_logs(before_id=ids[30], limit=20)] == ids[10:30]


def test_run_history_page_pages_on_with_more(store: Storage) -> None:
    make_run(store, "r1", RunStatus.STARTED)
    for n in range(5):
        assert store.record_step("r1", step("role", {"n": n}, "x" * (1500 * KIB)))
    store.append_log("workflow", "log", "other", "not this run's")
    store.transition_run("r1", Transition.COMPLETE)
    store.commit()
    every = history(store, "r1")
    assert len(every) == 7  # started, 5 steps, completed

    pages = []
    after, more = 0, True
    while more:
        entries, more = store.run_history_page("r1", after)
        assert entries
        pages.append(entries)
        after = entries[-1].id
    assert [[e.type for e in page] for page in pages] == [
        ["started", "step_complete", "step_complete"],
        ["step_complete", "step_complete"],
        ["step_complete", "completed"],
    ]
    assert [e for page in pages for e in page] == every
    assert store.run_history_page("r1", after) == ([], False)
    assert store.run_history_page("nope") == ([], False)


def test_run_history_pages_newest_first_and_counts_what_it_leaves_out(store: Storage) -> None:
    make_run(store, "r1", RunStatus.STARTED)
    for n in range(8):
        assert store.record_step("r1", step("role", {"n": n}, n))
    store.append_log("workflow", "log", "other", "not this run's")
    store.transition_run("r1", Transition.COMPLETE)
    store.commit()
    ids = [e.id for e in history(store, "r1")]
    assert len(ids) == 10  # started, 8 steps, completed

    def page(**kwargs: Any) -> tuple[list[int], int, bool]:
        entries, earlier, more = store.run_history("r1", **kwargs)
        return [e.id for e in entries], earlier, more

    assert page() == (ids, 0, False)  # a short run: whole, as before there were pages
    assert page(limit=3) == (ids[-3:], 7, False)
    assert page(limit=3, before_id=ids[-3]) == (ids[-6:-3], 4, True)
    assert page(limit=3, after_id=ids[1]) == (ids[2:5], 2, True)
    assert page(limit=3, after_id=ids[1], before_id=ids[3]) == (ids[2:3], 2, True)
    assert page(after_id=ids[-1]) == ([], 10, False)
    assert page(after_id=2**63 - 1) == ([], 10, False)
    assert page(before_id=ids[0]) == ([], 0, True)
    assert page(limit=100_000) == (ids, 0, False)
    assert store.run_history("nope") == ([], 0, False)
    walked, before = [], None
    while True:  # back to the start, a page at a time: every entry once
        got, earlier, _ = page(limit=4, before_id=before)
        walked = got + walked
        if not earlier:
            break
        before = got[0]
    assert walked == ids


def test_run_history_cut_by_the_budget_ends_early(store: Storage) -> None:
    make_run(store, "r1", RunStatus.STARTED)
    for n in range(5):
        assert store.record_step("r1", step("role", {"n": n}, "x" * (1500 * KIB)))
    store.transition_run("r1", Transition.COMPLETE)
    store.commit()
    ids = [e.id for e in history(store, "r1")]
    entries, earlier, more = store.run_history("r1", limit=4)  # 4 of them: 3 steps and the end
    assert ([e.id for e in entries], earlier, more) == (ids[3:5], 3, True)
    entries, earlier, more = store.run_history("r1", after_id=ids[4], limit=2)
    assert ([e.id for e in entries], earlier, more) == (ids[5:], 5, False)


def test_run_wire_form_cuts_a_huge_error(store: Storage) -> None:
    make_run(store, "r1", RunStatus.STARTED)
    store.transition_run("r1", Transition.FAIL, error="e" * MIB)
    store.commit()
    run = store.get_run("r1")
    assert run is not None and run.error == "e" * MIB  # kept whole
    error = run.to_wire()["error"]
    assert len(error.encode()) <= 64 * KIB and error.endswith("[truncated: 1.0 MiB in all]")
    assert len(run.to_wire(error_limit=1000)["error"].encode()) <= 1000


# -- run reads -------------------------------------------------------------------------


def test_get_run_unknown_is_none(store: Storage) -> None:
    assert store.get_run("nope") is None


def test_run_record_wire_form_has_the_spec_fields(store: Storage) -> None:
    record = store.create_run("r1", "wf", Transition.START, {"a": 1}, ts=1_000)
    wire = record.to_wire()
    spec_fields = {"runId", "workflow", "status", "createdAt", "updatedAt", "steps", "error"}
    assert spec_fields <= wire.keys()
    assert wire["status"] == "started"
    assert (wire["runId"], wire["createdAt"], wire["steps"]) == ("r1", 1_000, 0)
    assert (wire["tries"], wire["retryAt"]) == (0, None)
    assert store.record_failure("r1", failure("a", "e", 1, 5_000), 5_000)
    run = store.get_run("r1")
    assert run is not None
    assert (run.to_wire()["tries"], run.to_wire()["retryAt"]) == (1, 5_000)


FIND_IDS = ["abc", "abcd1", "abcd2", "abce", "ab_x", "abcé", "b", "abd"]


@pytest.fixture
def findable(store: Storage) -> Storage:
    for run_id in FIND_IDS:
        store.create_run(run_id, "wf", Transition.ENQUEUE, None)
    store.commit()
    return store


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("abcd", ["abcd1", "abcd2"]),
        ("abc", ["abc", "abcd1", "abcd2", "abce", "abcé"]),
        ("abcd1", ["abcd1"]),
        ("abcé", ["abcé"]),
        ("ab_", ["ab_x"]),  # not LIKE: '_' is no wildcard
        ("ab%", []),
        ("abcf", []),
        ("c", []),
        ("", sorted(FIND_IDS)),
    ],
)
def test_find_runs_by_prefix(findable: Storage, prefix: str, expected: list[str]) -> None:
    """Ids sharing only a shorter prefix must not match (``workflow.inspect`` takes a
    unique prefix and must not pick the wrong run)."""
    assert [r.run_id for r in findable.find_runs(prefix, limit=100)] == expected


def test_find_runs_default_limit_tells_ambiguity(findable: Storage) -> None:
    """Two results are enough to know a prefix is ambiguous."""
    assert [r.run_id for r in findable.find_runs("abc")] == ["abc", "abcd1"]


STATUSES = list(RunStatus)  # queued, started, waiting, completed, failed, crashed, dropped,
# cancelled
MANY = 2 * len(STATUSES)


@pytest.fixture
def many(store: Storage) -> Storage:
    """Runs of two workflows in every status, created in id order: run i is in status
    ``STATUSES[i % 8]``, of workflow ``a`` when i is odd, else ``b``."""
    for i in range(MANY):
        make_run(store, f"r{i:02d}", STATUSES[i % len(STATUSES)], workflow="a" if i % 2 else "b")
    store.commit()
    return store


def ids(records: list[RunRecord]) -> list[str]:
    return [r.run_id for r in records]


def test_list_runs_newest_first(many: Storage) -> None:
    assert ids(many.list_runs()) == [f"r{i:02d}" for i in reversed(range(MANY))]


def test_list_runs_by_status_and_workflow(many: Storage) -> None:
    started = many.list_runs(statuses=[RunStatus.STARTED])
    assert {r.status for r in started} == {RunStatus.STARTED}
    assert ids(started) == ["r09", "r01"]

    cancelled = many.list_runs(statuses=[RunStatus.CANCELLED])
    assert ids(cancelled) == ["r15", "r07"]

    final_a = many.list_runs(statuses=sorted(set(RunStatus) - ACTIVE), workflow="a")
    assert ids(final_a) == ["r15", "r13", "r11", "r07", "r05", "r03"]
    assert {r.workflow for r in final_a} == {"a"}

    assert ids(many.list_runs(workflow="b", limit=2)) == ["r14", "r12"]
    assert many.list_runs(workflow="nope") == []
    assert many.list_runs(statuses=[]) == []


def test_list_runs_limit(many: Storage) -> None:
    assert ids(many.list_runs(limit=3)) == ["r15", "r14", "r13"]
    assert len(many.list_runs(limit=None)) == MANY


def test_active_runs_in_creation_order(store: Storage) -> None:
    """Recovery re-queues in original order: a queued run dispatched later keeps its place."""
    make_run(store, "q1", RunStatus.QUEUED)
    make_run(store, "s1", RunStatus.STARTED)
    make_run(store, "done", RunStatus.COMPLETED)
    make_run(store, "q2", RunStatus.QUEUED)
    make_run(store, "gone", RunStatus.DROPPED)
    make_run(store, "s2", RunStatus.STARTED)
    assert store.transition_run("q1", Transition.DISPATCH)
    store.commit()
    active = store.active_runs()
    assert ids(active) == ["q1", "s1", "q2", "s2"]
    assert [r.status for r in active] == ["started", "started", "queued", "started"]
    assert [r.seq for r in active] == sorted(r.seq for r in active)


def test_active_runs_count_each_runs_history_in_bytes(store: Storage) -> None:
    """What a resume would read: the stored trigger payload and step records, UTF-8 bytes."""
    store.create_run("r1", "wf", Transition.START, {"é": 1})  # {"é":1}: 8 bytes
    record = step("role", None, {"type": "x"})
    store.record_step("r1", record)
    store.append_log("workflow", "log", "r1", "log lines are not resumed")
    store.create_run("r2", "wf", Transition.ENQUEUE, None)
    store.commit()
    assert [(r.run_id, r.history) for r in store.active_runs()] == [
        ("r1", 8 + len(record)),
        ("r2", 0),
    ]
    run = store.get_run("r1")
    assert run is not None and run.history == 0  # counted by active_runs only


def test_run_history_is_only_this_runs_workflow_entries(store: Storage) -> None:
    make_run(store, "r1", RunStatus.STARTED)
    make_run(store, "r10", RunStatus.STARTED)
    store.append_log("workflow", "log", "r1", "line 1")
    store.append_log("sense", "signal", "r1", "same ref_id, other source")
    store.record_step("r1", step("role", None, "ev"))
    store.append_log("workflow", "log", "r10", "other run")
    store.transition_run("r1", Transition.COMPLETE)
    store.commit()

    entries = history(store, "r1")
    assert [(e.type, e.payload) for e in entries] == [
        ("started", {"run": "r1"}),
        ("log", "line 1"),
        ("step_complete", {"role": "role", "prompt": None, "event": "ev"}),
        ("completed", None),
    ]
    assert [e.id for e in entries] == sorted(e.id for e in entries)
    assert {(e.source, e.ref_id) for e in entries} == {("workflow", "r1")}
    assert history(store, "nope") == []


def test_count_runs(many: Storage) -> None:
    expected: dict[tuple[str, RunStatus], int] = {}
    for i in range(MANY):
        key = ("a" if i % 2 else "b", STATUSES[i % len(STATUSES)])
        expected[key] = expected.get(key, 0) + 1
    assert many.count_runs() == expected


def test_list_and_count_runs_by_host(store: Storage) -> None:
    """The fleet view's filter (issue 15): ``host`` selects the runs whose host is that, in
    the list and in the count alike (``workflow.count`` says how many ``workflow.list``
    would list), with and without statuses; a run with no host (every run on SQLite, a
    queued ``any`` run) is no host's, and a host no run has selects none."""
    many = store
    for i in range(MANY):  # as ``many``'s, and host x's when i % 3 == 0, y's when 1, none when 2
        make_run(store, f"r{i:02d}", STATUSES[i % len(STATUSES)], workflow="a" if i % 2 else "b")
        if i % 3 < 2:  # in the batch that created it (a host is the writer's to set)
            store._conn.execute(  # type: ignore[attr-defined]
                "UPDATE workflow_runs SET host = ? WHERE run_id = ?", ("xy"[i % 3], f"r{i:02d}")
            )
    store.commit()
    on_x = [f"r{i:02d}" for i in reversed(range(MANY)) if i % 3 == 0]
    assert ids(many.list_runs(host="x")) == on_x
    assert ids(many.list_runs(host="x", limit=2)) == on_x[:2]
    assert many.list_runs(host="z") == [] and many.count_runs(host="z") == {}
    for statuses in (None, sorted(ACTIVE), [RunStatus.STARTED], sorted(set(RunStatus) - ACTIVE)):
        for workflow in (None, "a"):
            listed = many.list_runs(statuses=statuses, workflow=workflow, host="y", limit=None)
            assert all(r.host == "y" for r in listed)
            expected = [
                f"r{i:02d}" for i in reversed(range(MANY)) if i % 3 == 1
                and (statuses is None or STATUSES[i % len(STATUSES)] in statuses)
                and (workflow is None or (i % 2 == 1) == (workflow == "a"))
            ]  # fmt: skip
            assert ids(listed) == expected, (statuses, workflow)
            counted = sum(
                n for (w, status), n in many.count_runs(host="y").items()
                if (statuses is None or status in statuses) and workflow in (None, w)
            )  # fmt: skip
            assert counted == len(listed), (statuses, workflow)
    assert sum(many.count_runs().values()) == MANY  # no host: every run, with one or none


def test_meta_get_and_set(store: Storage) -> None:
    assert store.get_meta("boot") is None
    store.set_meta("boot", "1")
    store.set_meta("boot", "2")
    store.set_meta("other", "x")
    assert store.get_meta("boot") == "2"
    assert store.committed.get_meta("boot") is None
    store.commit()
    assert (store.committed.get_meta("boot"), store.committed.get_meta("other")) == ("2", "x")


# -- retention ---------------------------------------------------------------------------


@pytest.fixture
def aged(store: Storage) -> Storage:
    """Final runs r0..r5 last updated at 1000..1005 (r2 with a log line and a step), two
    active runs updated at 0, and sense entries at 100..104; all committed."""
    for i in range(6):
        store.create_run(f"r{i}", "wf", Transition.START, {"i": i}, ts=1_000)
        if i == 2:
            store.append_log("workflow", "log", "r2", "a line", ts=1_000)
            store.record_step("r2", step("role", None, None), ts=1_000)
        assert store.transition_run(f"r{i}", Transition.COMPLETE, ts=1_000 + i)
    store.create_run("q", "wf", Transition.ENQUEUE, None, ts=0)
    store.create_run("s", "wf", Transition.START, None, ts=0)
    for i in range(5):
        store.append_log("sense", "signal", "disk", i, ts=100 + i)
    store.append_log("daemon", "reload", None, None, ts=0)
    store.commit()
    return store


def run_ids(store: Storage) -> list[str]:
    return sorted(r.run_id for r in store.list_runs(limit=None))


def test_prune_runs_by_age_takes_final_runs_with_their_entries(aged: Storage) -> None:
    assert aged.prune_runs(older_than=1_003, keep=None, limit=100) == 3
    aged.commit()
    assert run_ids(aged.committed) == ["q", "r3", "r4", "r5", "s"]
    assert history(aged.committed, "r2") == []
    assert aged.committed.query_logs(ref_id="r2") == []
    assert aged.committed.query_logs(source="sense", limit=None) != []  # not a run's


def test_prune_runs_keeps_the_newest_final_runs_and_never_an_active_one(aged: Storage) -> None:
    assert aged.prune_runs(older_than=None, keep=2, limit=100) == 4
    assert run_ids(aged) == ["q", "r4", "r5", "s"]
    assert aged.prune_runs(older_than=10**15, keep=0, limit=100) == 2
    assert run_ids(aged) == ["q", "s"]
    assert [r.run_id for r in aged.active_runs()] == ["q", "s"]
    assert aged.prune_runs(older_than=None, keep=None, limit=100) == 0


def test_prune_runs_takes_cancelled_runs_as_final(store: Storage) -> None:
    """Every status but the active ones is final, cancelled too; a started run with failed
    tries waiting for its next one is active and stays."""
    make_run(store, "c", RunStatus.CANCELLED)
    make_run(store, "s", RunStatus.STARTED)
    assert store.record_failure("s", failure("a", "e", 1, 10**15), 10**15)
    make_run(store, "q", RunStatus.QUEUED)
    store.commit()
    assert store.prune_runs(older_than=10**15, keep=0, limit=100) == 1
    assert run_ids(store) == ["q", "s"]
    assert history(store, "c") == []


def test_prune_runs_takes_at_most_limit_oldest_first(aged: Storage) -> None:
    assert aged.prune_runs(older_than=10**15, keep=None, limit=2) == 2
    assert run_ids(aged) == ["q", "r2", "r3", "r4", "r5", "s"]
    assert aged.prune_runs(older_than=10**15, keep=None, limit=0) == 0


def test_prune_sense_logs_takes_only_old_sense_entries_oldest_first(aged: Storage) -> None:
    assert aged.prune_sense_logs(older_than=103, limit=2) == 2
    assert [e.payload for e in aged.query_logs(source="sense")] == [2, 3, 4]
    assert aged.prune_sense_logs(older_than=103, limit=100) == 1
    assert aged.prune_sense_logs(older_than=103, limit=100) == 0
    aged.commit()
    assert [e.payload for e in aged.committed.query_logs(source="sense")] == [3, 4]
    assert aged.committed.query_logs(source="daemon") != []  # older, but no sense entry
    assert len(history(aged.committed, "r2")) == 4


# -- a store opened again ----------------------------------------------------------------


def test_reopening_is_idempotent_and_keeps_data(backend: Backend) -> None:
    first = backend.open()
    first.create_run("r1", "wf", Transition.START, {"n": 1})
    first.set_meta("k", "v")
    first.commit()
    first.close()

    for _ in range(2):
        again = backend.open()
        run = again.get_run("r1")
        assert run is not None and run.status is RunStatus.STARTED
        assert run.trigger_payload == {"n": 1}
        assert again.get_meta("k") == "v"
        assert [e.type for e in history(again, "r1")] == ["started"]
        again.close()


def test_close_drops_the_uncommitted_batch(backend: Backend) -> None:
    """Only a commit acknowledges; what no commit covered was never promised to anyone."""
    s = backend.open()
    s.create_run("r0", "wf", Transition.ENQUEUE, None)
    s.commit()
    s.create_run("r1", "wf", Transition.ENQUEUE, None)
    s.close()
    again = backend.open()
    assert [r.run_id for r in again.list_runs()] == ["r0"]
    assert len(again.query_logs()) == 1
    again.close()


def test_a_process_dying_mid_batch_leaves_nothing_of_it(backend: Backend) -> None:
    """kill -9 of the master between a write and its commit loses the whole batch: neither
    the run row nor its log entry, while earlier commits survive."""
    script = (
        textwrap.dedent(
            """
        import os, sys
        from pathlib import Path
        from nerved.states import Transition
        """
        )
        + backend.child
        + textwrap.dedent(
            """
        store.create_run("kept", "wf", Transition.START, {"n": 1})
        store.commit()
        store.create_run("lost", "wf", Transition.START, {"n": 2})
        store.append_log("test", "lost", "lost", None)
        os._exit(0)
        """
        )
    )
    subprocess.run([sys.executable, "-c", script, backend.place], check=True, cwd=REPO)

    store = backend.open()
    assert [r.run_id for r in store.list_runs()] == ["kept"]
    assert [(e.type, e.ref_id) for e in store.query_logs()] == [("started", "kept")]
    store.close()


def test_a_reopened_store_recovers_active_runs_as_they_were_committed(backend: Backend) -> None:
    """What recovery reads after a restart: the active runs in creation order, each with
    its steps, attempts and history size, its steps page by page; ids go on growing."""
    s = backend.open()
    make_run(s, "done", RunStatus.COMPLETED)
    s.create_run("q1", "wf", Transition.ENQUEUE, {"q": 1})
    s.create_run("s1", "wf", Transition.START, {"s": 1})
    records = [step("role", {"n": n}, {"type": "x", "n": n}) for n in range(3)]
    for record in records:
        assert s.record_step("s1", record)
    s.append_log("workflow", "log", "s1", "a line, not a step")
    assert s.count_attempt("s1") == 1
    s.commit()
    last = s.last_log_id()
    assert s.record_step("s1", step("role", None, "lost"))  # never committed
    assert s.count_attempt("s1") == 2
    s.close()

    again = backend.open()
    active = again.active_runs()
    assert [(r.run_id, r.status, r.steps, r.attempts) for r in active] == [
        ("q1", RunStatus.QUEUED, 0, 0),
        ("s1", RunStatus.STARTED, 3, 1),
    ]
    assert active[1].history == len(wire.dumps({"s": 1})) + sum(len(r) for r in records)
    assert active[1].trigger_payload == {"s": 1}
    entries, more = again.run_steps_page("s1")
    assert not more
    assert [e.payload for e in entries] == [wire.loads(r) for r in records]
    assert again.run_steps_page("s1", entries[1].id) == (entries[2:], False)
    assert again.last_log_id() == last
    assert again.append_log("test", "after", None, None) > last
    again.close()


# -- any sequence ------------------------------------------------------------------------


def runs_as_read(view: Reader) -> Model:
    return {r.run_id: as_run(r) for r in view.list_runs(limit=None)}


def told_by_history(view: Reader, run_id: str) -> tuple[RunStatus | None, int]:
    """A run's status and steps as its entries tell them: the type of its last entry that
    is a status (``log`` lines and steps do not move it), and its ``step_complete`` count."""
    statuses = {s.value for s in RunStatus}
    entries = history(view, run_id)
    moves = [RunStatus(e.type) for e in entries if e.type in statuses]
    return (moves[-1] if moves else None), sum(e.type == "step_complete" for e in entries)


@pytest.mark.parametrize("seed", range(4))
def test_any_sequence_of_operations_keeps_to_a_model(backend: Backend, seed: int) -> None:
    """After any sequence of operations, legal and not, in batches committed and batches
    whose commit fails: the committed view shows exactly the runs of the model as committed,
    after every commit; and a store opened again finds every run as the model has it, its
    history telling the same status and steps (RFC-002 section 6.2: the runs are derived
    data of the log)."""
    store = backend.open()

    def check(committed: Model) -> None:
        assert runs_as_read(store.committed) == committed

    model = random_operations(store, backend.poison, seed, check)
    store.close()
    again = backend.open()
    assert runs_as_read(again) == model
    assert {run_id: told_by_history(again, run_id) for run_id in model} == {
        run_id: (run.status, run.steps) for run_id, run in model.items()
    }
    again.close()


# -- text PostgreSQL cannot hold: a NUL character (attack review) ---------------------------


def test_a_nul_in_free_text_never_fails_the_batch(store: Storage) -> None:
    """An exception's message (a run's error) or a cancel's reason may hold NUL: SQLite keeps
    it, PostgreSQL's text cannot (nerved.store.postgres.connection.NUL_STAND_IN: U+FFFD);
    either way the batch commits, and so do the writes before and after it."""
    store.create_run("r1", "wf", Transition.START, None)
    store.append_log("test", "before", None, None)
    assert store.transition_run("r1", Transition.FAIL, error="bad\x00byte")
    store.create_run("r2", "wf", Transition.ENQUEUE, {"text": "a\x00b"}, reason="why\x00")
    store.commit()
    run = store.committed.get_run("r1")
    assert run is not None and run.status is RunStatus.FAILED
    assert run.error in ("bad\x00byte", "bad\ufffdbyte")
    queued = store.committed.get_run("r2")
    assert queued is not None and queued.trigger_payload == {"text": "a\x00b"}  # JSON: kept


def test_a_nul_in_a_looked_up_id_or_key_matches_nothing(store: Storage) -> None:
    make_run(store, "ab1", RunStatus.STARTED)
    store.commit()
    assert store.committed.find_runs("ab\x00") == []
    assert store.committed.get_run("ab1\x00") is None
    assert store.committed.run_by_key("w", "k\x00") is None
    assert store.committed.query_logs(ref_id="ab1\x00") == []


def test_a_key_with_a_nul_keeps_its_run(store: Storage) -> None:
    store.create_run("r1", "w", Transition.ENQUEUE, {}, idempotency_key="k\x00")
    store.commit()
    found = store.committed.run_by_key("w", "k\x00")
    assert found is not None and found.run_id == "r1"
    with pytest.raises(ValueError, match="idempotency key"):
        store.create_run("r2", "w", Transition.ENQUEUE, {}, idempotency_key="k\x00")


def test_a_signal_whose_payload_holds_an_escaped_nul_is_pending(store: Storage) -> None:
    """JSON's ``\\u0000`` is valid JSON (SQLite's json_valid says so); PostgreSQL's jsonb
    refuses it: a signal carrying one must still be pending, and found by its name."""
    make_run(store, "r1", RunStatus.STARTED)
    sent = signal(store, "r1", "go", {"text": "a\x00b"})
    assert [e.id for e in store.pending_signals("r1")] == [sent]
    assert [e.id for e in store.pending_signals("r1", "go")] == [sent]
    assert store.signalled_runs() == {"r1"}
