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
(:mod:`.runs`), what workers say (:mod:`.messages`), failed tries, retries and timeouts
(:mod:`.tries`), runs that lost their worker (:mod:`.losses`), resumes (:mod:`.resume`),
cancel and retry from a step (:mod:`.steering`), ``workflow.wait`` (:mod:`.waiters`), the
replay check (:mod:`.replay`), and each workflow's workers (:mod:`nerved.master.supervisor`).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Any, Final

from nerved import wire
from nerved.channel import Message
from nerved.code.packages import IMPORT_TIMEOUT, CodeSnapshot
from nerved.config import NerveConfig, unlined
from nerved.loop import Loop
from nerved.master.supervisor import Exit, Supervisor
from nerved.master.workers import Worker, Workers
from nerved.master.workflows import rebuild
from nerved.master.workflows.admission import admit, reasons
from nerved.master.workflows.losses import Losses
from nerved.master.workflows.messages import WorkerMessages
from nerved.master.workflows.recovery import resumable_payload
from nerved.master.workflows.replay import Replays
from nerved.master.workflows.resume import Resumer, start_frame
from nerved.master.workflows.runs import (
    ActiveRun,
    Flow,
    InFlight,
    QueuedRun,
    log_transition,
    unresumable,
)
from nerved.master.workflows.shared import SharedQueue
from nerved.master.workflows.steering import Steering
from nerved.master.workflows.tries import Tries
from nerved.master.workflows.waiters import Waiters
from nerved.master.workflows.waits import Waits
from nerved.outcome import BadInput, NotFound, Pending, ShuttingDown
from nerved.states import Transition
from nerved.store import ActiveRecord, RunRecord, Storage, StoreError
from nerved.store.records import now_ms
from nerved.store.refs import new_run_id
from nerved.worker import workflow_main

log = logging.getLogger("nerved.master.workflows")

DRAIN: Final = "drainTimeout"  # where a worker's stop deadline comes from, for the log
HALT: Final[Message] = {"t": "halt"}  # nerved stops: finish the running steps, keep the runs
_WORK: Final = frozenset({"step", "step_failed", "completed", "failed"})  # work done


