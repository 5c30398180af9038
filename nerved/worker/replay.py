"""The replay check's throwaway child: a workflow's accepted code run over kept histories.

The master (nerved.master.workflows.replay) forks one per check, with the package as the
workflow's workers import it (its snapshot: only code that passed the import check runs),
and streams it the histories to check, one run after the other. For each run the child
derives the moderator's calls and the decisions logged for them (nerved.worker.histories),
calls the moderator again on each, as a worker would (nerved.worker.workflow.decide, in a
:class:`~nerved.worker.timebox.Timebox`), and answers with the first call whose decision
differs, compared as JSON values. A moderator that raises, loops past the soft bound or
returns what a thread would refuse makes its run diverge at that call, with ``now:
{"error": ...}``; one stuck where the soft bound cannot reach ends this child at the hard
bound, and the master says so.

Protocol (master -> child), in this order for each run:
    {"t": "run", "run": ID, "payload": P}        a run's history begins: its trigger payload
    {"t": "entries", "run": ID, "entries": [[TYPE, PAYLOAD], ...]}  its next entries
    {"t": "check", "run": ID}                     its history is whole: replay it
Child -> master:
    {"t": "load_error", "error": "..."}           the package did not import; the child exits
    {"t": "result", "run": ID, "diverged": null | {"step": N, "logged": D, "now": D}}
    {"t": "result", "run": ID, "skipped": "why"}  its entries do not hold what they should

A decision ``D`` as answered is ``{"role", "prompt"}``, a wait (``{"wait", "timeout"}`` or
``{"sleep"}``), null (the run ends) or ``{"error"}``;
a prompt whose JSON is over :data:`SHOWN` bytes is shown as that text, cut, with ``"cut":
true`` (it was compared whole), so that an answer about many runs stays small.
"""

from __future__ import annotations

import json
import socket
from typing import Any, Final

from nerved import logs, wire
from nerved.api import ThreadState, WorkflowDefinition
from nerved.channel import (
    TO_MASTER,
    TO_WORKER,
    Channel,
    ChannelClosed,
    Garbled,
    Message,
    ProtocolError,
)
from nerved.code.importing import load_workflow
from nerved.code.reading import Package, UserCodeError
from nerved.process import EXIT_OK, EXIT_UNREADABLE
from nerved.worker.histories import Decision, Unusable, derive
from nerved.worker.moderation import ThreadFailed, decide
from nerved.worker.port import explain
from nerved.worker.timebox import Overrun, Timebox, overrun_message

SHOWN: Final = 4 * wire.KiB
"""Bytes of a prompt's JSON (or an error) shown in an answer; the rest is cut."""

IDLE: Final = 600.0
"""Seconds the child waits for the master's next message before it leaves (the master
kills it long before: its checks have a deadline)."""

SEND: Final = 30.0  # seconds an answer may take to be written out


def run(sock: socket.socket, package: Package) -> int:
    logs.relabel(f"replay:{package.name}", NERVE_WORKFLOW=package.name)
    channel = Channel(sock, receive_limit=TO_WORKER, send_limit=TO_MASTER)
    try:
        definition = load_workflow(package)
    except UserCodeError as exc:
        _send(channel, {"t": "load_error", "error": wire.text(str(exc))})
        return EXIT_OK
    checker = Checker(package.name, definition)
    run_id, payload = "", None
    entries: list[tuple[str, Any]] = []
    while True:
        try:
            messages = channel.receive_blocking(IDLE)
        except (ChannelClosed, TimeoutError):
            return EXIT_OK
        except ProtocolError:
            return EXIT_UNREADABLE
        for message in messages:
            if isinstance(message, Garbled):
                return EXIT_UNREADABLE
            kind = message.get("t")
            if kind == "run":
                run_id, payload, entries = str(message["run"]), message.get("payload"), []
            elif kind == "entries":
                entries += [(str(type_), value) for type_, value in message["entries"]]
            elif kind == "check":
                result = checker.check(run_id, payload, entries)
                entries = []
                _send(channel, {"t": "result", "run": run_id, **result})


def _send(channel: Channel, message: Message) -> None:
    """Write ``message`` out; if the master is gone (or gave up on this check), the next
    read says so."""
    try:
        channel.send(message)
        channel.flush_blocking(SEND)
    except (ChannelClosed, OSError):
        pass


class Checker:
    """Replays runs of one workflow with its definition; see the module's docstring."""

    def __init__(self, workflow: str, definition: WorkflowDefinition) -> None:
        self.workflow = workflow
        self.definition = definition
        self.timebox = Timebox()

    def check(self, run_id: str, payload: Any, entries: list[tuple[str, Any]]) -> Message:
        """``{"diverged": None | {step, logged, now}}`` or ``{"skipped": why}``."""
        try:
            history = derive(payload, entries)
        except Unusable as exc:
            return {"skipped": str(exc)}
        for call in history.calls:
            events = history.events[: call.index + 1]
            now = self.decision(ThreadState(run_id, self.workflow, tuple(events)), events[-1])
            if not _same(now, call.logged):
                diverged = {"step": call.step, "logged": shown(call.logged), "now": shown(now)}
                return {"diverged": diverged}
        return {"diverged": None}

    def decision(self, state: ThreadState, event: Any) -> Decision:
        """What the moderator decides now: ``{"role", "prompt"}``, a wait (``{"wait",
        "timeout"}``, ``{"sleep"}``), None, or ``{"error"}`` when a thread would fail on it
        (in the words the run's error would say)."""
        try:
            decision: Decision = self.timebox.call(decide, self.definition, state, event)
        except Overrun as exc:
            return {"error": overrun_message(exc)}
        except ThreadFailed as exc:
            return {"error": str(exc)}
        except BaseException as exc:  # whatever user code raises (SystemExit too) is its
            return {"error": f"moderator raised {explain(exc)}"}
        return decision


def _same(now: Decision, logged: Decision) -> bool:
    """Whether the moderator decides now what the log says: as JSON values, or by role alone
    for a logged try without its prompt (one the master ended itself)."""
    if logged is not None and "role" in logged and "prompt" not in logged:
        return now is not None and "error" not in now and now.get("role") == logged.get("role")
    return _canonical(now) == _canonical(logged)


def _canonical(decision: Decision) -> str:
    """A decision as JSON text with sorted keys: equal texts, equal JSON values (``1`` and
    ``1.0``, ``true`` and ``1`` differ, as they do once stored)."""
    return json.dumps(decision, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def shown(decision: Decision) -> Decision:
    """The decision as an answer shows it: a prompt (or error) over :data:`SHOWN` bytes cut."""
    if decision is None or ("role" not in decision and "error" not in decision):
        return decision  # None, or a wait: small
    if "error" in decision:
        return {"error": wire.text(str(decision["error"]), SHOWN)}
    text = wire.dumps(decision.get("prompt"), max_depth=wire.MAX_DEPTH + 1)
    if len(text.encode()) <= SHOWN:
        return decision
    return {"role": decision.get("role"), "prompt": wire.text(text, SHOWN), "cut": True}
