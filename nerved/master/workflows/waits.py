"""Runs that wait: a moderator's waits parked in the master, signals, and the inputs that
end waits (SPEC §4, §5 v2).

- A worker says its moderator waits (``wait``, checked again here: :mod:`nerved.waits`).
  The run becomes ``waiting`` (Transition.WAIT) and its worker holds it no more: the worker
  may go idle and exit. The run keeps its slot (concurrency 1 stays mutual exclusion). Its
  ``waiting`` entry holds the wait and its deadline ``until`` (ms since the epoch), fixed
  as it is logged, so that a replay sees the same decisions.
- A signal (``workflow.signal``) is logged as it arrives (a ``signal`` entry, durable before
  the answer). If the run waits for that name, the signal is delivered in the same batch:
  an ``input`` entry ``{"event": {"type": "signal", "name", "payload"}, "signal": <the
  signal entry's id>}`` ends the wait (Transition.WAKE) and the run is resumed in a worker.
  Otherwise it stays pending (:meth:`Storage.pending_signals`) until a wait names it;
  pending signals of one name are delivered oldest first, one per wait.
- A deadline is one timer of the master's loop per waiting run that has one: nothing
  polls, and a master with 10,000 waiting runs wakes only when one falls due. Then an
  ``input`` ``{"type": "wait_timeout", "name"}`` (or ``{"type": "wake"}`` for a sleep) ends
  the wait.
- At start (:meth:`Waits.recovered`) every waiting run's timer is armed again; deadlines
  that passed while nerved was down fire at once, in the order of their deadlines.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from nerved import logs, waits, wire
from nerved.loop import Loop
from nerved.master.workflows.runs import ActiveRun, Flow, Wait
from nerved.states import RunStatus, Transition
from nerved.store import LogEntry, Storage
from nerved.store.records import input_payload, now_ms

log = logging.getLogger("nerved.master.workflows")


class Waits:
    """The waits of every run.

    ``assign(run)`` gives a run to a worker (a resume); ``end(run, transition, error)`` ends
    it; ``idle(flow)`` hears that a run of ``flow`` let go of its worker; ``stopping()``:
    nerved stops, and no wait ends before its next start (no worker would take the run: a
    deadline or a signal that comes meanwhile ends the wait at that start instead).
    """

    def __init__(
        self,
        loop: Loop,
        store: Storage,
        assign: Callable[[ActiveRun], None],
        end: Callable[[ActiveRun, Transition, str | None], None],
        idle: Callable[[Flow], None],
        stopping: Callable[[], bool],
    ) -> None:
        self.stopping = stopping
        self.loop = loop
        self.store = store
        self.assign = assign
        self.end = end
        self.idle = idle

    # -- from the worker ----------------------------------------------------------------

    def parked(self, run: ActiveRun, message: dict[str, Any]) -> None:
        """The run's moderator asked for a wait (``wait``) and its worker dropped the thread."""
        n = int(message.get("n", 0))
        if n != run.steps + 1:
            log.error("run %s: a wait before step %d arrived after step %d; ignoring it",
                      run.run_id, n, run.steps,
                      extra=logs.run(run.run_id, run.flow.name))  # fmt: skip
            return
        try:
            wait = waits.checked({k: v for k, v in message.items() if k not in ("t", "run", "n")})
        except ValueError as exc:  # the worker checks it: one that does not breaks the rules
            self.end(run, Transition.FAIL, f"moderator asked for a wait nerve refuses: {exc}")
            return
        now = now_ms()
        name: str | None = wait.get("wait")
        ms: int | None = wait["sleep"] if name is None else wait["timeout"]
        until = None if ms is None else now + ms
        record = {"wait": None, **wait, "until": until}  # {wait, timeout | sleep, until}
        if not self.store.record_wait(run.run_id, wire.dumps(record), name, until, ts=now):
            log.error("run %s is no longer started; ignoring its wait", run.run_id,
                      extra=logs.run(run.run_id, run.flow.name))  # fmt: skip
            return
        run.worker = None
        run.in_flight = None
        run.waiting = Wait(name, until)
        if run.flow.removed:  # a reload removed its workflow while its last step ran
            self.end(run, Transition.WITHDRAW, f"workflow {run.flow.name} was removed")
            return
        what = "sleeps" if name is None else f"waits for signal {name!r}"
        for_ = (
            "" if ms is None else f" for {ms / 1000:g}s" if name is None else f" ({ms / 1000:g}s)"
        )
        log.info("run %s of %s %s%s", run.run_id, run.flow.name, what, for_,
                 extra=logs.run(run.run_id, run.flow.name, RunStatus.WAITING))  # fmt: skip
        if self._take_pending(run):
            return
        self._arm(run, until)
        self.idle(run.flow)

    def _take_pending(self, run: ActiveRun) -> bool:
        """Deliver the oldest pending signal the run waits for, if any (and nerved is not
        stopping): whether one was."""
        name = None if run.waiting is None else run.waiting.name
        if name is None or self.stopping():
            return False
        pending = self.store.pending_signals(run.run_id, name, limit=1)
        return bool(pending) and self._deliver(run, pending[0])

    # -- from operators -----------------------------------------------------------------

    def signal(self, run: ActiveRun | None, name: str, entry_id: int) -> bool:
        """A signal ``name`` was logged for an active run (``entry_id``; ``run`` None: it is
        queued): delivered now if the run waits for that name (the oldest pending one of the
        name, which is this one unless a wait is being set up in this very turn)."""
        if run is None or run.waiting is None or run.waiting.name != name or self.stopping():
            return False
        pending = self.store.pending_signals(run.run_id, name, limit=1)
        return self._deliver(run, pending[0] if pending else None)

    # -- inputs ---------------------------------------------------------------------------

    def _deliver(self, run: ActiveRun, entry: LogEntry | None) -> bool:
        """Hand the signal ``entry`` to the run's moderator; False if there is none."""
        if entry is None or not isinstance(entry.payload, dict):
            return False
        event = {"type": "signal", "name": entry.payload.get("name"),
                 "payload": entry.payload.get("payload")}  # fmt: skip
        self._wake(run, event, entry.id)
        return True

    def _due(self, run: ActiveRun) -> None:
        """The run's deadline came: the moderator hears that its wait ended without a signal."""
        run.wait_timer = None
        wait = run.waiting
        if wait is None or self.stopping():  # it fires at the next start instead
            return
        event = {"type": "wake"} if wait.name is None else {"type": "wait_timeout",
                                                            "name": wait.name}  # fmt: skip
        self._wake(run, event, None)

    def _wake(self, run: ActiveRun, event: dict[str, Any], signal: int | None) -> None:
        """End the run's wait with ``event`` (an ``input`` entry) and give it to a worker."""
        event_json = wire.dumps(event)
        size = len(input_payload(event_json, signal).encode())
        if run.history + size > wire.MAX_HISTORY:
            self.end(run, Transition.FAIL,
                     f"the {event['type']} event ({wire.size_text(size)}) would take its"
                     f" history past {wire.size_text(wire.MAX_HISTORY)}, more than a resume"
                     " can carry")  # fmt: skip
            return
        if not self.store.record_wake(run.run_id, event_json, signal):
            log.error("run %s is not waiting; its %s is not delivered", run.run_id, event["type"],
                      extra=logs.run(run.run_id, run.flow.name))  # fmt: skip
            return
        run.history += size
        self.cancel(run)
        log.info("run %s of %s goes on: %s", run.run_id, run.flow.name, event["type"],
                 extra=logs.run(run.run_id, run.flow.name, RunStatus.STARTED))  # fmt: skip
        self.assign(run)

    # -- timers ---------------------------------------------------------------------------

    def _arm(self, run: ActiveRun, until: int | None) -> None:
        if run.wait_timer is not None:
            run.wait_timer.cancel()
            run.wait_timer = None
        if until is not None:
            run.wait_timer = self.loop.call_later((until - now_ms()) / 1000, lambda: self._due(run))

    def recovered(self, runs: Iterable[ActiveRun]) -> None:
        """At start: a waiting run takes a signal it waits for that came while nerved
        stopped; the others' deadlines are armed, earliest first, so that those past already
        (they fell due while nerved was down) fire at once in their order."""
        signalled = self.store.signalled_runs()
        waiting = [run for run in runs if run.waiting is not None and not (
            run.run_id in signalled and self._take_pending(run))]  # fmt: skip
        timed = [(run.waiting.until, run) for run in waiting
                 if run.waiting is not None and run.waiting.until is not None]  # fmt: skip
        for until, run in sorted(timed, key=lambda timed: timed[0]):
            self._arm(run, until)

    def cancel(self, run: ActiveRun) -> None:
        """``run`` waits no more (its wait ended, or the run did): no deadline to come."""
        if run.wait_timer is not None:
            run.wait_timer.cancel()
            run.wait_timer = None
        run.waiting = None
