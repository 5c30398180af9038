"""The WorkflowManager: the durable life of every run, from admission to its end.

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
page across loop turns (:mod:`.resume`), and the worker holds all of it, so each run's
history is held to :data:`wire.MAX_HISTORY`: a step that would take it past that fails the
run instead of being recorded. A run whose stored history cannot be resumed (unreadable,
nested too deeply, too large: a row from an older release, or damaged on disk) fails alone,
with the reason (``Transition.UNRESUMABLE``), at recovery or at the resume that finds it.
A workflow whose workers keep dying before doing any work is *fatal*
(nerved.master.supervisor): its runs stay as they are, and go on once a reload fixes its code.

The parts it leans on: where a new run goes (:mod:`.admission`), what it holds of each run
(:mod:`.runs`), resumes (:mod:`.resume`), ``workflow.wait`` (:mod:`.waiters`), the replay
check (:mod:`.replay`), and each workflow's workers (:mod:`nerved.master.supervisor`).
"""

from __future__ import annotations

import logging
import socket
import uuid
from typing import Any, Final

from nerved import wire
from nerved.channel import Message
from nerved.code.packages import IMPORT_TIMEOUT, CodeSnapshot
from nerved.config import NerveConfig, Overflow, unlined
from nerved.loop import Loop
from nerved.master.supervisor import Exit, Supervisor
from nerved.master.workers import Worker, Workers
from nerved.master.workflows.admission import admit, reasons
from nerved.master.workflows.recovery import Fate, recovery_of
from nerved.master.workflows.replay import Replays
from nerved.master.workflows.resume import Resumer, start_frame
from nerved.master.workflows.runs import (
    WORKER_DIED,
    ActiveRun,
    Flow,
    QueuedRun,
    log_transition,
    may_restart,
    step_record,
    too_long,
    unresumable,
)
from nerved.master.workflows.waiters import Waiters
from nerved.outcome import BadInput, NotFound, Pending, Refused, ShuttingDown
from nerved.states import Transition
from nerved.store import RunRecord, Storage, StoreError
from nerved.worker import workflow as workflow_worker
from nerved.worker.timebox import KILLED, MODERATOR_KILL

log = logging.getLogger("nerved.master.workflows")