class WorkflowManager:
    def __init__(
        self, loop: Loop, workers: Workers, store: Storage, import_timeout: float = IMPORT_TIMEOUT
    ) -> None:
        self.loop = loop
        self.workers = workers
        self.store = store
        self.stopping = False
        self.import_timeout = import_timeout  # seconds a worker's import may take
        self.flows: dict[str, Flow] = {}
        self.runs: dict[str, ActiveRun] = {}
        self._removed: list[Flow] = []  # workflows a reload removed, their workers draining
        self.resumer = Resumer(loop, store, self._holds, self._unresumable)
        self.waiters = Waiters(loop, store, lambda run_id: run_id in self.runs)
        self.tries = Tries(loop, store, self._assign, self._end, self._replace)
        self.waits = Waits(loop, store, self._assign, self._end, self._let_go,
                           lambda: self.stopping)  # fmt: skip
        self.steering = Steering(loop, store, self.flows, self.runs, self.trigger, self._end,
                                 self._finish, self._replace)  # fmt: skip
        self.losses = Losses(store, self.trigger, self._end, self._finish, self.tries.cancel,
                             self._wake, lambda: self.stopping)  # fmt: skip
        self.messages = WorkerMessages(store, self.runs, self.tries, self.waits, self._end,
                                       self._replace, self.steering.ended)  # fmt: skip
        self.replays = Replays(loop, workers, store, self.flows)  # workflow.replay
        self.shared = SharedQueue(loop, store, self)  # placement: any, on a shared store

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
                flow.loaded, flow.load_error = False, None  # until a worker imports it
                self._replace(flow, flow.supervisor.current)  # new runs go to a new worker
                changed.append(f"workflow {name} code")
                flow.supervisor.code_changed()  # a fatal workflow is tried again
                self.replays.code_changed(flow)  # warns of active runs it would change
            if settings:  # a fatal workflow killed by memoryMax is tried again if it changed
                flow.supervisor.set_memory_max(wf_config.memory_max)
                for worker in flow.supervisor.live():
                    worker.send({"t": "timeouts", "roles": flow.timeouts()})
                self._fill(flow)
        return changed

    def _supervise(self, flow: Flow) -> Supervisor:
        def child_main(sock: socket.socket) -> int:  # code as accepted, settings as they are
            return workflow_main(sock, flow.package, flow.timeouts())  # when it forks

        def on_message(worker: Worker, message: Message) -> None:
            self.messages.on_message(flow, worker, message)

        def on_exit(worker: Worker, exit: Exit) -> None:
            self.losses.lost(flow, worker, exit)

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
        self.losses.removed(flow, DRAIN)  # its active runs, and its workers told to stop
        self._removed = [f for f in self._removed if f.supervisor.live()] + [flow]

    # -- recovery -----------------------------------------------------------------------

    def recover(self, progress: Callable[[], None] = lambda: None) -> str:
        """Rebuild the queues and active sets from logs.db and resume what was running
        (:func:`.rebuild.recover`, by :func:`~.recovery.recovery_of`'s rule); the summary."""
        summary = rebuild.recover(self, progress)
        self.shared.start()  # its first claims and takeovers run once the loop does
        return summary

    # -- admission ----------------------------------------------------------------------

    def trigger(
        self,
        workflow: str,
        payload: Any,
        payload_json: str | None = None,
        *,
        retry_of: str | None = None,
        keep_steps: int = 0,
        idempotency_key: str | None = None,
    ) -> RunRecord:
        """Admit a new run: started, queued or dropped, written in the current batch.

        ``idempotency_key``: when a kept run of ``workflow`` has that key (whatever its
        status, committed or written earlier in this turn), that run, and nothing changes;
        else the new run keeps it. -32602 for a key that is not one (:func:`wire.key_problem`).

        ``keep_steps``: the run retries ``retry_of`` from a step (:meth:`retry`): the old
        run's first ``keep_steps`` steps (with the inputs among them) are copied into its
        history, not executed again, and its worker resumes it from there.

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
        if idempotency_key is not None:
            if (problem := wire.key_problem(idempotency_key)) is not None:
                raise BadInput(f"the idempotency key {problem}")
            if (held := self.store.run_by_key(workflow, idempotency_key)) is not None:
                return held  # the store's own view: a run of this very turn too
        if self.stopping:
            raise ShuttingDown("nerved is shutting down")
        if payload_json is None and payload is not None:
            try:
                payload_json = wire.check_value(payload, "the payload")
            except wire.Invalid as exc:
                raise BadInput(str(exc)) from None
        run_id = new_run_id()  # random first: its prefix names it (nerved.store.refs)
        config = flow.config
        shared = self.shared.shared(flow)  # queued over every host, claimed (.shared)
        if shared:
            admission = self.shared.admit(flow)
        else:
            admission = admit(
                active=len(flow.active), queued=len(flow.queue), concurrency=config.concurrency,
                max_queue=config.max_queue, overflow=config.overflow,
            )  # fmt: skip
        rejected, evicted = reasons(workflow, config.concurrency, config.max_queue)
        if admission.evict:
            victim = self.shared.oldest(flow) if shared else flow.queue.popleft().run_id
            if victim is not None:
                self._finish(victim, workflow, Transition.EVICT, evicted)
        reason = rejected if admission.transition is Transition.REJECT else None
        record = self.store.create_run(
            run_id, workflow, admission.transition, payload,
            payload_json=payload_json, retry_of=retry_of, reason=reason,
            idempotency_key=idempotency_key, placement="any" if shared else "local",
        )  # fmt: skip
        log_transition(run_id, workflow, admission.transition, record.error)
        flow.tally.moved(admission.transition)
        copied = 0
        if keep_steps and retry_of is not None and admission.transition is not Transition.REJECT:
            note = {"from": retry_of, "steps": keep_steps}  # inspect tells copies from steps run
            self.store.append_log("workflow", "copied", run_id, note)
            copied = self.store.copy_history(retry_of, run_id, keep_steps)
        if admission.transition is Transition.START:
            self._activate(flow, QueuedRun(run_id, payload_json, keep_steps, copied))
        elif admission.transition is Transition.ENQUEUE and shared:
            self.shared.claim_soon(flow)
        elif admission.transition is Transition.ENQUEUE:
            flow.queue.append(QueuedRun(run_id, payload_json, keep_steps, copied))
        return record

    def _activate_claimed(self, flow: Flow, record: ActiveRecord) -> None:
        """A run this host has just claimed from the shared queue (committed ``started``
        here): given to its worker, as a dispatched run is (:mod:`.shared`)."""
        try:
            payload_json = resumable_payload(record)
        except wire.Invalid as exc:
            self._finish(record.run_id, flow.name, Transition.UNRESUMABLE, unresumable(exc))
            return
        log_transition(record.run_id, flow.name, Transition.DISPATCH, None)
        flow.tally.moved(Transition.DISPATCH)
        copied = max(0, record.history - len((payload_json or "").encode()))
        self._activate(flow, QueuedRun(record.run_id, payload_json, record.steps, copied))

    def _activate(self, flow: Flow, queued: QueuedRun) -> None:
        payload_json = queued.payload_json
        history = queued.history + (0 if payload_json is None else len(payload_json.encode()))
        run = ActiveRun(queued.run_id, flow, payload_json, history, queued.steps)
        run.sent = queued.steps > 0  # a retry from a step: resumed from its copied history
        flow.active[run.run_id] = run
        self.runs[run.run_id] = run
        self._assign(run)  # which tells the supervisor its worker is busy

    def _fill(self, flow: Flow) -> None:
        """Start queued runs, oldest first, while the workflow has free slots; those of a
        shared queue are claimed at the next turn (:mod:`.shared`), after the local ones a
        workflow queued before a reload made it ``placement: any``."""
        if self.shared.shared(flow):
            self.shared.claim_soon(flow)
        while flow.queue and flow.has_room and not self.stopping and not flow.removed:
            queued = flow.queue.popleft()
            if self.store.transition_run(
                queued.run_id, Transition.DISPATCH, payload_json=queued.payload_json
            ):
                log_transition(queued.run_id, flow.name, Transition.DISPATCH, None)
                self._activate(flow, queued)

    # -- workers ------------------------------------------------------------------------

    def _assign(self, run: ActiveRun) -> None:
        """Give a run to its flow's worker (spawned if needed), once the batch commits.

        A run that some worker had before is *resumed* (:mod:`.resume`). A run whose history
        cannot be read or sent fails; one that finds no worker (the unit backs off, or is
        fatal) waits until the supervisor wakes its flow (:meth:`_wake`).

        A run is given to one worker at a time, once: a run some worker holds (it was sent
        its ``start``, or its resume is under way) is left alone here, whoever asks, until
        that worker is gone (:mod:`.losses` lets go of it first). A worker told twice of
        one run would refuse the second (``already running here``), and a second resume
        would send it the history again.
        """
        if run.worker is not None:
            log.debug("run %s is held by %r already; not assigning it again", run.run_id,
                      run.worker)  # fmt: skip
            return
        if run.retry_timer is not None or run.waiting is not None:
            return  # its next try is not due yet (.tries), or its wait not over (.waits)
        worker = run.flow.supervisor.ensure()
        if worker is None:
            return  # the supervisor wakes the flow when it may fork (see _wake)
        run.flow.supervisor.busy()  # a worker told to stop when idle is needed again
        run.worker, run.delivered = worker, False
        run.in_flight = InFlight(None, now_ms())
        if run.sent:
            if run.lost is not None:  # inspect shows each resume after a crash or restart
                self.store.append_log("workflow", "resumed", run.run_id,
                                      {"reason": run.lost, "attempt": run.attempts})  # fmt: skip
                run.lost = None
            self.resumer.resume(run, worker)
            return
        run.sent = run.starting = True  # (.losses.removed: its stop goes after the start)
        try:
            start = start_frame("start", run)
        except wire.Invalid as exc:
            self._unresumable(run, exc)
            return

        def send() -> None:
            run.starting = False
            if run.worker is worker and self.runs.get(run.run_id) is run:
                run.delivered = worker.send_frame(start)

        self.store.after_commit(send)

    def _holds(self, run: ActiveRun, worker: Worker) -> bool:
        """``worker`` still holds ``run`` (it was not ended, nor given to another meanwhile)."""
        return run.worker is worker and self.runs.get(run.run_id) is run

    def _unresumable(self, run: ActiveRun, exc: wire.Invalid | StoreError) -> None:
        self._end(run, Transition.UNRESUMABLE, unresumable(exc))

    def _replace(self, flow: Flow, worker: Worker | None) -> None:
        """``worker`` has a role stuck in it (past its timeout, or cancelled), or old code:
        it takes no new runs and finishes those it was sent, under the drain rules. New runs
        go to a new worker, and so do those it was promised but not sent (Flow.take_back)."""
        if flow.supervisor.current is worker:  # None: it has no worker to replace
            flow.supervisor.drain(flow.config.drain_timeout_ms / 1000, DRAIN)
            for run in flow.take_back(worker):
                self._assign(run)

    def _wake(self, flow: Flow) -> None:
        """The flow may fork again (a backoff ended, a fix ended its fatal state), or its
        current worker is not the one that died: every run that waits for a worker gets one."""
        for run in list(flow.active.values()):
            if run.worker is None:
                self._assign(run)

    # -- ends ---------------------------------------------------------------------------

    def _end(
        self,
        run: ActiveRun,
        transition: Transition,
        error: str | None,
        payload_json: str | None = None,
    ) -> None:
        """A started run reaches a final status; its slot goes to the next queued run."""
        flow = run.flow
        flow.active.pop(run.run_id, None)
        self.runs.pop(run.run_id, None)
        run.worker = None
        self.tries.cancel(run)
        self.waits.cancel(run)
        self._finish(run.run_id, flow.name, transition, error, payload_json)
        self._fill(flow)
        self._let_go(flow)

    def _finish(
        self,
        run_id: str,
        workflow: str,
        transition: Transition,
        error: str | None,
        payload_json: str | None = None,
    ) -> None:
        if not self.store.transition_run(
            run_id, transition, error=error, payload_json=payload_json
        ):
            log.error(
                "run %s could not move to %s (it moved on already)", run_id, transition.target
            )
            return
        log_transition(run_id, workflow, transition, error)
        if (flow := self.flows.get(workflow)) is not None:  # a removed one's series are gone
            flow.tally.moved(transition)
        self.waiters.ended(run_id)

    def _let_go(self, flow: Flow) -> None:
        """A run of ``flow`` ended or let go of its worker (to wait): with none queued and no
        active run on a worker (a waiting one holds none), the worker is stopped after
        ``idleTimeout``, bounded like a drain."""
        if not flow.queue and all(run.worker is None for run in flow.active.values()):
            idle, drain = flow.config.idle_timeout_ms / 1000, flow.config.drain_timeout_ms / 1000
            flow.supervisor.stop_when_idle(idle, drain, DRAIN)

    # -- what operators do -------------------------------------------------------------

    def cancel(self, run_id: str, reason: str | None, uid: int | None) -> RunRecord:
        """``workflow.cancel``: see :class:`~nerved.master.workflows.steering.Steering`."""
        return self.steering.cancel(run_id, reason, uid)

    def retry(self, run_id: str, from_step: int | None) -> RunRecord:
        """``workflow.retry``: see :class:`~nerved.master.workflows.steering.Steering`."""
        if self.stopping:
            raise ShuttingDown("nerved is shutting down")
        return self.steering.retry(run_id, from_step)

    def signal(self, run_id: str, name: str, payload: Any) -> bool:
        """``workflow.signal``: see :class:`~nerved.master.workflows.steering.Steering`."""
        return self.steering.signal(run_id, name, payload, self.waits.signal)

    def run_by_key(self, workflow: str, key: str) -> RunRecord | None:
        """The kept run of ``workflow`` with idempotency key ``key``, as this turn has it."""
        return self.store.run_by_key(workflow, key)

    def progress(self, run_id: str) -> dict[str, Any] | None:
        """Where an active run stands (:meth:`ActiveRun.progress`); None: not started."""
        run = self.runs.get(run_id)
        return None if run is None else run.progress()

    # -- waiting ------------------------------------------------------------------------

    def wait(self, run_id: str, timeout: float | None) -> Any:
        """``workflow.wait``: see :class:`~nerved.master.workflows.waiters.Waiters`."""
        run = self.runs.get(run_id)
        # While nerved stops, a run a worker holds may still end (its step finishes and its
        # moderator ends it); any other stays as it is until the next start.
        held = run is not None and run.worker is not None
        return self.waiters.wait(run_id, timeout, self.stopping and not held)

    def replay(self, run_id: str | None, workflow: str | None, limit: int) -> Pending:
        """``workflow.replay``: see :class:`~nerved.master.workflows.replay.Replays`."""
        return self.replays.replay(run_id, workflow, limit)

    # -- stopping and views -------------------------------------------------------------

    def stop(self) -> float:
        """Halt every worker after its running steps; returns the longest grace (seconds)."""
        self.stopping = True
        self.shared.stop()
        flows = (*self.flows.values(), *self._removed)  # removed: still draining
        # A run no worker holds (its workflow backs off, or is fatal) has no step to finish.
        held = [f for f in flows if any(r.worker is not None for r in f.active.values())]
        longest = max((flow.config.drain_timeout_ms / 1000 for flow in held), default=0.0)
        for flow in flows:
            flow.supervisor.retire(HALT)  # the kill is nerved's stop deadline
        self.replays.stop()
        return longest

    def stopped(self) -> None:
        """nerved has stopped: waiters of runs that did not end hear so (Waiters.close)."""
        self.waiters.close()

    def worker_state(self, workflow: str) -> str | None:
        """The state of its worker (nerved.states.WorkerState); None: no such workflow."""
        flow = self.flows.get(workflow)
        return None if flow is None else str(flow.supervisor.state)

    def supervisors(self) -> tuple[Supervisor, ...]:
        return tuple(flow.supervisor for flow in self.flows.values())

    def counts(self) -> tuple[int, int]:
        """(active, queued) threads over every workflow."""
        active = sum(len(f.active) for f in self.flows.values())
        queued = sum(len(f.queue) for f in self.flows.values())
        return active, queued
