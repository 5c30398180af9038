"""The WorkflowManager: admission, queues, workers and the durable life of every thread.

Every decision is written to logs.db before anyone hears of it. A trigger is answered, and
a worker told to start a thread, only after the commit that made the run ``started``,
``queued`` or ``dropped``; a worker is told to go on after a step only once that step is
committed. What the master keeps in memory (who is active, the queue in FIFO order) is a
cache of what ``workflow_runs`` says, rebuilt from it at start (:meth:`recover`).

A worker is one process per workflow, started on demand and stopped after ``idleTimeout``
with nothing to do. When one dies, its threads are resumed in a successor from their logged
events (roles are at-least-once), or, for ``overflow: drop`` workflows, marked ``crashed``
and started afresh; a thread whose worker died ``maxAttempts`` times under it is ``crashed``.
When no worker can be forked (a pids limit, no memory), the runs stay ``started`` or
``queued`` and the fork is retried with backoff.

A resume sends a run's whole history (trigger payload and steps) to its new worker, page by
page across loop turns, and the worker holds all of it, so each run's history is held to
:data:`wire.MAX_HISTORY`: a step that would take it past that fails the run instead of being
recorded. A run whose stored history cannot be resumed (unreadable,
nested too deeply, too large: a row from an older release, or damaged on disk) fails alone,
with the reason (``Transition.UNRESUMABLE``), at recovery or at the resume that finds it.
"""

from __future__ import annotations

import logging
import socket
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final

from nerved import wire
from nerved.channel import TO_WORKER, Message, frame
from nerved.code.packages import IMPORT_TIMEOUT, CodeSnapshot, Package
from nerved.config import NerveConfig, Overflow, WorkflowConfig, unlined
from nerved.loop import Loop, Timer
from nerved.master.supervisor import Exit, Supervisor
from nerved.master.workers import Worker, Workers
from nerved.outcome import BadInput, Failed, NotFound, Pending, Refused, ShuttingDown
from nerved.states import RunStatus, Transition
from nerved.store import RunRecord, Storage, StoreError, Unreadable
from nerved.worker import workflow as workflow_worker
from nerved.worker.timebox import KILLED, MODERATOR_KILL

log = logging.getLogger(__name__)

RESUME_PER_TURN: Final = wire.RESULT_BUDGET  # bytes of resumed history read per loop turn
RESUME_WAIT: Final = 0.01  # seconds before looking again at a worker still reading a page
DRAIN: Final = "drainTimeout"  # where a worker's stop deadline comes from, for the log
HALT: Final[Message] = {"t": "halt"}  # nerved stops: finish the running steps, keep the runs
_WORK: Final = frozenset({"step", "completed", "failed"})  # messages that are work done


@dataclass(eq=False)
class ActiveRun:
    """A started run: which flow it belongs to and which worker (if any) runs it now."""

    run_id: str
    flow: Flow
    payload_json: str | None  # as stored: held as text, sent as text (a frame splices it)
    history: int  # bytes of its stored trigger payload and steps, at most wire.MAX_HISTORY
    steps: int = 0
    worker: Worker | None = None
    sent: bool = False  # a worker has been told of it before: the next one resumes it


@dataclass(frozen=True, slots=True)
class QueuedRun:
    """A run waiting for a slot, with its payload as stored (text: a decoded 1 MiB payload
    can be a hundred times that in Python objects, and a queue holds up to maxQueue)."""

    run_id: str
    payload_json: str | None


@dataclass(eq=False)
class _Resume:
    """A run on its way to a new worker: the steps sent so far (up to log id ``after``)."""

    run: ActiveRun
    worker: Worker
    after: int = 0
    steps: int = 0


@dataclass(eq=False)
class Flow:
    """One workflow's runtime: its settings, queue, active runs and workers."""

    config: WorkflowConfig
    package: Package  # its accepted code, which every worker imports
    supervisor: Supervisor = field(init=False)  # its workers (nerved.master.supervisor)
    queue: deque[QueuedRun] = field(default_factory=deque)
    active: dict[str, ActiveRun] = field(default_factory=dict)
    idle: Timer | None = None
    removed: bool = False

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def has_room(self) -> bool:
        return len(self.active) < self.config.concurrency


