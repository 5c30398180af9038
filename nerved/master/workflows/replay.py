"""The replay check: a workflow's accepted code run over kept run histories, in a throwaway
child, to say which runs its moderator would now decide differently.

Asked by ``workflow.replay`` (a run, or a workflow's newest kept runs, any status), and by
every reload that changes a workflow's code, over that workflow's active runs: a run whose
new moderator decides otherwise than its history says is logged as a warning (the reload
applies all the same; the warning says which runs will go another way if they resume under
the new code, as a drain past ``drainTimeout`` or a crash makes them).

The moderator is user code, so it runs in a child of its own (nerved.worker.replay), forked
by :class:`~nerved.master.workers.Workers` like every worker: in a unit of containment,
reaped, killed with the daemon. It imports the workflow's package from the snapshot its
workers import (only code that passed the import check runs), and each moderator call is
bounded as in a worker. The master never blocks on it: histories are read from the committed
view page by page, at most :data:`REPLAY_PER_TURN` bytes a turn over every check, and
streamed to the child (which reads at its own pace: a page waits while the child has not
read the last); its answers come as messages. A check that does not finish within
:data:`DEADLINE` (a child that hangs, or thousands of moderator calls that each loop to
their bound), or whose child dies, is refused with the reason, and its child killed.

A run whose history cannot be read back (an entry or the trigger payload stored
unreadable, an entry that does not hold what its type says) is skipped, with why.
"""

from __future__ import annotations

import json
import logging
import socket
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from nerved import logs, wire
from nerved.channel import TO_WORKER, Message, frame
from nerved.loop import Loop, Timer
from nerved.master.workers import Worker, Workers
from nerved.master.workflows.runs import Flow
from nerved.outcome import Failed, NotFound, Pending, Refused, ShuttingDown
from nerved.store import Storage, StoreError, Unreadable
from nerved.words import plural
from nerved.worker import replay_main
from nerved.worker.histories import SILENT
from nerved.worker.timebox import KILLED, MODERATOR_KILL

log = logging.getLogger("nerved.master.workflows")

REPLAY_PER_TURN: Final = wire.RESULT_BUDGET  # bytes of histories read per loop turn, in all
REPLAY_WAIT: Final = 0.01  # seconds before looking again at a child still reading a page
ENTRY_COST: Final = 64  # bytes a read entry counts for beyond its payload (a log line's row)
DEADLINE: Final = 60.0  # seconds a check may take, its child's import included
AT_ONCE: Final = 4  # checks clients may have running at once

Result = dict[str, Any]
"""``{checked, diverged: [{runId, step, logged, now}], skipped: [{runId, reason}]}``."""


@dataclass(eq=False)
class _Check:
    """One check: the runs still to send, the one being sent, those whose answer is due."""

    workflow: str
    todo: deque[str]
    done: Callable[[Result | None, Refused | None], None]
    asked: bool  # by a client (counted against AT_ONCE), or by a reload
    worker: Worker | None = None
    reading: str | None = None  # the run whose entries are being sent
    after: int = 0  # ... after this log id
    due: deque[str] = field(default_factory=deque)  # runs sent whole, their answer due
    checked: int = 0
    diverged: list[Result] = field(default_factory=list)
    skipped: list[Result] = field(default_factory=list)
    deadline: Timer | None = None
    over: bool = False

    @property
    def progress(self) -> str:
        """How far it got, for the error that ends it early."""
        answered = self.checked + len(self.skipped)
        total = answered + len(self.due) + len(self.todo) + (self.reading is not None)
        return f"{answered} of {plural(total, 'run')} checked"


