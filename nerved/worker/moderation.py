"""A moderator's decisions, as a workflow thread takes them: checked, and bounded.

The moderator is pure: its decision depends on the events alone. So a worker may ask for it
as soon as a role returns, before the step is durable, as long as the decision takes effect
only once it is (nerved.worker.workflow): the last step and the run's end then share one
commit, and the next role starts as the step's ack arrives. A decision asked for early is
the one a resumed or replayed thread gets on the same events (nerved.worker.replay judges
with :func:`decide` too).
"""

from __future__ import annotations

import json
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nerved import waits, wire
from nerved.api import CommandEvent, ThreadState, WorkflowDefinition
from nerved.worker.port import explain
from nerved.worker.timebox import MODERATOR_KILL, Overrun, Timebox, overrun_message


class ThreadFailed(Exception):
    """A rule of SPEC §4 was broken; the message is what the run's ``error`` will say."""


def _checked(value: Any, what: str) -> Any:
    """``value`` as it is kept: through JSON and back, so that a tuple is a list and a key a
    string now, as they will be when a resumed run replays it. Raises ThreadFailed unless it
    is one nerve keeps (:func:`wire.check_value`)."""
    try:
        return json.loads(wire.check_value(value, what))
    except wire.Invalid as exc:
        raise ThreadFailed(str(exc)) from None


def check_event(role: str, event: Any) -> CommandEvent:
    """What ``role`` returned, as an event nerve keeps; raises ThreadFailed if it is not."""
    if not isinstance(event, Mapping):
        raise ThreadFailed(
            f"role {role!r} returned {type(event).__name__}, not an event"
            " (a dict with a string 'type')"
        )
    if not isinstance(event.get("type"), str):
        raise ThreadFailed(f"role {role!r} returned an event without a string 'type'")
    checked: CommandEvent = _checked(dict(event), f"the event role {role!r} returned")
    return checked


Decision = dict[str, Any] | None
"""A moderator's decision as a thread takes it: ``{"role", "prompt"}``, a wait (``{"wait",
"timeout"}`` or ``{"sleep"}``: :mod:`nerved.waits`), or None (the run ends)."""


def decide(definition: WorkflowDefinition, state: ThreadState, event: CommandEvent) -> Decision:
    """What the moderator decides on ``event``, checked as a thread takes it (a
    :data:`Decision`); raises ThreadFailed (or what the moderator raised). The replay check
    calls it too (nerved.worker.replay), so that it judges what a worker would do."""
    decision: Any = definition.moderate(state, event)  # user code: whatever it returned
    if decision is None:
        return None
    if waits.is_wait(decision):
        try:
            return waits.checked(decision)
        except ValueError as exc:
            raise ThreadFailed(f"moderator returned {reprlib.repr(decision)}: {exc}") from None
    if not isinstance(decision, Mapping) or not isinstance(decision.get("role"), str):
        raise ThreadFailed(
            f"moderator returned {reprlib.repr(decision)}; expected None,"
            " {'role': <name>, 'prompt': <JSON>}, nerved.wait_for(...) or nerved.sleep(...)"
        )
    role_name = decision["role"]
    if role_name not in definition.roles:
        known = ", ".join(sorted(definition.roles))
        raise ThreadFailed(
            f"moderator chose unknown role {reprlib.repr(role_name)} (roles: {known})"
        )
    prompt = _checked(decision.get("prompt"), f"the moderator's prompt for role {role_name!r}")
    return {"role": role_name, "prompt": prompt}


def moderate(timebox: Timebox, definition: WorkflowDefinition, state: ThreadState) -> Decision:
    """The moderator's decision on the last of ``state.events``, checked (:func:`decide`).

    The whole of it runs in the time box, the checks included: what the moderator
    returned is user code too (a Mapping whose ``get`` loops, a prompt that shares one
    list a million times and takes seconds to encode), and runs on the worker's loop.
    """
    try:
        return timebox.call(decide, definition, state, state.events[-1])
    except Overrun as exc:
        raise ThreadFailed(overrun_message(exc)) from None
    except ThreadFailed:
        raise
    except BaseException as exc:  # SystemExit, GeneratorExit...: user code's, the run's end
        raise ThreadFailed(f"moderator raised {explain(exc)}") from exc


def ahead(timeout: float | None, elapsed: float) -> bool:
    """Whether a role's event may be moderated before its step is posted: a role with a
    ``timeout`` that ran ``elapsed`` seconds of it is bounded by the master too, from its
    ``begin`` (nerved.master.workflows.backstops), and a decision asked for before the step
    is sent counts against that bound. Early only when even a moderator killed at its hard
    bound would leave the master's bound unreached; else the step goes first, as it did."""
    return timeout is None or timeout - elapsed > MODERATOR_KILL


@dataclass(frozen=True, slots=True)
class Early:
    """A decision asked for before its event is durable: it takes effect only once the
    event is (the step's ack), or, when it ends the run (``ends``), with the step itself in
    one commit. A call that raised fails the run then, as it would have after the ack."""

    decision: Decision
    failure: ThreadFailed | None = None

    @property
    def ends(self) -> bool:
        return self.failure is None and self.decision is None

    def taken(self) -> Decision:
        """The decision, or the failure raised (once the event is durable)."""
        if self.failure is not None:
            raise self.failure
        return self.decision


def early(timebox: Timebox, definition: WorkflowDefinition, state: ThreadState) -> Early:
    """:func:`moderate`, its failure kept for later (see :class:`Early`)."""
    try:
        return Early(moderate(timebox, definition, state))
    except ThreadFailed as exc:
        return Early(None, exc)
