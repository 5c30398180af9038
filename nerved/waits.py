"""Waits a moderator asks for (SPEC §4 v2), checked alike wherever one is handed over.

A moderator returns ``nerved.wait_for(name, timeout=)`` or ``nerved.sleep(duration)``, or
writes the same dicts itself: ``{"wait": NAME, "timeout": MS | None}`` (park until the
signal ``NAME`` comes, or ``MS`` milliseconds pass) and ``{"sleep": MS}``. The worker checks
what its moderator returned (:func:`checked`), and the master checks it again as a worker
sends it: it trusts no worker with a number that would overflow a timer or the store.

Names are what ``workflow.signal`` sends: the rule (:func:`name_problem`) is the same at
both ends, so that a signal can always reach the wait that names it. A leaf: the user API,
the worker, the master and nervectl import it.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Final

MAX_NAME: Final = 256
"""Characters of a signal's name, at most."""

MAX_WAIT_MS: Final = 36_500 * 86_400_000
"""The longest wait, 100 years (nerve.yaml's longest duration): past it is a mistake."""

KEYS: Final = (frozenset({"wait", "timeout"}), frozenset({"wait"}), frozenset({"sleep"}))
"""The keys of a wait, as a moderator may return it."""


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot name a signal (a non-empty string of at most :data:`MAX_NAME`
    characters, no control characters), or None when it can."""
    if not isinstance(name, str):
        return f"must be a string, not {type(name).__name__}"
    if not name:
        return "must not be empty"
    if len(name) > MAX_NAME:
        return f"is {len(name):,} characters; at most {MAX_NAME}"
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in name):
        return "must not hold control characters"
    return None


def is_wait(decision: object) -> bool:
    """Whether a moderator's decision asks for a wait (it has a ``wait`` or ``sleep`` key)."""
    return isinstance(decision, Mapping) and ("wait" in decision or "sleep" in decision)


def checked(decision: Mapping[str, Any]) -> dict[str, Any]:
    """A wait as nerve keeps it: ``{"wait": NAME, "timeout": MS | None}`` or ``{"sleep":
    MS}``, milliseconds as whole numbers. Raises ValueError saying what is wrong: other
    keys, a name :func:`name_problem` refuses, a duration that is not a number of
    milliseconds between 0 and :data:`MAX_WAIT_MS`."""
    keys = frozenset(decision)
    if keys not in KEYS:
        raise ValueError(
            f"a wait has the keys {{'wait', 'timeout'}} or {{'sleep'}}, not {sorted(keys)}"
        )
    if "sleep" in keys:
        return {"sleep": _ms(decision["sleep"], "sleep")}
    name = decision["wait"]
    if (problem := name_problem(name)) is not None:
        raise ValueError(f"the name of a wait {problem}")
    timeout = decision.get("timeout")
    return {"wait": name, "timeout": None if timeout is None else _ms(timeout, "timeout")}


def _ms(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"a wait's {what!r} is milliseconds (a number), not {value!r}")
    if not 0 <= value <= MAX_WAIT_MS:  # NaN is neither
        raise ValueError(f"a wait's {what!r} is {value!r} ms; it must be 0 to {MAX_WAIT_MS}")
    return round(value)


def milliseconds(value: object, what: str) -> int:
    """A duration as the user API takes it, in milliseconds: text with units as nerve.yaml
    writes it (``"90s"``, ``"1h30m"``), a :class:`~datetime.timedelta`, or a number of
    **seconds** (as ``time.sleep`` and ``nerved.Retry(after=)`` take it). Raises ValueError
    (a bare number in text is refused: ``"30"`` could mean either unit)."""
    from nerved.config.grammar import duration_ms  # not at import: nerved.api stays light

    ms: float
    if isinstance(value, str):
        text = duration_ms(value, at_most=MAX_WAIT_MS + 1)
        if text is None:
            raise ValueError(f"{what} {value!r} is not a duration; write it with a unit: '30s'")
        ms = text
    elif isinstance(value, timedelta):
        ms = value.total_seconds() * 1000
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            ms = float(value) * 1000
        except OverflowError:  # an int past any float: no duration nerve waits for
            ms = math.inf
    else:
        raise ValueError(f"{what} is a duration ('30s', seconds, a timedelta), not {value!r}")
    if not 0 <= ms <= MAX_WAIT_MS:  # NaN and infinity are neither
        raise ValueError(f"{what} must be from 0 to 100 years, not {value!r}")
    return round(ms)