class WorkflowManager:
    def __init__(
        self, loop: Loop, workers: Workers, store: Storage, import_timeout: float = IMPORT_TIMEOUT
    ) -> None:
        self.loop = loop
        self.workers = workers
        self.store = store
        self.import_timeout = import_timeout  # seconds a worker's import may take
        self.flows: dict[str, Flow] = {}
        self.runs: dict[str, ActiveRun] = {}
        self._resumes: deque[_Resume] = deque()  # oldest first: see _resume_some
        self._resume_timer: Timer | None = None
        self._resume_turn = -1
        self._resume_left = 0
        self.waiters: dict[str, list[Pending]] = {}
        self.stopping = False

    # -- configuration ------------------------------------------------------------------

    def apply(self, config: NerveConfig, code: CodeSnapshot) -> list[str]:
        changed: list[str] = []
        for name in [n for n in self.flows if n not in config.workflows]:
            self._remove(self.flows.pop(name))
            changed.append(f"workflow {name} removed")
        for name, wf_config in config.workflows.items():
            package = code.workflows[name]
            if name not in self.flows:
                flow = Flow(wf_config, package)
                flow.supervisor = self._supervise(flow)
                self.flows[name] = flow
                changed.append(f"workflow {name} added")
                continue
            flow = self.flows[name]
            if unlined(flow.config) != unlined(wf_config):
                flow.config = wf_config
                changed.append(f"workflow {name} settings")
                flow.supervisor.set_memory_max(wf_config.memory_max)
                self._fill(flow)
            if flow.package.digest != package.digest:
                flow.package = package
                self._drain_worker(flow)
                changed.append(f"workflow {name} code")
                flow.supervisor.code_changed()  # a fatal workflow is tried again
        return changed

    def _supervise(self, flow: Flow) -> Supervisor:
        def child_main(sock: socket.socket) -> int:
            return workflow_worker.run(sock, flow.package)  # as accepted when it forks

        def on_message(worker: Worker, message: Message) -> None:
            self._on_message(flow, worker, message)

        def on_exit(worker: Worker, exit: Exit) -> None:
            self._on_exit(flow, worker, exit)

        return Supervisor(
            self.workers, "workflow", flow.name,
            child_main=child_main, on_message=on_message, on_exit=on_exit,
            on_wake=lambda: self._wake(flow), importing=lambda: f"workflows/{flow.name}",
            import_timeout=self.import_timeout, memory_max=flow.config.memory_max,
        )  # fmt: skip

    def _remove(self, flow: Flow) -> None:
        flow.removed = True
        while flow.queue:
            self._finish(
                flow.queue.popleft().run_id,
                flow.name,
                Transition.WITHDRAW,
                f"workflow {flow.name} was removed",
            )
        flow.supervisor.retire(deadline=flow.config.drain_timeout_ms / 1000, setting=DRAIN)

    def _drain_worker(self, flow: Flow) -> None:
        """Send no new threads to the current worker; let it finish its own, up to drainTimeout.

        Also how an idle worker is stopped: whatever user code does on the way out (a
        logging handler that blocks at shutdown, a thread that never ends), it is gone
        within drainTimeout.
        """
        flow.supervisor.drain(flow.config.drain_timeout_ms / 1000, DRAIN)

    # -- recovery -----------------------------------------------------------------------

    def recover(self) -> str:
        """Rebuild the queues and active sets from logs.db and resume what was running.

        A run whose stored trigger payload cannot be used, or whose history is too large to
        resume, fails here with the reason; every other run recovers.
        """
        queued = resumed = restarted = dropped = failed = 0
        for record in self.store.active_runs():
            flow = self.flows.get(record.workflow)
            if flow is None:
                transition = (
                    Transition.WITHDRAW if record.status is RunStatus.QUEUED else Transition.CRASH
                )
                self._finish(
                    record.run_id,
                    record.workflow,
                    transition,
                    f"workflow {record.workflow} is not configured",
                )
                dropped += 1
                continue
            try:
                payload_json = _resumable_payload(record)
            except wire.Invalid as exc:
                self._finish(record.run_id, flow.name, Transition.UNRESUMABLE, _unresumable(exc))
                failed += 1
                continue
            if record.status is RunStatus.QUEUED:
                flow.queue.append(QueuedRun(record.run_id, payload_json))
                queued += 1
            elif flow.config.overflow is Overflow.DROP:
                self._restart_afresh(record, payload_json, "nerved stopped while it ran")
                restarted += 1
            else:
                run = ActiveRun(
                    record.run_id, flow, payload_json, record.history, record.steps, sent=True
                )
                flow.active[run.run_id] = run
                self.runs[run.run_id] = run
                resumed += 1
        for flow in self.flows.values():
            for run in list(flow.active.values()):
                if run.worker is None:  # a run restarted afresh above was assigned already
                    self._assign(run)  # a run whose steps cannot be read fails then, alone
            self._fill(flow)
        summary = (
            f"recovered {resumed} started and {queued} queued runs, "
            f"restarted {restarted}, ended {dropped} of unconfigured workflows"
            f" and {failed} that can no longer be resumed"
        )
        if resumed or queued or restarted or dropped or failed:
            log.info("%s", summary)
        return summary

    # -- admission ----------------------------------------------------------------------

    def trigger(
        self,
        workflow: str,
        payload: Any,
        payload_json: str | None = None,
        *,
        retry_of: str | None = None,
    ) -> RunRecord:
        """Admit a new run: started, queued or dropped, written in the current batch.

        ``payload_json`` is the payload as :func:`wire.check_value` encodes it, when the
        caller checked it already (the control socket); otherwise (a reflex's signal, a run
        started afresh) it is checked here. Nothing changes before everything that can refuse
        the trigger has passed: -32001 (no such workflow), -32002 (shutting down), -32602
        (a payload nerve does not keep). The caller acknowledges the run with
        ``store.after_commit``; the worker hears of a started run only after that same commit.
        """
        flow = self.flows.get(workflow)
        if flow is None or flow.removed:
            raise NotFound(f"no workflow named {workflow!r}")
        if self.stopping:
            raise ShuttingDown("nerved is shutting down")
        if payload_json is None and payload is not None:
            try:
                payload_json = wire.check_value(payload, "the payload")
            except wire.Invalid as exc:
                raise BadInput(str(exc)) from None
        run_id = uuid.uuid4().hex
        if flow.has_room and not flow.queue:
            record = self.store.create_run(
                run_id, workflow, Transition.START, payload,
                payload_json=payload_json, retry_of=retry_of,
            )  # fmt: skip
            self._activate(flow, run_id, payload_json)
        elif flow.config.overflow is Overflow.DROP:
            limit = flow.config.concurrency
            record = self.store.create_run(
                run_id, workflow, Transition.REJECT, payload,
                payload_json=payload_json, retry_of=retry_of,
                reason=f"{workflow} is at its concurrency limit ({limit}) with overflow: drop",
            )  # fmt: skip
            _log_transition(run_id, workflow, Transition.REJECT, record.error)
        else:
            if len(flow.queue) >= flow.config.max_queue:
                self._finish(
                    flow.queue.popleft().run_id,
                    workflow,
                    Transition.EVICT,
                    f"the queue of {workflow} was full (maxQueue {flow.config.max_queue})"
                    " and this was its oldest run",
                )
            record = self.store.create_run(
                run_id, workflow, Transition.ENQUEUE, payload,
                payload_json=payload_json, retry_of=retry_of,
            )  # fmt: skip
            flow.queue.append(QueuedRun(run_id, payload_json))
            _log_transition(run_id, workflow, Transition.ENQUEUE, None)
        if record.status is RunStatus.STARTED:
            _log_transition(run_id, workflow, Transition.START, None)
        return record

    def _activate(self, flow: Flow, run_id: str, payload_json: str | None) -> None:
        history = 0 if payload_json is None else len(payload_json.encode())
        run = ActiveRun(run_id, flow, payload_json, history)
        flow.active[run_id] = run
        self.runs[run_id] = run
        if flow.idle is not None:
            flow.idle.cancel()
            flow.idle = None
        self._assign(run)

    def _fill(self, flow: Flow) -> None:
        """Start queued runs, oldest first, while the workflow has free slots."""
        while flow.queue and flow.has_room and not self.stopping and not flow.removed:
            queued = flow.queue.popleft()
            if self.store.transition_run(
                queued.run_id, Transition.DISPATCH, payload_json=queued.payload_json
            ):
                _log_transition(queued.run_id, flow.name, Transition.DISPATCH, None)
                self._activate(flow, queued.run_id, queued.payload_json)

    # -- workers ------------------------------------------------------------------------

    def _assign(self, run: ActiveRun) -> None:
        """Give a run to its flow's worker (spawned if needed), once the batch commits.

        A run that some worker had before is *resumed*: the new worker gets its logged
        events and replays the moderator over them. They are read once the batch is
        durable, from the committed view (nerved.store, :attr:`Storage.committed`): every
        step of the run is there by then, and a page that cannot be read fails this run
        alone, where inside the write transaction it would fail the whole batch. They go in
        frames of at most :data:`wire.RESULT_BUDGET`, at most :data:`RESUME_PER_TURN` bytes
        a turn over all resumes (:meth:`_resume_some`): a worker lost under 48 runs of
        60 MiB each must not hold the loop for the time it takes to read them all. A run
        whose history cannot be read or sent fails; one that finds no worker (the fork
        failed) waits for the retry.

        A run is given to one worker at a time, once: a run some worker holds (it was sent
        its ``start``, or its resume is under way) is left alone here, whoever asks, until
        that worker is gone (:meth:`_on_gone` lets go of it first). A worker told twice of
        one run would refuse the second (``already running here``), and a second resume
        would send it the history again.
        """
        if run.worker is not None:
            log.debug("run %s is held by %r already; not assigning it again", run.run_id,
                      run.worker)  # fmt: skip
            return
        worker = run.flow.supervisor.ensure()
        if worker is None:
            return  # the supervisor wakes the flow when it may fork (see _wake)
        run.worker = worker
        if run.sent:
            resume = _Resume(run, worker)
            self.store.after_commit(lambda: self._queue_resume(resume))
            return
        run.sent = True
        try:
            start = self._frame("start", run)
        except wire.Invalid as exc:
            self._end(run, Transition.UNRESUMABLE, _unresumable(exc))
            return

        def send() -> None:
            if run.worker is worker and self.runs.get(run.run_id) is run:
                worker.send_frame(start)

        self.store.after_commit(send)

    def _frame(self, kind: str, run: ActiveRun) -> bytes:
        """The run's ``start`` or ``resume``, its payload spliced in as stored."""
        message: Message = {"t": kind, "run": run.run_id, "maxSteps": run.flow.config.max_steps}
        return frame(message, TO_WORKER, {"payload": run.payload_json})

    def _queue_resume(self, resume: _Resume) -> None:
        self._resumes.append(resume)
        if self._resume_timer is None:
            self._resume_timer = self.loop.call_later(0, self._resume_some)

    def _resume_some(self) -> None:
        """Send resumed runs their histories, page by page, within this turn's budget.

        A run whose steps cannot be read (a damaged page, a row that does not decode) fails
        here, alone. A page waits while the worker has not read what it was sent (so that
        the master holds at most about a page per worker), and for the next turn once
        :data:`RESUME_PER_TURN` bytes were read in this one.
        """
        self._resume_timer = None
        if self._resume_turn != self.loop.turn:
            self._resume_turn, self._resume_left = self.loop.turn, RESUME_PER_TURN
        while self._resumes and self._resume_left > 0:
            resume = self._resumes[0]
            run, worker = resume.run, resume.worker
            if run.worker is not worker or self.runs.get(run.run_id) is not run:
                self._resumes.popleft()  # ended, or given to another worker meanwhile
                continue
            if worker.unsent > wire.RESULT_BUDGET:
                self._resume_timer = self.loop.call_later(RESUME_WAIT, self._resume_some)
                return
            try:
                done = self._resume_page(resume)
            except (wire.Invalid, StoreError) as exc:
                self._resumes.popleft()
                self._end(run, Transition.UNRESUMABLE, _unresumable(exc))
                continue
            if done:
                self._resumes.popleft()
        if self._resumes:
            self._resume_timer = self.loop.call_later(0, self._resume_some)

    def _resume_page(self, resume: _Resume) -> bool:
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
            if not isinstance(step, dict) or "event" not in step:
                number = resume.steps + len(events) + 1
                raise wire.Invalid(f"step {number} is not a {{role, prompt, event}}")
            events.append(step["event"])
        if events:
            data = frame({"t": "history", "run": run.run_id, "events": events}, TO_WORKER)
            worker.send_frame(data)
            self._resume_left -= len(data)
            resume.after, resume.steps = entries[-1].id, resume.steps + len(events)
        if more:
            return False
        worker.send_frame(self._frame("resume", run))
        return True

    def _wake(self, flow: Flow) -> None:
        """The flow may fork again (a backoff ended, a fix ended its fatal state), or its
        current worker is not the one that died: every run that waits for a worker gets one."""
        for run in list(flow.active.values()):
            if run.worker is None:
                self._assign(run)

    def _on_message(self, flow: Flow, worker: Worker, message: Message) -> None:
        kind = message.get("t")
        if kind == "ready":
            log.debug("workflow %s worker pid %d ready", flow.name, worker.pid)
            flow.supervisor.ready(worker)
            return
        if kind == "load_error":  # it stays, and fails the runs it is given with the reason
            log.error("workflow %s: %s", flow.name, message.get("error"))
            flow.supervisor.ready(worker)
            return
        run = self.runs.get(str(message.get("run")))
        if run is None or run.worker is not worker:
            log.debug(
                "workflow %s: ignoring %s for a run this worker does not hold", flow.name, kind
            )
            return
        if kind in _WORK:
            flow.supervisor.progressed(worker)
        if kind == "step":
            self._on_step(run, worker, message)
        elif kind == "log":
            self.store.append_log("workflow", "log", run.run_id, str(message.get("message")))
        elif kind == "completed":
            self._end(run, Transition.COMPLETE, None)
        elif kind == "failed":
            self._end(run, Transition.FAIL, str(message.get("error")))
        else:
            log.warning("workflow %s worker sent an unknown message %r", flow.name, kind)

    def _on_step(self, run: ActiveRun, worker: Worker, message: Message) -> None:
        n = int(message.get("n", 0))
        if n != run.steps + 1:
            log.error(
                "run %s: step %d arrived after step %d; ignoring it", run.run_id, n, run.steps
            )
            return
        # A prompt or event nested deeper than any value may be is a worker breaking the
        # rules: wire.Invalid, a ValueError, makes the Worker end it.
        record = wire.dumps(
            {"role": str(message.get("role")), "prompt": message.get("prompt"),
             "event": message.get("event")},
            max_depth=wire.MAX_DEPTH + 1,
        )  # fmt: skip
        size = len(record.encode())
        if run.history + size > wire.MAX_HISTORY:
            self._end(
                run,
                Transition.FAIL,
                f"step {n} ({wire.size_text(size)}) would take its history past"
                f" {wire.size_text(wire.MAX_HISTORY)}, more than a resume can carry",
            )
            worker.send({"t": "end", "run": run.run_id})
            return
        if not self.store.record_step(run.run_id, record):
            log.error("run %s is no longer started; ignoring its step %d", run.run_id, n)
            return
        run.steps = n
        run.history += size
        ack = {"t": "ack", "run": run.run_id, "n": n}

        def send() -> None:
            if run.worker is worker:
                worker.send(ack)

        self.store.after_commit(send)

    def _on_exit(self, flow: Flow, worker: Worker, exit: Exit) -> None:
        """A worker of the flow was reaped: the runs it held resume in a successor (once the
        supervisor lets one be forked), or end (see the module's docstring)."""
        orphans = [r for r in flow.active.values() if r.worker is worker]
        if not orphans or self.stopping:
            return  # halted threads stay started; the next start resumes them
        why = exit.why
        if exit.hung:  # as a failed import fails them: a new worker would hang too
            for run in orphans:
                self._end(run, Transition.FAIL, why)
            return
        if why == KILLED:  # the hard bound on a moderator call (nerved.worker.timebox)
            why = f"a moderator ran past {MODERATOR_KILL:g}s and could not be interrupted: {why}"
        log.warning("workflow %s: %d runs lost their worker pid %d (%s)",
                    flow.name, len(orphans), worker.pid, why)  # fmt: skip
        survivors = 0
        for run in orphans:
            run.worker = None
            attempts = self.store.count_attempt(run.run_id)
            if flow.removed:
                self._end(
                    run, Transition.CRASH, f"its workflow was removed and its worker died ({why})"
                )
            elif flow.config.overflow is Overflow.DROP:
                record = self.store.get_run(run.run_id)
                self._end(run, Transition.CRASH, f"its worker died ({why})")
                if record is not None and not flow.removed:
                    self._restart_afresh(
                        record, None, f"its worker died ({why})", already_ended=True
                    )
            elif attempts >= flow.config.max_attempts:
                self._end(
                    run,
                    Transition.CRASH,
                    f"its worker died {attempts} times under it (last: {why})",
                )
            else:
                survivors += 1
        if survivors and not exit.current:
            self._wake(flow)  # a drained worker died: the current one (or a new) takes them
        # Otherwise the supervisor wakes the flow once its backoff is over.

    def _restart_afresh(
        self,
        record: RunRecord,
        payload_json: str | None,
        why: str,
        *,
        already_ended: bool = False,
    ) -> None:
        """overflow: drop: the lost thread ends crashed; a new run takes its payload.

        ``payload_json``: the payload's encoding if known, else it is checked again.
        """
        if not already_ended:
            self._finish(record.run_id, record.workflow, Transition.CRASH, why)
        try:
            new = self.trigger(
                record.workflow, record.trigger_payload, payload_json, retry_of=record.run_id
            )
        except Refused as exc:
            log.warning("run %s could not be restarted: %s", record.run_id, exc.message)
            return
        log.info("run %s (%s) restarted afresh as run %s", record.run_id, why, new.run_id)

    # -- ends ---------------------------------------------------------------------------

    def _end(self, run: ActiveRun, transition: Transition, error: str | None) -> None:
        """A started run reaches a final status; its slot goes to the next queued run."""
        flow = run.flow
        flow.active.pop(run.run_id, None)
        self.runs.pop(run.run_id, None)
        run.worker = None
        self._finish(run.run_id, flow.name, transition, error)
        self._fill(flow)
        if not flow.active and not flow.queue:
            self._arm_idle(flow)

    def _finish(
        self, run_id: str, workflow: str, transition: Transition, error: str | None
    ) -> None:
        if not self.store.transition_run(run_id, transition, error=error):
            log.error(
                "run %s could not move to %s (it moved on already)", run_id, transition.target
            )
            return
        _log_transition(run_id, workflow, transition, error)
        waiters = self.waiters.pop(run_id, None)
        if waiters:
            self.store.after_commit(lambda: self._answer(run_id, waiters))

    def _answer(self, run_id: str, waiters: list[Pending]) -> None:
        record = self.store.committed.get_run(run_id)
        for pending in waiters:
            if record is None:
                pending.reject(NotFound(f"run {run_id} vanished"))
            else:
                pending.resolve(record.to_wire())

    def _arm_idle(self, flow: Flow) -> None:
        if flow.idle is not None or flow.supervisor.current is None:
            return

        def idle() -> None:
            flow.idle = None
            if not flow.active and flow.supervisor.current is not None:
                log.debug("workflow %s idle for %gs: stopping its worker", flow.name,
                          flow.config.idle_timeout_ms / 1000)  # fmt: skip
                self._drain_worker(flow)  # bounded like a drain: its exit may not return

        flow.idle = self.loop.call_later(flow.config.idle_timeout_ms / 1000, idle)

    # -- waiting ------------------------------------------------------------------------

    def wait(self, run_id: str, timeout: float | None) -> Any:
        # The engine's own view, this turn's batch included: a run that ended in it has no
        # waiters left to answer, so the end must be seen here (the answer still goes out
        # only after the commit, with every other answer of the turn).
        record = self.store.get_run(run_id)
        if record is None:
            raise NotFound(f"no run {run_id}")
        if record.status.is_final:
            return record.to_wire()
        if self.stopping:
            raise ShuttingDown("nerved is shutting down")
        pending = Pending()
        self.waiters.setdefault(run_id, []).append(pending)
        if timeout is not None:

            def expire() -> None:
                waiting = self.waiters.get(run_id, [])
                if pending in waiting:
                    waiting.remove(pending)
                    current = self.store.committed.get_run(run_id)
                    status = current.status if current else "unknown"
                    pending.reject(
                        Failed(
                            f"timed out after {timeout:g}s waiting for run {run_id} "
                            f"(still {status})",
                            {"timeout": True, "status": str(status)},
                        )
                    )

            # Reads only the committed view: due even while another process holds logs.db.
            self.loop.call_later(timeout, expire, gated=False)
        return pending

    # -- stopping and views -------------------------------------------------------------

    def stop(self) -> float:
        """Halt every worker after its running steps; returns the longest grace (seconds)."""
        self.stopping = True
        longest = 0.0
        told: set[Worker] = set()
        for flow in self.flows.values():
            if flow.idle is not None:
                flow.idle.cancel()
            if flow.active:
                longest = max(longest, flow.config.drain_timeout_ms / 1000)
            told.update(flow.supervisor.draining)
            if flow.supervisor.current is not None:
                told.add(flow.supervisor.current)
            flow.supervisor.retire(HALT)  # the kill is nerved's stop deadline
        for worker in self.workers:  # those of workflows a reload removed, still draining
            if worker.kind == "workflow" and worker not in told and not worker.send(HALT):
                worker.kill()
        for run_id, waiters in list(self.waiters.items()):
            for pending in waiters:
                pending.reject(ShuttingDown(f"nerved is shutting down; run {run_id} will resume"))
        self.waiters.clear()
        return longest

    def worker_state(self, workflow: str) -> str | None:
        """The state of the workflow's worker (nerved.states.WorkerState); None: no such
        workflow."""
        flow = self.flows.get(workflow)
        return None if flow is None else str(flow.supervisor.state)

    def supervisors(self) -> tuple[Supervisor, ...]:
        return tuple(flow.supervisor for flow in self.flows.values())

    def counts(self) -> tuple[int, int]:
        """(active, queued) threads over every workflow."""
        active = sum(len(f.active) for f in self.flows.values())
        queued = sum(len(f.queue) for f in self.flows.values())
        return active, queued


