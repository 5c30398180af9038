"""The replay check's comparison (nerved.worker.replay.Checker), in this process: decisions
compare as JSON values, a moderator that fails gives ``now: {error}``, a large prompt is
shown cut. Through a real nerved (the child, the master's side): tests/master/test_replay.py."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import pytest

from nerved import WorkflowDefinition
from nerved.worker.replay import SHOWN, Checker


@pytest.fixture(autouse=True)
def _keep_sigalrm() -> Iterator[None]:
    """The time box takes SIGALRM at its first call: give it back to the test process."""
    previous = signal.getsignal(signal.SIGALRM)
    yield
    signal.signal(signal.SIGALRM, previous)


def checker(moderate: Any) -> Checker:
    roles = {"a": lambda prompt, ctx: {"type": "a"}, "b": lambda prompt, ctx: {"type": "b"}}
    return Checker("w", WorkflowDefinition(roles=roles, moderate=moderate))


def history(*prompts: Any) -> list[tuple[str, Any]]:
    steps = [("step_complete", {"role": "a", "prompt": p, "event": {"type": "a"}}) for p in prompts]
    return [("started", None), *steps, ("completed", None)]


def test_the_same_decisions_do_not_diverge() -> None:
    def moderate(thread: Any, event: Any) -> Any:
        n = len(thread.events)
        return {"role": "a", "prompt": {"n": n, "t": (1, 2)}} if n <= 2 else None

    assert checker(moderate).check(
        "r", None, history({"n": 1, "t": [1, 2]}, {"t": [1, 2], "n": 2})
    ) == {"diverged": None}


def test_decisions_compare_as_json_values() -> None:
    """1.0 is not 1 once stored: the moderator that returns it decides otherwise."""

    def moderate(thread: Any, event: Any) -> Any:
        return {"role": "a", "prompt": 1.0} if len(thread.events) == 1 else None

    result = checker(moderate).check("r", None, history(1))
    assert result == {
        "diverged": {
            "step": 1,
            "logged": {"role": "a", "prompt": 1},
            "now": {"role": "a", "prompt": 1.0},
        }
    }


def test_ending_early_and_going_on_differ() -> None:
    result = checker(lambda thread, event: None).check("r", None, history(1))
    assert result["diverged"] == {"step": 1, "logged": {"role": "a", "prompt": 1}, "now": None}
    goes_on = checker(lambda thread, event: {"role": "b", "prompt": None})
    assert goes_on.check("r", None, history())["diverged"] == {
        "step": 1, "logged": None, "now": {"role": "b", "prompt": None},
    }  # fmt: skip


@pytest.mark.parametrize(
    ("moderate", "error"),
    [
        (lambda thread, event: 1 / 0, "moderator raised ZeroDivisionError"),
        (lambda thread, event: {"role": "nope"}, "moderator chose unknown role 'nope'"),
        (lambda thread, event: {"role": "a", "prompt": {1, 2}}, "not a JSON value nerve can keep"),
        (lambda thread, event: "a", "moderator returned 'a'"),
    ],
)
def test_a_moderator_that_fails_diverges_with_the_error(moderate: Any, error: str) -> None:
    result = checker(moderate).check("r", None, history(1))
    assert result["diverged"]["step"] == 1
    assert error in result["diverged"]["now"]["error"]


def test_a_large_prompt_is_shown_cut() -> None:
    big = "x" * (2 * SHOWN)
    result = checker(lambda thread, event: {"role": "a", "prompt": big + "y"}).check(
        "r", None, history(big)
    )
    logged, now = result["diverged"]["logged"], result["diverged"]["now"]
    assert logged["cut"] and now["cut"] and logged["role"] == "a"
    assert len(logged["prompt"].encode()) <= SHOWN and "truncated" in logged["prompt"]


def test_a_history_that_does_not_hold_its_entries_is_skipped() -> None:
    result = checker(lambda thread, event: None).check("r", None, [("step_complete", "text")])
    assert "has no 'role'" in result["skipped"]
