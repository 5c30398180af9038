"""A run's logged history read back as its moderator lived it: the events of each call, and
the decision the log says that call made. Pure: no I/O, no user code (the replay check,
nerved.worker.replay, runs the moderator over what this derives).

A run's *events* E: E[0] = ``{"type": "thread_start", "payload": <trigger payload>}``, then,
in log order, the ``event`` of each ``step_complete`` and ``input`` entry. Moderator call i
saw ``ThreadState(run_id, workflow, E[0..i])`` and the event E[i]. Its *logged decision* is
read from the first entry after the one that appended E[i] that says something of it:

- ``step_complete`` or ``step_failed``: ``{"role", "prompt"}`` (the role it chose ran, or
  failed a try); a ``step_failed`` the master wrote itself (the try of a role that blocked
  its worker) has no prompt, and gives ``{"role"}`` alone, compared by role;
- ``waiting`` ``{wait, timeout, sleep, until}``: the wait it asked for, ``{"wait",
  "timeout"}`` or ``{"sleep"}`` (``until``, the deadline fixed as it was logged, is not
  the moderator's); the ``input`` that ended the wait follows, with the next event;
- ``input`` (the call's own decision is not in this history: a run retried from a step
  starts with the old run's steps and inputs, but not its failed tries or waits): not
  compared, and the derivation goes on with the input's event;
- ``completed``: None (it ended the run);
- anything else (``failed``, ``crashed``, ``cancelled``, ``dropped``, a type this release
  does not know, or the end of an active run's history): unknown. Nothing is compared for
  that call, and the derivation stops there.

Entries that say nothing of a decision are passed over wherever they are: the transitions
that start a run (``queued``, ``started``), its idempotency ``key``, ``log`` lines,
``resumed``, ``copied`` (the note before the steps a retry copied from the run it
retries), and ``signal`` (a signal as it arrived: the ``input`` that delivers it is what
the moderator saw). A ``step_failed``
after its call's decision was read is a further try of the same step (no moderator call).

The ``step`` reported for call i is 1 + the number of ``step_complete`` events among
E[1..i]: the step that call decided (a call after a ``role_failed`` input decides the same
step again).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

EVENTS: Final = frozenset({"step_complete", "input"})
"""Entry types whose payload's ``event`` the moderator was called with."""

DECISIONS: Final = frozenset({"step_complete", "step_failed"})
"""Entry types whose payload names the role the moderator chose, and its prompt."""

END: Final = "completed"
"""The entry of a run whose moderator returned None."""

WAIT: Final = "waiting"
"""The entry of a wait the moderator asked for; the ``input`` that ended it follows."""

SILENT: Final = frozenset({"queued", "started", "key", "log", "resumed", "copied", "signal"})
"""Entry types that say nothing of the moderator's decisions: passed over."""


class Unusable(ValueError):
    """An entry that does not hold what its type says (a row damaged, or written by a
    release that did not know the type): the run cannot be replayed."""


Decision = dict[str, Any] | None
"""``{"role": R, "prompt": P}``, a wait (``{"wait": N, "timeout": T}``, ``{"sleep": T}``),
or None: the run ends."""


@dataclass(frozen=True, slots=True)
class Call:
    """One moderator call of a run whose decision is logged: it saw the events up to and
    including ``events[index]``, and decided ``logged`` for step ``step``."""

    index: int
    step: int
    logged: Decision


@dataclass(frozen=True, slots=True)
class History:
    """What a run's entries say: every event (E), and the calls whose decision is known,
    in order (a call's ``index`` is that of the event it was called with)."""

    events: list[Any]
    calls: list[Call]


def derive(trigger_payload: Any, entries: Iterable[tuple[str, Any]]) -> History:
    """The events and logged decisions of a run, from its trigger payload and its entries
    ``(type, payload)`` in log order (see the module's docstring). Raises :class:`Unusable`
    for an entry whose payload is not what its type holds."""
    events: list[Any] = [{"type": "thread_start", "payload": trigger_payload}]
    calls: list[Call] = []
    steps = 0  # step_complete events among E[1..i]
    waiting = True  # the call on the last event has no decision read yet
    for number, (kind, payload) in enumerate(entries, 1):
        if kind in SILENT:
            continue
        if waiting:
            decision: Decision = None
            if kind in DECISIONS:
                decision = {"role": _field(payload, "role", kind, number)}
                if kind == "step_complete" or (
                    isinstance(payload, Mapping) and "prompt" in payload
                ):
                    decision["prompt"] = _field(payload, "prompt", kind, number)
            elif kind == WAIT:
                decision = _wait(payload, number)
            elif kind != END and kind != "input":
                break  # unknown: nothing more can be compared
            if kind != "input":  # an input here: this call's decision is not logged
                calls.append(Call(len(events) - 1, steps + 1, decision))
            waiting = False
        if kind in EVENTS:
            events.append(_field(payload, "event", kind, number))
            if kind == "step_complete":
                steps += 1
            waiting = True
        elif kind != "step_failed" and kind != WAIT:  # the end, or what no decision follows
            break
    return History(events, calls)


def _wait(payload: Any, number: int) -> Decision:
    """The wait a ``waiting`` entry logged, as the moderator returned it (nerved.waits)."""
    if not isinstance(payload, Mapping):
        raise Unusable(f"entry {number} (waiting) is not an object")
    if payload.get("wait") is None:
        return {"sleep": _field(payload, "sleep", WAIT, number)}
    return {"wait": payload["wait"], "timeout": _field(payload, "timeout", WAIT, number)}


def _field(payload: Any, key: str, kind: str, number: int) -> Any:
    if not isinstance(payload, Mapping) or key not in payload:
        raise Unusable(f"entry {number} ({kind}) has no {key!r}")
    if key == "role" and not isinstance(payload[key], str):
        raise Unusable(f"entry {number} ({kind}) has a role that is not a string")
    return payload[key]
