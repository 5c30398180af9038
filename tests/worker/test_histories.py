"""A run's history read back as its moderator lived it (nerved.worker.histories): the events
of each call and the decision the log says it made, from every kind of entry a run has."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nerved import wire
from nerved.states import Transition
from nerved.store import Store
from nerved.worker.histories import Call, Unusable, derive

START = {"type": "thread_start", "payload": {"n": 1}}


def step(role: str, prompt: Any, event: Any) -> tuple[str, Any]:
    return ("step_complete", {"role": role, "prompt": prompt, "event": event})


def failed_try(role: str, prompt: Any, n: int, retry_at: int | None) -> tuple[str, Any]:
    payload = {"role": role, "prompt": prompt, "error": "boom", "try": n, "retryAt": retry_at}
    return ("step_failed", payload)


def role_failed(role: str, attempts: int) -> tuple[str, Any]:
    event = {"type": "role_failed", "role": role, "error": "boom", "attempts": attempts}
    return ("input", {"event": event})


def test_a_completed_run_has_a_decision_for_every_call() -> None:
    a, b = {"type": "a"}, {"type": "b"}
    history = derive(
        {"n": 1},
        [("started", {"n": 1}), step("x", {"p": 1}, a), ("log", "hi"), step("y", [2], b),
         ("completed", None)],
    )  # fmt: skip
    assert history.events == [START, a, b]
    assert history.calls == [
        Call(0, 1, {"role": "x", "prompt": {"p": 1}}),
        Call(1, 2, {"role": "y", "prompt": [2]}),
        Call(2, 3, None),
    ]


def test_an_active_run_stops_at_the_end_of_its_history() -> None:
    a = {"type": "a"}
    history = derive(None, [("queued", None), ("started", None), step("x", None, a)])
    assert history.events == [{"type": "thread_start", "payload": None}, a]
    assert history.calls == [Call(0, 1, {"role": "x", "prompt": None})]  # call 1: unknown


@pytest.mark.parametrize("end", ["failed", "crashed", "cancelled", "dropped", "new"])
def test_a_run_that_ended_otherwise_has_no_decision_for_its_last_call(end: str) -> None:
    history = derive(1, [("started", 1), step("x", 1, {"type": "a"}), (end, "why")])
    assert history.calls == [Call(0, 1, {"role": "x", "prompt": 1})]


def test_waits_are_decisions_and_the_inputs_that_end_them_are_events() -> None:
    """A wait for a signal (its signal logged before it, pending), then a sleep: each
    ``waiting`` entry is its call's decision (the deadline ``until`` is not the moderator's),
    each ``input`` the next event; ``signal`` entries say nothing of a decision."""
    proposed, done = {"type": "proposed"}, {"type": "done"}
    approve = {"type": "signal", "name": "go", "payload": "ann"}
    history = derive(
        None,
        [("started", None), step("x", None, proposed), ("signal", {"name": "go", "payload": 1}),
         ("waiting", {"wait": "go", "timeout": 5000, "until": 99}),
         ("input", {"event": approve, "signal": 3}),
         ("waiting", {"wait": None, "sleep": 10, "until": 123}), ("input", {"event": {"type": "wake"}}),
         step("y", "p", done), ("completed", None)],
    )  # fmt: skip
    assert history.events == [
        {"type": "thread_start", "payload": None}, proposed, approve, {"type": "wake"}, done,
    ]  # fmt: skip
    assert history.calls == [
        Call(0, 1, {"role": "x", "prompt": None}),
        Call(1, 2, {"wait": "go", "timeout": 5000}),
        Call(2, 2, {"sleep": 10}),
        Call(3, 2, {"role": "y", "prompt": "p"}),
        Call(4, 3, None),
    ]


def test_a_run_waiting_now_ends_its_history_with_the_wait() -> None:
    history = derive(1, [("started", 1), ("waiting", {"wait": "go", "timeout": None,
                                                     "until": None})])  # fmt: skip
    assert history.calls == [Call(0, 1, {"wait": "go", "timeout": None})]


@pytest.mark.parametrize("payload", ["why", None, {"wait": None}, {"wait": "go"}])
def test_a_waiting_entry_that_holds_no_wait_is_unusable(payload: Any) -> None:
    with pytest.raises(Unusable, match="waiting"):
        derive(1, [("started", 1), ("waiting", payload)])


def test_failed_tries_and_a_role_failed_input() -> None:
    """onError: moderate: the tries of step 1 fail, the moderator hears role_failed and
    decides step 1 again (another role), which completes."""
    done = {"type": "done"}
    history = derive(
        {"n": 1},
        [("started", {"n": 1}), failed_try("x", {"p": 1}, 1, 1000), ("resumed", {"attempt": 1}),
         failed_try("x", {"p": 1}, 2, None), role_failed("x", 2), step("y", "again", done),
         ("completed", None)],
    )  # fmt: skip
    assert history.events == [START, role_failed("x", 2)[1]["event"], done]
    assert history.calls == [
        Call(0, 1, {"role": "x", "prompt": {"p": 1}}),
        Call(1, 1, {"role": "y", "prompt": "again"}),
        Call(2, 2, None),
    ]


def test_a_retry_that_succeeds_is_one_call() -> None:
    a = {"type": "a"}
    history = derive(
        0, [failed_try("x", 0, 1, 5), step("x", 0, a), step("x", 1, a), ("completed", None)]
    )
    assert [call.step for call in history.calls] == [1, 2, 3]
    assert [call.logged for call in history.calls] == [
        {"role": "x", "prompt": 0}, {"role": "x", "prompt": 1}, None,
    ]  # fmt: skip
    assert len(history.events) == 3


def test_an_input_without_a_decision_before_it_is_passed_and_the_next_calls_compared() -> None:
    """A run retried from a step starts with the old run's inputs but not its failed tries:
    the call before such an input has no logged decision and is not compared; the calls
    after it are."""
    history = derive(0, [role_failed("x", 1), step("y", 0, {"type": "a"}), ("completed", None)])
    assert [(call.index, call.step, call.logged) for call in history.calls] == [
        (1, 1, {"role": "y", "prompt": 0}),
        (2, 2, None),
    ]
    assert len(history.events) == 3


def test_a_failed_try_without_its_prompt_gives_the_role_alone() -> None:
    """The master's own timeout of a role that blocked its worker, and every try after a
    step's first, are logged without the prompt: the call is compared by its role."""
    history = derive(0, [("step_failed", {"role": "x", "error": "timed out", "try": 1,
                                          "retryAt": None}), ("failed", "role 'x' timed out")])  # fmt: skip
    assert [call.logged for call in history.calls] == [{"role": "x"}]


