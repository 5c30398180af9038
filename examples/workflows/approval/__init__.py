"""An approval: propose a change, wait for a person to approve it, then apply it.

Trigger it with the change (and, if you like, how long the approver has, default 1h, and
the one it escalates to, default as long):

    nervectl workflow trigger approval --payload '{"change": "resize /var to 20G", "timeout": "2m"}'
    nervectl workflow list                       # the run is `waiting`, for `approve`
    nervectl workflow signal RUN_ID approve --payload '{"by": "ann"}'
    nervectl workflow signal RUN_ID approve --payload '{"by": "ann", "approved": false}'

While it waits, the run holds no worker and no thread: it is a row in logs.db and a timer
in the daemon, so it may wait for hours and survives restarts. The signal is logged as it
arrives; one sent before the run waits is kept and taken by the wait.

A wait names one signal, so a rejection is the same signal saying so (`"approved": false`):
the run then ends without applying. If nobody answers in time, the escalate role tells
someone else (here, it only logs) and the run waits once more (`escalationTimeout`) for
their approval; a second silence ends the run unapplied.
"""

from __future__ import annotations

from typing import Any

from nerved import (
    CommandEvent,
    ModerateResult,
    Sleep,
    ThreadState,
    WaitFor,
    WorkflowContext,
    WorkflowDefinition,
    wait_for,
)

DEFAULT_TIMEOUT = "1h"  # how long an approver has, unless the trigger payload says
ESCALATIONS = 1  # timeouts that escalate; the one after them ends the run


def propose(prompt: dict[str, Any], ctx: WorkflowContext) -> CommandEvent:
    """Work out the change and describe it for the approver (a plan, a diff, a dry run)."""
    change = prompt.get("change", "nothing in particular")
    ctx.log(f"proposing: {change}; waiting for `approve`")
    return {"type": "proposed", "change": change}


def apply(prompt: dict[str, Any], ctx: WorkflowContext) -> CommandEvent:
    """Carry the change out; it runs once the approval is durable, never before."""
    ctx.log(f"applying {prompt['change']!r}, approved by {prompt['by']}")
    return {"type": "applied", "change": prompt["change"], "by": prompt["by"]}


def escalate(prompt: dict[str, Any], ctx: WorkflowContext) -> CommandEvent:
    """Nobody approved in time: tell someone else (a pager, a chat channel; here, the log)."""
    ctx.log(f"no approval for {prompt['change']!r}: escalating")
    return {"type": "escalated", "change": prompt["change"]}


def moderate(thread: ThreadState, event: CommandEvent) -> ModerateResult | WaitFor | Sleep | None:
    """Pure, like every moderator: it decides from the events alone, so a restarted or replayed
    run takes the same path. Waits are answers too: `wait_for` parks the run until the signal
    (an event {"type": "signal", "name", "payload"}) or the timeout ({"type": "wait_timeout"})."""
    options = thread.events[0]["payload"] or {}
    change = options.get("change", "nothing in particular")
    timeout = options.get("timeout", DEFAULT_TIMEOUT)
    kind = event["type"]
    if kind == "thread_start":
        return {"role": "propose", "prompt": {"change": change}}
    if kind == "proposed":
        return wait_for("approve", timeout=timeout)
    if kind == "escalated":
        return wait_for("approve", timeout=options.get("escalationTimeout", timeout))
    if kind == "signal":
        decision = event["payload"] or {}
        if decision.get("approved", True) is False:
            return None  # rejected: the run completes, nothing applied
        return {"role": "apply", "prompt": {"change": change, "by": decision.get("by", "?")}}
    if kind == "wait_timeout":
        escalated = sum(1 for e in thread.events if e["type"] == "escalated")
        if escalated < ESCALATIONS:
            return {"role": "escalate", "prompt": {"change": change}}
        return None  # nobody answered the escalation either: give up, unapplied
    return None  # applied


workflow = WorkflowDefinition(
    roles={"propose": propose, "apply": apply, "escalate": escalate}, moderate=moderate
)
