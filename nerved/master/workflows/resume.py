"""Resumes: a run's logged history sent to its new worker, page by page, across loop turns.

A run some worker had before is *resumed*: the new worker gets its logged events and replays
the moderator over them. They are read once the batch that gave the run to the worker is
durable, from the committed view (nerved.store, :attr:`Storage.committed`): every step of the
run is there by then, and a page that cannot be read fails this run alone, where inside the
write transaction it would fail the whole batch. They go in frames of at most
:data:`wire.RESULT_BUDGET`, at most :data:`RESUME_PER_TURN` bytes a turn over all resumes: a
worker lost under 48 runs of 60 MiB each must not hold the loop for the time it takes to
read them all.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from nerved import wire
from nerved.channel import TO_WORKER, Message, frame
from nerved.loop import Loop, Timer
from nerved.master.workers import Worker
from nerved.master.workflows.runs import ActiveRun
from nerved.store import Storage, StoreError, Unreadable

RESUME_PER_TURN: Final = wire.RESULT_BUDGET  # bytes of resumed history read per loop turn
RESUME_WAIT: Final = 0.01  # seconds before looking again at a worker still reading a page


def start_frame(kind: str, run: ActiveRun) -> bytes:
    """The run's ``start`` or ``resume`` (with its completed ``steps`` and the next step's
    ``try``), its payload spliced in as stored; raises wire.Invalid for one that cannot be
    sent."""
    message: Message = {"t": kind, "run": run.run_id, "maxSteps": run.flow.config.max_steps}
    if kind == "resume":  # its completed steps (the history holds inputs too) and next try
        message["steps"], message["try"] = run.steps, run.tries + 1
    return frame(message, TO_WORKER, {"payload": run.payload_json})


@dataclass(eq=False)
class _Resume:
    """A run on its way to a new worker: the steps sent so far (up to log id ``after``)."""

    run: ActiveRun
    worker: Worker
    after: int = 0
    steps: int = 0


class Resumer:
    """Sends resumed runs their histories, oldest resume first, within a budget per turn.

    ``held(run, worker)`` says whether ``worker`` still holds ``run`` (a resume for a run that
    ended, or went to another worker meanwhile, is dropped); ``failed(run, exc)`` ends a run
    whose history cannot be read or sent.
    """

    def __init__(
        self,
        loop: Loop,
        store: Storage,
        held: Callable[[ActiveRun, Worker], bool],
        failed: Callable[[ActiveRun, wire.Invalid | StoreError], None],
    ) -> None:
        self.loop = loop
        self.store = store
        self.held = held
        self.failed = failed
        self._resumes: deque[_Resume] = deque()
        self._timer: Timer | None = None
        self._turn = -1
        self._left = 0

    def resume(self, run: ActiveRun, worker: Worker) -> None:
        """Send ``run``'s history to ``worker`` once this turn's batch is durable."""
        resume = _Resume(run, worker)
        self.store.after_commit(lambda: self._queue(resume))

    def _queue(self, resume: _Resume) -> None:
        self._resumes.append(resume)
        if self._timer is None:
            self._timer = self.loop.call_later(0, self._some)

    def _some(self) -> None:
        """Send resumed runs their histories, page by page, within this turn's budget.

        A run whose steps cannot be read (a damaged page, a row that does not decode) fails
        here, alone. A page waits while the worker has not read what it was sent (so that
        the master holds at most about a page per worker), and for the next turn once
        :data:`RESUME_PER_TURN` bytes were read in this one.
        """
        self._timer = None
        if self._turn != self.loop.turn:
            self._turn, self._left = self.loop.turn, RESUME_PER_TURN
        while self._resumes and self._left > 0:
            resume = self._resumes[0]
            run, worker = resume.run, resume.worker
            if not self.held(run, worker):
                self._resumes.popleft()  # ended, or given to another worker meanwhile
                continue
            if worker.unsent > wire.RESULT_BUDGET:
                self._timer = self.loop.call_later(RESUME_WAIT, self._some)
                return
            try:
                done = self._page(resume)
            except (wire.Invalid, StoreError) as exc:
                self._resumes.popleft()
                self.failed(run, exc)
                continue
            if done:
                self._resumes.popleft()
        if self._resumes:
            self._timer = self.loop.call_later(0, self._some)

    def _page(self, resume: _Resume) -> bool:
        """Send the next page of a run's steps (or, at the end, its ``resume``); True once
        the whole history went. Raises wire.Invalid or StoreError for one that cannot."""
        run, worker = resume.run, resume.worker
        entries, more = self.store.committed.run_steps_page(run.run_id, resume.after)
        events: list[Any] = []
        for entry in entries:
            step = entry.payload
            if isinstance(step, Unreadable):
                number = resume.steps + len(events) + 1
                raise wire.Invalid(f"step {number} cannot be read back: {step.reason}")
            if not isinstance(step, dict) or "event" not in step:  # a step, or an input
                number = resume.steps + len(events) + 1
                raise wire.Invalid(f"event {number} is not a {{role, prompt, event}} or {{event}}")
            events.append(step["event"])
        if events:
            data = frame({"t": "history", "run": run.run_id, "events": events}, TO_WORKER)
            worker.send_frame(data)
            self._left -= len(data)
            resume.after, resume.steps = entries[-1].id, resume.steps + len(events)
        if more:
            return False
        run.delivered = worker.send_frame(start_frame("resume", run))
        return True