def test_a_final_run_failed_by_its_moderator_keeps_the_calls_before() -> None:
    history = derive(0, [step("x", 0, {"type": "a"}), ("failed", "moderator raised")])
    assert history.calls == [Call(0, 1, {"role": "x", "prompt": 0})]
    assert len(history.events) == 2


@pytest.mark.parametrize(
    "entry",
    [("step_complete", "text"), ("step_complete", {"role": "x", "prompt": 1}),
     ("step_failed", {"prompt": 1}), ("step_complete", {"role": 3, "prompt": 1, "event": {}}),
     ("input", {"nothing": 1})],
)  # fmt: skip
def test_an_entry_that_does_not_hold_what_its_type_says_is_unusable(entry: Any) -> None:
    with pytest.raises(Unusable):
        derive(0, [entry] if entry[0] != "input" else [failed_try("x", 0, 1, None), entry])


def test_the_entries_a_store_keeps_derive_as_written(tmp_path: Path) -> None:
    """Through the store, as the master reads them (``run_history_page``): the entry types
    the store writes for a run, ``input`` and ``step_failed`` included."""
    store = Store(tmp_path / "logs.db")
    try:
        store.create_run("r1", "wf", Transition.START, {"n": 1})
        a = {"type": "a", "list": [1, 2]}
        store.record_step("r1", wire.dumps({"role": "x", "prompt": {"p": 1}, "event": a}))
        store.append_log("workflow", "log", "r1", "a line")
        store.append_log("workflow", "step_failed", "r1", failed_try("y", None, 1, None)[1])
        store.append_log("workflow", "input", "r1", role_failed("y", 1)[1])
        store.record_step("r1", wire.dumps({"role": "x", "prompt": 2, "event": {"type": "b"}}))
        assert store.transition_run("r1", Transition.COMPLETE)
        store.commit()
        entries, more = store.committed.run_history_page("r1")
        assert not more
        history = derive({"n": 1}, [(entry.type, entry.payload) for entry in entries])
    finally:
        store.close()
    assert history.events == [START, a, role_failed("y", 1)[1]["event"], {"type": "b"}]
    assert history.calls == [
        Call(0, 1, {"role": "x", "prompt": {"p": 1}}),
        Call(1, 2, {"role": "y", "prompt": None}),
        Call(2, 2, {"role": "x", "prompt": 2}),
        Call(3, 3, None),
    ]


@pytest.mark.parametrize("created", ["started", "queued"])
def test_a_key_entry_after_the_creating_one_is_passed_over(created: str) -> None:
    """Issue 12: a run triggered with an idempotency key has a ``key`` entry right after its
    creating one; it says nothing of a decision."""
    done = {"type": "done"}
    entries = [
        (created, {"n": 1}),
        ("key", {"key": "k"}),
        step("x", "p", done),
        ("completed", None),
    ]
    if created == "queued":
        entries.insert(2, ("started", {"n": 1}))
    history = derive({"n": 1}, entries)
    assert history.calls == [Call(0, 1, {"role": "x", "prompt": "p"}), Call(1, 2, None)]