class Replays:
    """The checks under way. ``flows`` is the workflow manager's: each workflow's accepted
    code (``Flow.package``) and ``memoryMax``, which the child is held to."""

    def __init__(
        self, loop: Loop, workers: Workers, store: Storage, flows: Mapping[str, Flow]
    ) -> None:
        self.loop = loop
        self.workers = workers
        self.store = store
        self.flows = flows
        self._checks: list[_Check] = []
        self._timer: Timer | None = None
        self._turn = -1
        self._left = 0
        self._stopped = False

    # -- asking -------------------------------------------------------------------------

    def replay(self, run_id: str | None, workflow: str | None, limit: int) -> Pending:
        """``workflow.replay``: run ``run_id``, or the newest ``limit`` kept runs of
        ``workflow``, against the workflow's current code. Raises NotFound (no such run, or
        no such workflow now: no code to replay against), ShuttingDown (nerved stops, or
        :data:`AT_ONCE` checks are under way) and Failed (no process can be forked)."""
        if self._stopped:
            raise ShuttingDown("nerved is shutting down")
        committed = self.store.committed
        if run_id is not None:
            record = committed.get_run(run_id)
            if record is None:
                raise NotFound(f"no run {run_id}")
            workflow, runs = record.workflow, [run_id]
        else:
            assert workflow is not None
            listed = committed.list_runs(workflow=workflow, limit=min(limit, wire.MAX_REPLAY_RUNS))
            runs = [record.run_id for record in listed]
        flow = self.flows.get(workflow)
        if flow is None or flow.removed:
            raise NotFound(f"no workflow named {workflow!r} now: no code to replay its runs with")
        if sum(check.asked for check in self._checks) >= AT_ONCE:  # -32002: not now
            raise ShuttingDown(f"{AT_ONCE} replays are under way; try again once one is done")
        pending = Pending()

        def done(result: Result | None, error: Refused | None) -> None:
            if error is None:
                pending.resolve(result)
            else:
                pending.reject(error)

        self._start(_Check(workflow, deque(runs), done, asked=True))
        return pending

    def code_changed(self, flow: Flow) -> None:
        """A reload gave ``flow`` new code: check its active runs against it, and log a
        warning for each run whose new moderator decides otherwise (a check of an earlier
        reload of the same workflow is dropped: its code is not current any more)."""
        for check in [c for c in self._checks if c.workflow == flow.name and not c.asked]:
            self._end(check)
        runs = list(flow.active)
        if not runs or self._stopped:
            return

        def done(result: Result | None, error: Refused | None) -> None:
            if result is None:
                log.warning("workflow %s: its active runs could not be checked against its"
                            " new code: %s", flow.name, error)  # fmt: skip
                return
            for diverged in result["diverged"]:
                log.warning(
                    "run %s of %s: the new code's moderator decides differently at step %d:"
                    " logged %s, now %s", diverged["runId"], flow.name, diverged["step"],
                    _text(diverged["logged"]), _text(diverged["now"]),
                    extra=logs.run(diverged["runId"], flow.name),
                )  # fmt: skip
            for skipped in result["skipped"]:
                log.info("run %s of %s not checked against the new code: %s",
                         skipped["runId"], flow.name, skipped["reason"],
                         extra=logs.run(skipped["runId"], flow.name))  # fmt: skip

        try:
            self._start(_Check(flow.name, deque(runs), done, asked=False))
        except Refused as exc:
            done(None, exc)

    def stop(self) -> None:
        """nerved stops: every check's child is killed, and every client's check refused
        (a reload's is dropped without a word); none is started again."""
        self._stopped = True
        for check in list(self._checks):
            self._end(check, error=ShuttingDown("nerved is shutting down") if check.asked else None)

    # -- a check ------------------------------------------------------------------------

    def _start(self, check: _Check) -> None:
        """Fork the check's child and begin sending; raises Failed if it cannot be forked."""
        if not check.todo:
            check.done({"checked": 0, "diverged": [], "skipped": []}, None)
            return
        flow = self.flows[check.workflow]
        package = flow.package  # as accepted now, whatever a reload does meanwhile

        def child_main(sock: socket.socket) -> int:
            return replay_main(sock, package)

        try:
            check.worker = self.workers.spawn(
                "replay", check.workflow, child_main,
                lambda worker, message: self._on_message(check, message),
                lambda worker, why: self._on_gone(check, why),
                memory_max=flow.config.memory_max,
            )  # fmt: skip
        except OSError as exc:
            raise Failed(f"cannot fork a process for the replay: {exc}") from None
        check.deadline = self.loop.call_later(DEADLINE, lambda: self._too_long(check))
        self._checks.append(check)
        if self._timer is None:
            self._timer = self.loop.call_later(0, self._some)

    def _some(self) -> None:
        """Send each check's next page in turn, within this turn's budget; a check whose
        child has not read what it was sent waits (for :data:`REPLAY_WAIT`)."""
        self._timer = None
        if self._turn != self.loop.turn:
            self._turn, self._left = self.loop.turn, REPLAY_PER_TURN
        sending = [c for c in self._checks if c.todo or c.reading is not None]
        moved = False
        for check in sending:
            if self._left <= 0:
                break
            if check.over:
                continue
            assert check.worker is not None
            if check.worker.unsent > wire.RESULT_BUDGET:
                continue
            moved = True
            try:
                self._next(check)
            except StoreError as exc:
                self._end(check, error=Failed(f"cannot read the store: {exc}"))
                continue
            self._finish_if_done(check)
        if any(c.todo or c.reading is not None for c in self._checks):
            self._timer = self.loop.call_later(0 if moved else REPLAY_WAIT, self._some)

    def _next(self, check: _Check) -> None:
        """Send the next piece of a check: a run's start, a page of its entries (and, once
        the last is sent, its ``check``). Raises StoreError."""
        assert check.worker is not None
        committed = self.store.committed
        if check.reading is None:
            run_id = check.todo.popleft()
            record = committed.get_run(run_id)
            if record is None:
                return  # pruned meanwhile: it is no longer kept
            payload = record.trigger_payload
            if isinstance(payload, Unreadable):
                why = f"its trigger payload cannot be read back: {payload.reason}"
                self._skip(check, run_id, why)
                return
            data = self._frame(check, run_id, {"t": "run", "run": run_id, "payload": payload})
            if data is not None:
                check.reading, check.after = run_id, 0
                check.worker.send_frame(data)
            return
        run_id = check.reading
        entries, more = committed.run_history_page(run_id, check.after)
        kept: list[list[Any]] = []
        for entry in entries:
            self._left -= ENTRY_COST
            if entry.type in SILENT:
                continue
            if isinstance(entry.payload, Unreadable):
                why = f"its entry {entry.id} ({entry.type}) cannot be read back"
                self._skip(check, run_id, f"{why}: {entry.payload.reason}")
                return
            kept.append([entry.type, entry.payload])
        if entries:
            check.after = entries[-1].id
        if kept:
            data = self._frame(check, run_id, {"t": "entries", "run": run_id, "entries": kept})
            if data is None:
                return
            check.worker.send_frame(data)
        if not more:
            check.worker.send({"t": "check", "run": run_id})
            check.due.append(run_id)
            check.reading = None

    def _frame(self, check: _Check, run_id: str, message: Message) -> bytes | None:
        """``message`` for the child, counted against the turn's budget; None (the run
        skipped) for one that cannot be sent."""
        try:
            data = frame(message, TO_WORKER)
        except wire.Invalid as exc:
            self._skip(check, run_id, f"its history cannot be sent for the check: {exc}")
            return None
        self._left -= len(data)
        return data

    def _skip(self, check: _Check, run_id: str, reason: str) -> None:
        check.skipped.append({"runId": run_id, "reason": reason})
        if check.reading == run_id:
            check.reading = None

    def _on_message(self, check: _Check, message: Message) -> None:
        if check.over:
            return
        kind = message.get("t")
        if kind == "load_error":
            self._end(check, error=Failed(f"workflow {check.workflow}: {message.get('error')}"))
            return
        if kind != "result" or not check.due or message.get("run") != check.due[0]:
            raise ValueError(f"a {kind!r} message the replay did not ask for")  # kills it
        run_id = check.due.popleft()
        if "skipped" in message:
            check.skipped.append({"runId": run_id, "reason": str(message["skipped"])})
        else:
            check.checked += 1
            diverged = message.get("diverged")
            if diverged is not None:
                check.diverged.append({
                    "runId": run_id, "step": int(diverged["step"]),
                    "logged": diverged["logged"], "now": diverged["now"],
                })  # fmt: skip
        self._finish_if_done(check)

    def _finish_if_done(self, check: _Check) -> None:
        if not check.over and not check.todo and check.reading is None and not check.due:
            result = {"checked": check.checked, "diverged": check.diverged,
                      "skipped": check.skipped}  # fmt: skip
            self._end(check, result)

    def _on_gone(self, check: _Check, why: str) -> None:
        if check.over:
            return
        if why == KILLED:
            why = f"a moderator ran past {MODERATOR_KILL:g}s and could not be interrupted ({why})"
        why = f"the replay's process ended before it was done: {why} ({check.progress})"
        self._end(check, error=Failed(why))

    def _too_long(self, check: _Check) -> None:
        if not check.over:
            why = f"the replay took longer than {DEADLINE:g}s ({check.progress})"
            self._end(check, error=Failed(why))

    def _end(
        self, check: _Check, result: Result | None = None, error: Refused | None = None
    ) -> None:
        """The check is over: its child is killed, and it is answered (unless it was
        dropped: neither ``result`` nor ``error``)."""
        check.over = True
        if check.deadline is not None:
            check.deadline.cancel()
        if check.worker is not None:
            check.worker.kill()
        if check in self._checks:
            self._checks.remove(check)
        if result is not None or error is not None:
            check.done(result, error)


def _text(decision: Any) -> str:
    """A decision in a log line: its JSON (null: the run ends), at most a line's worth."""
    return wire.text(json.dumps(decision, ensure_ascii=False), 1024)