DRAIN: Final = "drainTimeout"  # where a worker's stop deadline comes from, for the log
HALT: Final[Message] = {"t": "halt"}  # nerved stops: finish the running steps, keep the runs
_WORK: Final = frozenset({"step", "completed", "failed"})  # messages that are work done


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
        self._removed: list[Flow] = []  # workflows a reload removed, their workers draining
        self.resumer = Resumer(loop, store, self._holds, self._unresumable)
        self.waiters = Waiters(loop, store)
        self.replays = Replays(loop, workers, store, self.flows)  # workflow.replay
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
            settings = unlined(flow.config) != unlined(wf_config)
            flow.config = wf_config
            if settings:
                changed.append(f"workflow {name} settings")
            if flow.package.digest != package.digest:  # first: whatever is forked takes it
                flow.package = package
                # New runs go to a new worker; the old one finishes its own, up to drainTimeout.
                flow.supervisor.drain(flow.config.drain_timeout_ms / 1000, DRAIN)
                changed.append(f"workflow {name} code")
                flow.supervisor.code_changed()  # a fatal workflow is tried again
                self.replays.code_changed(flow)  # warns of active runs it would change
            if settings:  # a fatal workflow killed by memoryMax is tried again if it changed
                flow.supervisor.set_memory_max(wf_config.memory_max)
                self._fill(flow)
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
            why = f"workflow {flow.name} was removed"
            self._finish(flow.queue.popleft().run_id, flow.name, Transition.WITHDRAW, why)
        # A run no worker holds (its workflow backs off, or is fatal) would wait forever.
        why = f"its workflow was removed while it waited for a worker ({flow.supervisor.reason})"
        for run in [run for run in flow.active.values() if run.worker is None]:
            self._end(run, Transition.CRASH, why)
        flow.supervisor.retire(deadline=flow.config.drain_timeout_ms / 1000, setting=DRAIN)
        self._removed = [f for f in self._removed if f.supervisor.draining] + [flow]

    # -- recovery -----------------------------------------------------------------------

    def recover(self) -> str:
        """Rebuild the queues and active sets from logs.db and resume what was running.

        What becomes of each run is :func:`~.recovery.recovery_of`'s rule: a run whose stored
        trigger payload cannot be used, or whose history is too large to resume, fails here
        with the reason; every other run of a configured workflow recovers.
        """
        fates = dict.fromkeys(Fate, 0)
        for record in self.store.active_runs():
            flow = self.flows.get(record.workflow)
            recovery = recovery_of(record, None if flow is None else flow.config)
            fates[recovery.fate] += 1
            if recovery.transition is not None:
                self._finish(record.run_id, record.workflow, recovery.transition, recovery.reason)
            elif flow is None:
                continue
            elif recovery.fate is Fate.QUEUE:
                flow.queue.append(QueuedRun(record.run_id, recovery.payload_json))
            elif recovery.fate is Fate.RESTART:
                self._restart_afresh(record, recovery.payload_json, "nerved stopped while it ran")
            else:
                run = ActiveRun(record.run_id, flow, recovery.payload_json, record.history,
                                record.steps, sent=True)  # fmt: skip
                flow.active[run.run_id] = run
                self.runs[run.run_id] = run
        for flow in self.flows.values():
            for run in list(flow.active.values()):
                if run.worker is None:  # a run restarted afresh above was assigned already
                    self._assign(run)  # a run whose steps cannot be read fails then, alone
            self._fill(flow)
        summary = (
            f"recovered {fates[Fate.RESUME]} started and {fates[Fate.QUEUE]} queued runs, "
            f"restarted {fates[Fate.RESTART]}, ended {fates[Fate.END]} of unconfigured"
            f" workflows and {fates[Fate.FAIL]} that can no longer be resumed"
        )
        if any(fates.values()):
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
        config = flow.config
        admission = admit(
            active=len(flow.active), queued=len(flow.queue), concurrency=config.concurrency,
            max_queue=config.max_queue, overflow=config.overflow,
        )  # fmt: skip
        rejected, evicted = reasons(workflow, config.concurrency, config.max_queue)
        if admission.evict:
            self._finish(flow.queue.popleft().run_id, workflow, Transition.EVICT, evicted)
        reason = rejected if admission.transition is Transition.REJECT else None
        record = self.store.create_run(
            run_id, workflow, admission.transition, payload,
            payload_json=payload_json, retry_of=retry_of, reason=reason,
        )  # fmt: skip
        log_transition(run_id, workflow, admission.transition, record.error)
        if admission.transition is Transition.START:
            self._activate(flow, run_id, payload_json)
        elif admission.transition is Transition.ENQUEUE:
            flow.queue.append(QueuedRun(run_id, payload_json))
        return record

    def _activate(self, flow: Flow, run_id: str, payload_json: str | None) -> None:
        history = 0 if payload_json is None else len(payload_json.encode())
        run = ActiveRun(run_id, flow, payload_json, history)
        flow.active[run_id] = run
        self.runs[run_id] = run
        flow.supervisor.busy()
        self._assign(run)

    def _fill(self, flow: Flow) -> None:
        """Start queued runs, oldest first, while the workflow has free slots."""
        while flow.queue and flow.has_room and not self.stopping and not flow.removed:
            queued = flow.queue.popleft()
            if self.store.transition_run(
                queued.run_id, Transition.DISPATCH, payload_json=queued.payload_json
            ):
                log_transition(queued.run_id, flow.name, Transition.DISPATCH, None)
                self._activate(flow, queued.run_id, queued.payload_json)

    # -- workers ------------------------------------------------------------------------

    def _assign(self, run: ActiveRun) -> None:
        """Give a run to its flow's worker (spawned if needed), once the batch commits.

        A run that some worker had before is *resumed* (:mod:`.resume`). A run whose history
        cannot be read or sent fails; one that finds no worker (the unit backs off, or is
        fatal) waits until the supervisor wakes its flow (:meth:`_wake`).

        A run is given to one worker at a time, once: a run some worker holds (it was sent
        its ``start``, or its resume is under way) is left alone here, whoever asks, until
        that worker is gone (:meth:`_on_exit` lets go of it first). A worker told twice of
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
            self.resumer.resume(run, worker)
            return
        run.sent = True
        try:
            start = start_frame("start", run)
        except wire.Invalid as exc:
            self._unresumable(run, exc)
            return

        def send() -> None:
            if run.worker is worker and self.runs.get(run.run_id) is run:
                worker.send_frame(start)

        self.store.after_commit(send)

    def _holds(self, run: ActiveRun, worker: Worker) -> bool:
        """``worker`` still holds ``run`` (it was not ended, nor given to another meanwhile)."""
        return run.worker is worker and self.runs.get(run.run_id) is run

    def _unresumable(self, run: ActiveRun, exc: wire.Invalid | StoreError) -> None:
        self._end(run, Transition.UNRESUMABLE, unresumable(exc))

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
        record = step_record(message)
        size = len(record.encode())
        if run.history + size > wire.MAX_HISTORY:
            self._end(run, Transition.FAIL, too_long(n, size))
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
                self._end(run, Transition.CRASH, f"{WORKER_DIED} ({why})")
                if record is not None and may_restart(record, self.store.get_run, flow.config):
                    self._restart_afresh(record, None, f"{WORKER_DIED} ({why})", already_ended=True)
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
        log_transition(run_id, workflow, transition, error)
        self.waiters.ended(run_id)

    def _arm_idle(self, flow: Flow) -> None:
        """No run left: the worker is stopped after ``idleTimeout``, bounded like a drain."""
        config = flow.config
        flow.supervisor.stop_when_idle(
            config.idle_timeout_ms / 1000, config.drain_timeout_ms / 1000, DRAIN
        )

    # -- waiting ------------------------------------------------------------------------

    def wait(self, run_id: str, timeout: float | None) -> Any:
        """``workflow.wait``: see :class:`~nerved.master.workflows.waiters.Waiters`."""
        return self.waiters.wait(run_id, timeout, self.stopping)

    def replay(self, run_id: str | None, workflow: str | None, limit: int) -> Pending:
        """``workflow.replay``: see :class:`~nerved.master.workflows.replay.Replays`."""
        return self.replays.replay(run_id, workflow, limit)

    # -- stopping and views -------------------------------------------------------------

    def stop(self) -> float:
        """Halt every worker after its running steps; returns the longest grace (seconds)."""
        self.stopping = True
        flows = (*self.flows.values(), *self._removed)  # removed: still draining
        # A run no worker holds (its workflow backs off, or is fatal) has no step to finish.
        held = [f for f in flows if any(r.worker is not None for r in f.active.values())]
        longest = max((flow.config.drain_timeout_ms / 1000 for flow in held), default=0.0)
        for flow in flows:
            flow.supervisor.retire(HALT)  # the kill is nerved's stop deadline
        self.waiters.reject_all()
        self.replays.stop()
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
