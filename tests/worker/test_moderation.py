"""A decision asked for before its event is durable (nerved.worker.moderation): when it may
be, and what it keeps for the moment the event is."""

from __future__ import annotations

import pytest

from nerved.worker.moderation import Early, ThreadFailed, ahead
from nerved.worker.timebox import MODERATOR_KILL


def test_a_role_without_a_timeout_is_always_moderated_ahead():
    assert ahead(None, 1e6)


@pytest.mark.parametrize(
    ("timeout", "elapsed", "early"),
    [
        (60.0, 1.0, True),
        (MODERATOR_KILL + 1.0, 0.5, True),
        (MODERATOR_KILL + 1.0, 1.0, False),  # the master's bound could come first
        (1.0, 0.0, False),
    ],
)
def test_a_role_near_its_timeout_sends_its_step_first(timeout, elapsed, early):
    assert ahead(timeout, elapsed) is early


def test_an_early_decision_ends_the_run_only_when_it_is_none_and_did_not_fail():
    assert Early(None).ends
    assert not Early({"role": "r", "prompt": None}).ends
    assert not Early({"wait": "go", "timeout": None}).ends
    assert not Early(None, ThreadFailed("moderator raised ValueError")).ends


def test_an_early_failure_is_raised_when_the_decision_is_taken():
    failure = ThreadFailed("moderator raised ValueError: x")
    with pytest.raises(ThreadFailed) as raised:
        Early(None, failure).taken()
    assert raised.value is failure
    assert Early({"role": "r", "prompt": 1}).taken() == {"role": "r", "prompt": 1}
