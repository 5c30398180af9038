"""nerved.waits and the user API that makes waits (``nerved.wait_for``, ``nerved.sleep``):
what a moderator may return, and what the worker and the master refuse."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import pytest

import nerved
from nerved import waits


@pytest.mark.parametrize(
    ("timeout", "ms"),
    [(None, None), ("1h", 3_600_000), ("1h30m", 5_400_000), ("500ms", 500), (90, 90_000),
     (0.25, 250), (0, 0), (timedelta(minutes=2), 120_000)],
)  # fmt: skip
def test_wait_for_takes_text_with_units_seconds_or_a_timedelta(timeout: Any, ms: Any) -> None:
    assert nerved.wait_for("approve", timeout=timeout) == {"wait": "approve", "timeout": ms}


@pytest.mark.parametrize(
    "timeout", ["30", "", "soon", -1, math.nan, math.inf, True, timedelta(days=-1), "200y", [1]]
)
def test_wait_for_refuses_a_timeout_that_is_no_duration(timeout: Any) -> None:
    with pytest.raises(ValueError, match="wait_for"):
        nerved.wait_for("approve", timeout=timeout)


@pytest.mark.parametrize("name", ["", "x" * 257, "a\nb", "a\x00", None, 7])
def test_a_signal_name_is_short_text_without_control_characters(name: Any) -> None:
    assert waits.name_problem(name) is not None
    with pytest.raises(ValueError, match="wait_for"):
        nerved.wait_for(name)


def test_names_that_are_fine() -> None:
    for name in ("approve", "x" * 256, "déploiement fini", "a b/c:d"):
        assert waits.name_problem(name) is None


def test_sleep() -> None:
    assert nerved.sleep("10m") == {"sleep": 600_000}
    assert nerved.sleep(1.5) == {"sleep": 1500}
    with pytest.raises(ValueError, match="sleep"):
        nerved.sleep("10")


@pytest.mark.parametrize(
    ("decision", "kept"),
    [({"wait": "x"}, {"wait": "x", "timeout": None}),
     ({"wait": "x", "timeout": None}, {"wait": "x", "timeout": None}),
     ({"wait": "x", "timeout": 1.6}, {"wait": "x", "timeout": 2}),
     ({"sleep": 0}, {"sleep": 0}),
     ({"sleep": waits.MAX_WAIT_MS}, {"sleep": waits.MAX_WAIT_MS})],
)  # fmt: skip
def test_the_dict_forms_in_milliseconds(decision: Any, kept: Any) -> None:
    assert waits.checked(decision) == kept


@pytest.mark.parametrize(
    "decision",
    [{"wait": ""}, {"wait": 1}, {"wait": "x", "timeout": -1}, {"wait": "x", "timeout": "1h"},
     {"sleep": True}, {"sleep": math.nan}, {"sleep": 1e300}, {"sleep": None},
     {"wait": "x", "role": "y"}, {"sleep": 1, "wait": "x"}, {"wait": "x", "timeout": 1, "n": 2}],
)  # fmt: skip
def test_what_a_wait_cannot_be(decision: Any) -> None:
    assert waits.is_wait(decision)
    with pytest.raises(ValueError):
        waits.checked(decision)