def _unresumable(exc: wire.Invalid | StoreError) -> str:
    return f"{Transition.UNRESUMABLE.label}: {exc}"


def _resumable_payload(record: RunRecord) -> str | None:
    """A recovered run's trigger payload, encoded again (None: none); raises wire.Invalid,
    saying why, for a run that cannot be resumed: a payload that cannot be read back or sent
    to a worker, or a history too large for a resume."""
    payload = record.trigger_payload
    if isinstance(payload, Unreadable):
        raise wire.Invalid(f"its trigger payload cannot be read back: {payload.reason}")
    if record.history > wire.MAX_HISTORY:
        raise wire.Invalid(
            f"its history is {wire.size_text(record.history)}; a resume carries at most"
            f" {wire.size_text(wire.MAX_HISTORY)}"
        )
    try:
        return None if payload is None else wire.dumps(payload)
    except wire.Invalid as exc:
        raise wire.Invalid(f"its trigger payload cannot be sent: {exc}") from None


def _log_transition(run_id: str, workflow: str, transition: Transition, error: str | None) -> None:
    """Every transition reaches the journal with run id and workflow (SPEC §8)."""
    level = logging.WARNING if transition.target in _BAD_ENDS else logging.INFO
    reason = f": {error}" if error else ""
    log.log(level, "run %s of %s %s%s", run_id, workflow, transition.target, reason)


_BAD_ENDS = frozenset({RunStatus.FAILED, RunStatus.CRASHED, RunStatus.DROPPED})
